"""Byte codecs of DICOM: Part 10 files, Part 5 datasets, Part 7/8 command sets and P-DATA.

The bottom layer: pure functions over bytes, with pydicom's data model for command sets,
and nothing from the rest of the appliance or from pynetdicom's internals. They exist
because pydicom and pynetdicom do the same work through general-purpose objects, on the
path of every received or sent instance; each is tested byte for byte against them.
"""

from .charset import one_step_codec
from .dimse import encode_command_set, p_data_pdus
from .part10 import (
    DEFAULT_BUDGET,
    IMPLEMENTATION_VERSION,
    ITEM,
    ITEM_END,
    KNOWN_VRS,
    LONG_VRS,
    PREAMBLE,
    SEQ_END,
    UNDEFINED,
    Budget,
    InvalidDicom,
    OverBudget,
    Walker,
    file_meta_bytes,
    guess_encoding,
    inflate,
    part10_file,
    read_meta,
    uid_text,
)
from .vr import explicit_to_implicit_le

__all__ = [
    "DEFAULT_BUDGET", "IMPLEMENTATION_VERSION", "ITEM", "ITEM_END", "KNOWN_VRS", "LONG_VRS", "PREAMBLE",
    "SEQ_END", "UNDEFINED", "Budget", "InvalidDicom", "OverBudget", "Walker", "inflate", "encode_command_set", "explicit_to_implicit_le", "file_meta_bytes",
    "guess_encoding", "one_step_codec", "p_data_pdus", "part10_file", "read_meta", "uid_text",
]
