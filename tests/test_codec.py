"""appliance.codec against pydicom and pynetdicom: the same bytes, or the same dataset."""

import io
import random
import struct
import warnings

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import dimse_messages as messages
from pynetdicom import dimse_primitives as prim
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from appliance import codec
from appliance.codec import (
    DEFAULT_BUDGET,
    KNOWN_VRS,
    LONG_VRS,
    PREAMBLE,
    Budget,
    InvalidDicom,
    OverBudget,
    Walker,
    encode_command_set,
    explicit_to_implicit_le,
    file_meta_bytes,
    guess_encoding,
    inflate,
    p_data_pdus,
    part10_file,
    read_meta,
    uid_text,
)

from .helpers import TEST_FILES
from .synth import ct_instance


def _part10_files() -> list[bytes]:
    return [ct_instance(rows=16, cols=16)] + [p.read_bytes() for p in sorted(TEST_FILES.glob("*.dcm"))]


def test_the_codec_layer_imports_nothing_of_the_appliance():
    """The bottom layer: archive and dicom import it, never the other way."""
    import ast
    from pathlib import Path

    for path in Path(codec.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1 and not (node.module or "").startswith("appliance"), (path.name, node.module)
                if node.level == 0:
                    assert (node.module or "").split(".")[0] in ("pydicom", "__future__"), (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in ("appliance", "pynetdicom") for a in node.names), path.name


def test_meta_information_is_read_as_pydicom_reads_it():
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in _part10_files():
            if data[128:132] != b"DICM":
                continue
            meta, start = read_meta(data, 132)
            ref = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            if set(meta) != {int(e.tag) for e in ref.file_meta}:
                continue   # a meta group not in Explicit VR Little Endian (a broken file): pydicom guesses
            assert uid_text(meta.get(0x00020010, b"")) == ref.file_meta.get("TransferSyntaxUID", "")
            assert uid_text(meta.get(0x00020003, b"")) == ref.file_meta.get("MediaStorageSOPInstanceUID", "")
            fp = io.BytesIO(data)
            pydicom.filereader.read_preamble(fp, False)
            pydicom.filereader._read_file_meta_info(fp)
            assert start == fp.tell()
            checked += 1
    assert checked >= 10


def test_file_meta_is_written_as_pydicom_writes_it():
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.50"):
        for sop_uid in ("1.2.3", "1.2.3.4"):   # odd and even lengths: padded as pydicom pads
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ts
            meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
            meta.ImplementationVersionName = codec.IMPLEMENTATION_VERSION
            expected = pydicom.filebase.DicomBytesIO()
            write_file_meta_info(expected, meta, enforce_standard=True)
            assert file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", sop_uid, ts) == expected.getvalue()


def test_a_part10_file_of_a_received_dataset_reads_back_as_the_dataset():
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    _, start = read_meta(data, 132)
    f = part10_file("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", ExplicitVRLittleEndian, memoryview(data)[start:])
    assert f.startswith(PREAMBLE) and f.endswith(data[start:])
    a, b = pydicom.dcmread(io.BytesIO(f)), pydicom.dcmread(io.BytesIO(data))
    assert a.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert [(e.tag, e.value) for e in a] == [(e.tag, e.value) for e in b]


def test_the_walker_accepts_what_pydicom_reads_and_finds_its_pixel_data():
    accepted = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in _part10_files():
            if data[128:132] != b"DICM":
                continue
            meta, start = read_meta(data, 132)
            ts = pydicom.uid.UID(uid_text(meta.get(0x00020010, b"")) or guess_encoding(data, start))
            if ts.is_deflated or not ts.is_transfer_syntax:
                continue
            walker = Walker(memoryview(data)[start:], ts.is_implicit_VR, ts.is_little_endian)
            try:
                assert walker.dataset(0, len(data) - start, ts.is_implicit_VR) == len(data) - start
            except InvalidDicom:
                continue   # pydicom's deliberately broken test files (cut short, wrong VR encoding)
            accepted += 1
            if walker.pixel_offset is not None:
                ds = pydicom.dcmread(io.BytesIO(data), defer_size=None)
                assert 0x7FE00010 in ds
                tag = struct.unpack_from("<HH" if ts.is_little_endian else ">HH", data, start + walker.pixel_offset)
                assert tag == (0x7FE0, 0x0010)
    assert accepted >= 10


def test_the_walker_refuses_what_is_cut_short():
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    _, start = read_meta(data, 132)
    body = memoryview(data)[start:len(data) - 100]
    with pytest.raises(InvalidDicom, match="truncated data"):
        Walker(body, False, True).dataset(0, len(body), False)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_the_encoding_of_a_bare_dataset_is_guessed_from_its_first_element(syntax):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.PatientName = "A^B"
    ts = pydicom.uid.UID(syntax)
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_implicit_VR, buf.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
    pydicom.filewriter.write_dataset(buf, ds)
    assert guess_encoding(buf.getvalue(), 0) == syntax


def test_explicit_to_implicit_at_the_byte_level_matches_pydicom():
    """What C-GET/C-MOVE send to a peer that takes only Implicit VR: the same dataset pydicom would write."""
    blobs = [ct_instance(rows=16, cols=16)] + [p.read_bytes() for p in sorted(TEST_FILES.glob("*.dcm"))]
    converted = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in blobs:
            if data[128:132] != b"DICM":
                continue
            try:
                ds = pydicom.dcmread(io.BytesIO(data))
                ref = encode(ds, True, True, False)
            except Exception:  # noqa: BLE001, S112 - a test file pydicom cannot encode is not a case
                continue
            if ds.file_meta.get("TransferSyntaxUID") != "1.2.840.10008.1.2.1" or ref is None:
                continue
            ours = explicit_to_implicit_le(memoryview(data)[read_meta(data, 132)[1]:])
            if ours is None:
                continue   # left to pydicom (e.g. UN of undefined length)
            converted += 1
            a, b = read_dataset(io.BytesIO(ours), True, True), read_dataset(io.BytesIO(ref), True, True)
            assert [(e.tag, e.value) for e in a.iterall()] == [(e.tag, e.value) for e in b.iterall()]
    assert converted >= 10
    assert explicit_to_implicit_le(b"\x10\x00\x10\x00PN\x20\x00abc") is None   # truncated: refused


def test_command_sets_are_encoded_exactly_as_pydicom_would():
    def make(cls, **values):
        p = cls()
        for k, v in values.items():
            setattr(p, k, v)
        return p

    ct = "1.2.840.10008.5.1.4.1.1.2"
    cases = [
        (messages.C_STORE_RQ, make(prim.C_STORE, MessageID=5, AffectedSOPClassUID=ct, AffectedSOPInstanceUID="1.2.3.44",
                                   Priority=2, MoveOriginatorApplicationEntityTitle="MOVER",
                                   MoveOriginatorMessageID=3, DataSet=io.BytesIO(b"xx"))),
        (messages.C_STORE_RSP, make(prim.C_STORE, MessageIDBeingRespondedTo=5, AffectedSOPClassUID=ct,
                                    AffectedSOPInstanceUID="1.2.3.4", Status=0xA700, ErrorComment="disk full",
                                    OffendingElement=[0x00100010, 0x00080018])),
        (messages.C_FIND_RSP, make(prim.C_FIND, MessageIDBeingRespondedTo=7, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1",
                                   Status=0xFF00, Identifier=io.BytesIO(b"abcd"))),
        (messages.C_MOVE_RQ, make(prim.C_MOVE, MessageID=9, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2",
                                  Priority=0, MoveDestination="STORESCP", Identifier=io.BytesIO(b"ab"))),
        (messages.C_GET_RSP, make(prim.C_GET, MessageIDBeingRespondedTo=9, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.3",
                                  Status=0xFF00, NumberOfRemainingSuboperations=99, NumberOfCompletedSuboperations=1,
                                  NumberOfFailedSuboperations=0, NumberOfWarningSuboperations=0)),
        (messages.C_ECHO_RQ, make(prim.C_ECHO, MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.1")),
        (messages.C_CANCEL_RQ, make(prim.C_CANCEL, MessageIDBeingRespondedTo=1)),
    ]
    for cls, primitive in cases:
        message = cls()
        message.primitive_to_message(primitive)
        assert encode_command_set(message.command_set) == encode(message.command_set, True, True), cls.__name__
    odd = Dataset()
    odd.PatientName = "not a command"   # group 0010: left to pydicom
    assert encode_command_set(odd) is None


@pytest.mark.parametrize("max_pdu", [0, 4096, 16382, 16384, 1 << 20])
@pytest.mark.parametrize("length", [0, 1, 4090, 4091, 16377, 500001])
def test_p_data_pdus_are_pynetdicoms_own(max_pdu, length):
    p = prim.C_STORE()
    p.MessageID, p.Priority = 7, 2
    p.AffectedSOPClassUID, p.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    p.DataSet = io.BytesIO(random.Random(length).randbytes(length))
    message = messages.C_STORE_RQ()
    message.primitive_to_message(p)
    theirs = b"".join(P_DATA_TF(pd).encode() for pd in message.encode_msg(3, max_pdu))
    ours = p_data_pdus(3, messages.encode(message.command_set, True, True), message.data_set.getvalue(), max_pdu)
    assert b"".join(ours) == theirs


# ---------------------------------------------------------------- the walker's budget (issue 17)

def _el(tag: int, vr: bytes, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _sq(tag: int, items: list[bytes], undefined: bool) -> bytes:
    """A sequence of items, of undefined length (delimited) or defined."""
    if undefined:
        body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + i + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
                        for i in items) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF) + body
    return _el(tag, b"SQ", b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(i)) + i for i in items))


