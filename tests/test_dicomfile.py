"""Checking and indexing received bytes (plain functions, no server)."""

import io

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from appliance.archive.dicomfile import (
    PREAMBLE,
    InvalidDicom,
    file_meta_bytes,
    parse_instance,
    part10_file,
)
from appliance.archive.model import Level, public_ids

from .helpers import TEST_FILES
from .synth import ct_instance

# IDs as Orthanc 1.10.1 computed them for pydicom's CT_small.dcm (asked of a real Orthanc).
ORTHANC_CT_SMALL = ("fa558bce-587a86d3-ad0da9b3-9d043d9d-4f5c5718", "8a8cf898-ca27c490-d0c7058c-929d0581-2bbf104d",
                    "93034833-163e42c3-bc9a428b-194620cf-2c5799e5", "f689ddd2-662f8fe1-8b18180d-ec2a2cee-937917af")


def test_public_ids_are_orthancs():
    p = parse_instance((TEST_FILES / "CT_small.dcm").read_bytes())
    assert p.ids == ORTHANC_CT_SMALL
    assert public_ids(p.patient_id, p.study_uid, p.series_uid, p.sop_instance_uid) == ORTHANC_CT_SMALL


def test_main_tags_of_each_level():
    p = parse_instance((TEST_FILES / "CT_small.dcm").read_bytes())
    assert p.main_tags[Level.PATIENT] == {"0010,0010": "CompressedSamples^CT1", "0010,0020": "1CT1",
                                          "0010,0030": "", "0010,0040": "O"}
    assert p.main_tags[Level.SERIES]["0020,0037"] == "1.000000\\0.000000\\0.000000\\0.000000\\1.000000\\0.000000"
    assert p.main_tags[Level.INSTANCE]["0020,0032"] == "-158.135803\\-179.035797\\-75.699997"
    assert p.transfer_syntax == "1.2.840.10008.1.2.1"


def test_a_good_part10_file_is_stored_unmodified():
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    assert parse_instance(data).data == data
    syn = ct_instance(rows=16, cols=16)
    assert parse_instance(syn).data == syn


@pytest.mark.parametrize("name", sorted(p.name for p in TEST_FILES.glob("*.dcm")))
def test_every_pydicom_test_file_is_accepted_or_refused_with_a_reason(name):
    data = (TEST_FILES / name).read_bytes()
    try:
        p = parse_instance(data)
    except InvalidDicom as e:
        assert str(e)
        return
    # what we store reads back in pydicom with the same identity and a correct meta group
    ds = pydicom.dcmread(io.BytesIO(p.data))
    assert ds.SOPInstanceUID == p.sop_instance_uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == p.sop_instance_uid
    assert ds.file_meta.TransferSyntaxUID == p.transfer_syntax
    assert p.data[128:132] == b"DICM"


def test_a_dataset_without_meta_gets_a_correct_header():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buf, ds)  # explicit VR little endian, no preamble, no meta
    bare = buf.getvalue()
    p = parse_instance(bare)
    assert p.data.endswith(bare)
    back = pydicom.dcmread(io.BytesIO(p.data))
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert back.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert back.PixelData == ds.PixelData


@pytest.mark.parametrize("cut", [1, 2, 100, 5000, 30000])
def test_truncated_files_are_refused(cut):
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    with pytest.raises(InvalidDicom, match="truncated|too short|no "):
        parse_instance(data[:-cut])


@pytest.mark.parametrize("blob", [b"", b"garbage", b"PK\x03\x04" + b"\x00" * 300, b"\x00" * 200])
def test_non_dicom_is_refused(blob):
    with pytest.raises(InvalidDicom):
        parse_instance(blob)


def test_mr_truncated_from_pydicom_is_refused():
    with pytest.raises(InvalidDicom, match="truncated"):
        parse_instance((TEST_FILES / "MR_truncated.dcm").read_bytes())


@pytest.mark.parametrize("sop_uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678"])
@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])
def test_file_meta_is_written_as_pydicom_writes_it(sop_uid, ts):
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ts
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "PIPACS_1"
    expected = io.BytesIO()
    write_file_meta_info(pydicom.filebase.DicomFileLike(expected), fm, enforce_standard=True)
    assert file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", sop_uid, ts) == expected.getvalue()


def test_a_received_dataset_becomes_a_part10_file_with_its_bytes_unchanged():
    orig = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    raw = (TEST_FILES / "CT_small.dcm").read_bytes()
    dataset = raw[132 + 12 + orig.file_meta.FileMetaInformationGroupLength:]   # after the file meta group
    f = part10_file(orig.SOPClassUID, orig.SOPInstanceUID, orig.file_meta.TransferSyntaxUID, memoryview(dataset))
    assert f.startswith(PREAMBLE) and f.endswith(dataset)
    back = pydicom.dcmread(io.BytesIO(f))
    assert back.file_meta.MediaStorageSOPInstanceUID == orig.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
    assert back.PixelData == orig.PixelData
    assert parse_instance(f).data is f                        # nothing to correct
