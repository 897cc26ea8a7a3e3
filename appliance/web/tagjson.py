"""Orthanc's JSON renderings of a dataset: /tags (full, ?simplify, ?short) and /content paths."""

from __future__ import annotations

import logging
import re
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.sequence import Sequence

from ..archive import MAX_MAIN_TAG_LENGTH, decode_every_element, element_text, read_dataset
from .errors import StoredFileUnreadable

log = logging.getLogger("pipacs.http")

_BINARY = {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"}


def tag_name(elem: DataElement) -> str:
    if elem.keyword:
        # DCMTK's dictionary (and so Orthanc) marks retired attributes in the name
        return f"RETIRED_{elem.keyword}" if elem.is_retired else elem.keyword
    if elem.tag.is_private:
        if elem.tag.is_private_creator:
            return "PrivateCreator"
        name = elem.name.strip("[]")
        if name and name != "Private tag data":
            words = re.split(r"[^0-9A-Za-z]+", name)
            return "".join(w[:1].upper() + w[1:] for w in words if w)
    return "Unknown Tag & Data"


def stored_dataset(data: bytes, instance_id: str, stop_before_pixels: bool = False) -> Dataset:
    """A stored file as a Dataset whose every element is readable, or StoredFileUnreadable (with
    one warning in the log naming the instance and what pydicom said). Blocking: run off the loop."""
    try:
        ds = read_dataset(data, stop_before_pixels)
        decode_every_element(ds)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on a file it cannot read
        log.warning("the stored file of instance %s cannot be read: %s: %s", instance_id, type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "")
        raise StoredFileUnreadable(instance_id) from None
    return ds


def _key(elem: DataElement, sep: str = ",") -> str:
    return f"{elem.tag.group:04x}{sep}{elem.tag.element:04x}"


def _value(elem: DataElement) -> str | None:
    if elem.VR in _BINARY:
        return None
    try:
        return element_text(elem)
    except Exception:  # noqa: BLE001 - a malformed value: show nothing rather than fail
        return None


def dataset_to_json(ds: Dataset, mode: str = "full", ignore_length: frozenset[int] = frozenset()) -> dict[str, Any]:
    """``mode``: "full" (Name/Type/Value), "simplify" (keyword: value), "short" (tag: value).
    Values longer than Orthanc shows are "TooLong", except those of the tags in ``ignore_length``
    (Orthanc's ``?ignore-length=``), wherever they are."""
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.group == 0x0002 or elem.tag == 0xFFFCFFFC:  # meta group; trailing padding (Orthanc hides it)
            continue
        if elem.VR == "SQ":
            items = [dataset_to_json(item, mode, ignore_length) for item in (elem.value or [])]
            if mode == "full":
                out[_key(elem)] = {"Name": tag_name(elem), "Type": "Sequence", "Value": items}
            else:
                out[tag_name(elem) if mode == "simplify" else _key(elem)] = items
            continue
        v = _value(elem)
        kind = "Null" if v is None else "String"
        if v is not None and len(v) > MAX_MAIN_TAG_LENGTH and int(elem.tag) not in ignore_length:
            v, kind = None, "TooLong"  # as Orthanc: long texts are left out of the JSON (read /content)
        if mode == "full":
            entry: dict[str, Any] = {"Name": tag_name(elem), "Type": kind, "Value": v}
            if elem.tag.is_private and not elem.tag.is_private_creator and elem.private_creator:
                entry["PrivateCreator"] = elem.private_creator
            out[_key(elem)] = dict(sorted(entry.items()))
        elif mode == "simplify":
            out[tag_name(elem)] = v
        else:
            out[_key(elem)] = v
    if mode == "simplify":
        return dict(sorted(out.items()))
    return out


def meta_to_json(ds: Dataset, mode: str = "full") -> dict[str, Any]:
    """The file meta group (Orthanc's /header). Its binary elements, (0002,0001) File Meta Information
    Version and (0002,0102) Private Information, are left out as Orthanc leaves them out: its header
    summary holds text values only."""
    meta = Dataset()
    for elem in ds.file_meta:
        meta.add(elem)
    out: dict[str, Any] = {}
    for elem in meta:
        v = _value(elem)
        if v is None:
            continue
        if mode == "full":
            out[_key(elem)] = {"Name": tag_name(elem), "Type": "String", "Value": v}
        elif mode == "simplify":
            out[tag_name(elem)] = v
        else:
            out[_key(elem)] = v
    return out


class ContentNotFound(LookupError):
    pass


def parse_tag_name(text: str) -> int | None:
    """A tag as Orthanc's routes and options name it: ``gggg-eeee``, ``gggg,eeee``, ``ggggeeee`` or a
    keyword of the dictionary (case as the dictionary spells it); None when it names none."""
    m = re.fullmatch(r"([0-9A-Fa-f]{4})[-,]?([0-9A-Fa-f]{4})", text)
    if m:
        return int(m.group(1) + m.group(2), 16)
    return tag_for_keyword(text) if text.isidentifier() else None


def pixel_data_items(elem: DataElement) -> list[bytes]:
    """The items of Pixel Data as Orthanc's /content numbers them: encapsulated, the Basic Offset
    Table (item 0, often empty) then each fragment as stored; native, one item, the whole value."""
    value = elem.value if isinstance(elem.value, (bytes, bytearray)) else b""
    if getattr(elem, "is_undefined_length", False):
        try:
            return list(generate_fragments(value))
        except (ValueError, TypeError):
            return []
    return [bytes(value)]


def _listing(ds: Dataset) -> list[str]:
    # Orthanc lists the trailing padding here (it hides it from /tags only)
    return [_key(e, "-") for e in ds if e.tag.group != 0x0002]


def content_at(ds: Dataset, path: list[str]) -> tuple[str, Any]:
    """Walk /content/{tag}/{index}/{tag}...; returns ("list", [...]) or ("raw", bytes)."""
    node: Any = ds
    for i, part in enumerate(path):
        if isinstance(node, Dataset):
            tag = parse_tag_name(part)
            if tag is None:
                raise ContentNotFound(f"{part!r} is not a tag (gggg-eeee or a keyword such as PatientName)")
            if tag not in node:
                raise ContentNotFound(f"no tag {part}")
            elem = node[tag]
            if elem.VR == "SQ":
                node = elem.value
            elif tag == 0x7FE00010 and i + 1 < len(path):
                items, n = pixel_data_items(elem), path[i + 1]
                if len(path) > i + 2 or not (n.isascii() and n.isdigit()) or int(n) >= len(items):
                    raise ContentNotFound(f"no item {n} of the pixel data (it has {len(items)})")
                return "raw", items[int(n)]
            else:
                node = elem
        elif isinstance(node, Sequence):
            if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
                raise ContentNotFound(f"no item {part}")
            node = node[int(part)]
        else:
            raise ContentNotFound("path goes below a value")
    if isinstance(node, Dataset):
        return "list", _listing(node)
    if isinstance(node, Sequence):
        return "list", [str(i) for i in range(len(node))]
    elem: DataElement = node
    if elem.tag == 0x7FE00010:
        return "list", [str(i) for i in range(len(pixel_data_items(elem)))]
    raw = ds.get_item(elem.tag) if ds is not None and len(path) == 1 else None
    if raw is not None and hasattr(raw, "value") and isinstance(raw.value, (bytes, bytearray)):
        return "raw", bytes(raw.value)
    v = _value(elem)
    if v is None:
        val = elem.value
        return "raw", bytes(val) if isinstance(val, (bytes, bytearray)) else b""
    return "raw", v.encode("utf-8")


def dicom_json_inline(ds: Dataset, instance_id: str) -> dict[str, Any]:
    """The data set as DICOM JSON (PS3.18 F.2) with every binary value inline, pixel data included:
    Orthanc's answer to ``/instances/{id}/file`` asked with ``Accept: application/dicom+json``."""
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.group == 0x0002:
            continue
        try:
            out[f"{elem.tag:08X}"] = elem.to_json_dict(None, 2**62)
        except Exception as e:   # noqa: BLE001 - a value its VR cannot hold: left out, not the whole answer
            log.info("DICOM JSON: %s left out of %s: %s", elem.tag, instance_id, str(e).splitlines()[0][:120])
    return out