def _walk(data: bytes, budget: Budget = DEFAULT_BUDGET, implicit: bool = False) -> Walker:
    w = Walker(data, implicit, True, budget)
    w.dataset(0, len(data), implicit)
    return w


def _nested(depth: int, undefined: bool) -> bytes:
    v = _el(0x00100010, b"PN", b"ab")
    for _ in range(depth):
        v = _sq(0x00081140, [v], undefined)
    return v


@pytest.mark.parametrize("undefined", [False, True])
def test_the_walker_counts_every_element_items_included(undefined):
    items = [_el(0x00100010, b"PN", b"ab") * 10 for _ in range(10)]
    data = _el(0x00080016, b"UI", b"1.2\0") + _sq(0x00081140, items, undefined)
    counted = _walk(data).elements
    assert counted >= 1 + 1 + 10 * 10     # the sequence, its items' elements (and the items)
    _walk(data, Budget(max_elements=counted))
    with pytest.raises(OverBudget, match=f"more than {counted - 1} data elements"):
        _walk(data, Budget(max_elements=counted - 1))


@pytest.mark.parametrize("undefined", [False, True])
def test_the_walker_bounds_nesting_before_it_recurses(undefined):
    _walk(_nested(32, undefined))
    with pytest.raises(OverBudget, match="nested more than 32 deep"):
        _walk(_nested(33, undefined))
    with pytest.raises(OverBudget, match="nested more than 3 deep"):
        _walk(_nested(4, undefined), Budget(max_depth=3))
    with pytest.raises(OverBudget):   # far deeper than Python's recursion limit: refused at 32, no RecursionError
        _walk(_nested(5000, undefined))


