"""Checking an instance and writing its file, before the index hears of it.

The bytes are written while a parser thread checks them: the write is one system call that
releases the interpreter lock, so the disk and the parser work at once (the other way round,
a writer thread would wait for the lock until the parse is over), and the file is published
only if the check passes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .dicomfile import Budget, ParsedInstance, check_size, check_structure, parse_instance
from .storage import FileStorage, Staged

Transform = Callable[[bytes], bytes]


@dataclass
class PreparedInstance:
    """An instance checked and written to disk, not yet in the index."""
    parsed: ParsedInstance
    file_uuid: str


def parse_for_ingest(data: bytes, transform: Transform | None, budget: Budget) -> ParsedInstance:
    """Parse, after ``transform`` (de-identification on ingest or on upload) when there is one.

    The bytes as received are walked within ``budget`` before a transform reads them (the
    transform is pydicom's, which would inflate a deflate bomb whole, or read a member of
    zeros as 100 million elements), and parsed in full after it."""
    if transform is None:
        return parse_instance(data, budget)
    check_structure(data, budget)
    return parse_instance(transform(data), budget)


def prepare(files: FileStorage, parsers: ThreadPoolExecutor, data: bytes,
            transform: Transform | None, budget: Budget) -> tuple[PreparedInstance, Staged | None]:
    """Check an instance and write its file (renamed; its folder entry not yet synced when
    the Staged is returned: the caller syncs it while the index commits)."""
    if transform is not None:   # the stored bytes are the transform's: check first
        parsed = parse_for_ingest(data, transform, budget)
        return PreparedInstance(parsed, files.write(parsed.data)), None
    check_size(len(data), budget)   # refused before a byte of it is written
    staging = files.start_staging(len(data))
    try:
        parsing = parsers.submit(parse_instance, data, budget)
    except BaseException:
        files.abandon_staging(staging)
        raise
    staged = files.finish_staging(staging, data)
    try:
        parsed = parsing.result()
    except BaseException:
        files.discard(staged)
        raise
    if parsed.data is data:
        return PreparedInstance(parsed, files.publish(staged, sync_folders=False)), staged
    files.discard(staged)      # the meta information was corrected: store the corrected bytes
    return PreparedInstance(parsed, files.write(parsed.data)), None
