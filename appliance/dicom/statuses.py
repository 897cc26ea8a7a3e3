"""DIMSE status codes (PS3.7 Annex C, and the service classes of PS3.4), named once.

pynetdicom keeps them only as tables of descriptions (``pynetdicom.status``); these are the
codes pipacs sends or checks, as named constants.
"""

SUCCESS = 0x0000

# warnings and pending (PS3.4 C.4, GG.4)
WARNING = 0xB000                       # C-MOVE/C-GET: some sub-operations failed; C-STORE: coerced
PENDING = 0xFF00
PENDING_WITH_WARNINGS = 0xFF01         # C-FIND: optional keys not supported
CANCEL = 0xFE00

# failures (PS3.7 C.5, PS3.4 B.2.3, C.4)
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
MOVE_DESTINATION_UNKNOWN = 0xA801      # C-MOVE
IDENTIFIER_MISMATCH = 0xA900           # C-FIND: identifier does not match SOP class
CANNOT_UNDERSTAND = 0xC000             # C-STORE: cannot understand; C-FIND: unable to process
UNABLE_TO_PROCESS = 0xC000


def is_warning(status: int) -> bool:
    """A warning status (0xBxxx: the operation was done, with a remark) counts as done."""
    return status & 0xF000 == 0xB000