def test_group_0000_is_refused_at_the_top_of_a_dataset_only():
    with pytest.raises(InvalidDicom, match=r"command element \(0000,0000\) at byte 0"):
        _walk(bytes(2**20), implicit=True)   # a megabyte of zeros: refused at its first element
    with pytest.raises(InvalidDicom, match=r"command element \(0000,0100\)"):
        _walk(_el(0x00000100, b"US", b"\x01\x00") + _el(0x00080016, b"UI", b"1.2\0"))
    _walk(_sq(0x00081140, [_el(0x00000000, b"UL", b"\0\0\0\0")], False))


def test_the_walker_knows_the_value_representations_pydicom_reads():
    known = {v.value.encode() for v in pydicom.valuerep.VR if " or " not in v.value}
    assert known == set(KNOWN_VRS)
    with pytest.raises(InvalidDicom, match=r"unknown value representation b'XX' for tag 0009,1010"):
        _walk(_el(0x00091010, b"XX", b"ab"))


@pytest.mark.parametrize("vr,size", [(b"US", 2), (b"SS", 2), (b"UL", 4), (b"SL", 4), (b"FL", 4), (b"FD", 8),
                                     (b"SV", 8), (b"UV", 8)])
def test_numbers_must_be_whole_values_as_pydicom_requires(vr, size):
    whole = _el(0x00091010, vr, bytes(size * 2))
    _walk(whole)
    broken = _el(0x00091010, vr, bytes(size * 2 + 1 if size == 2 else size + 2))
    with pytest.raises(pydicom.errors.BytesLengthException):   # what pydicom does with it
        _ = read_dataset(io.BytesIO(broken), False, True)[0x00091010].value
    with pytest.raises(InvalidDicom, match="not a whole number"):
        _walk(broken)
    with pytest.raises(InvalidDicom, match="not a whole number"):   # and inside a sequence
        _walk(_sq(0x00081140, [broken], False))


