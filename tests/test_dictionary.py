"""The ``Dictionary`` configuration key (Orthanc's): tags the user names, public and private, shown by
name in the tag routes, and read with the VR given from an implicit VR file."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

DICTIONARY = {"7778,0010": ["DS", "TeachingScore", 1, 0],
              "0009,1001": ["LO", "TeachingNote", 1, 1, "PIPACS TEACHING"]}


def _implicit_file() -> bytes:
    """An implicit VR file: its unknown tags carry no VR, so only a dictionary tells how to read them."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "DICT"
    ds.PatientName = "Dictionary^Case"
    ds.Modality = "OT"
    ds.add_new(0x77780010, "UN", b"4.5\\7 ")
    block = ds.private_block(0x0009, "PIPACS TEACHING", create=True)
    block.add_new(0x01, "UN", b"look at the apex")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_dictionary_names_tags_and_gives_their_vr(make_server):
    data = _implicit_file()
    named = make_server({"Dictionary": DICTIONARY}, name="named")
    plain = make_server(name="plain")
    for server in (named, plain):
        r = server.post("/instances", data)
        assert r.status == 200, r.body[:300]
    iid = named.post("/instances", data).json()["ID"]

    tags = named.get_json(f"/instances/{iid}/tags")
    assert tags["7778,0010"] == {"Name": "TeachingScore", "Type": "String", "Value": "4.5\\7"}
    assert tags["0009,1001"]["Name"] == "TeachingNote"
    assert tags["0009,1001"]["Value"] == "look at the apex"
    simplified = named.get_json(f"/instances/{iid}/simplified-tags")
    assert simplified["TeachingScore"] == "4.5\\7"
    assert simplified["TeachingNote"] == "look at the apex"

    # without the dictionary, the same file's tags are unknown binary data
    unnamed = plain.get_json(f"/instances/{iid}/tags")
    assert unnamed["7778,0010"]["Name"] != "TeachingScore"
    assert unnamed["7778,0010"]["Value"] is None