def test_bytes_of_odd_length_and_text_stay_accepted():
    _walk(_el(0x00091010, b"OB", b"abc") + _el(0x00091011, b"LO", b"odd") + _el(0x00091012, b"OW", b"abc"))


def test_a_private_value_that_only_looks_like_a_sequence_is_left_as_bytes():
    """Implicit VR: a private element has no VR to say it is a sequence; one that parses as
    one is walked (pydicom's private dictionary may read it so), one that does not is bytes."""
    def implicit(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value

    fake = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFF) + b"not an item"   # an item header that overruns
    _walk(implicit(0x00091010, fake), implicit=True)
    v = implicit(0x00100010, b"ab")
    for _ in range(40):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(v)) + v
        v = implicit(0x00091010, item)
    with pytest.raises(OverBudget, match="nested more than 32 deep"):   # a real one, too deep
        _walk(v, implicit=True)


def test_inflate_is_refused_past_its_limit_with_the_sizes():
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = c.compress(bytes(50 * 2**20)) + c.flush()
    assert inflate(raw, 50 * 2**20, "it") == bytes(50 * 2**20)
    with pytest.raises(OverBudget, match=r"it inflates to more than 10 MB from \d+ KB"):
        inflate(raw, 10 * 2**20, "it")
    with pytest.raises(InvalidDicom, match="cannot be inflated"):
        inflate(b"\xff" * 100, 2**20, "it")
    assert DEFAULT_BUDGET.inflation_limit(2**20) == 101 * 2**20
    assert DEFAULT_BUDGET.inflation_limit(10 * 2**20) == 256 * 2**20   # never past MaximumInstanceSize


def test_defined_length_items_of_an_undefined_length_sequence_are_walked_too():
    inner = _el(0x00280010, b"US", b"abc")   # unreadable
    seq = (struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
           + struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    with pytest.raises(InvalidDicom, match="not a whole number"):
        _walk(seq)
    overrun = _el(0x00100010, b"PN", b"abcd")
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(overrun) - 2) + overrun   # the item ends inside its element
    with pytest.raises(InvalidDicom, match="overruns"):
        _walk(_el(0x00081140, b"SQ", item))
