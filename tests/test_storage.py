"""The folder of DICOM files: Orthanc's layout, folders filled one at a time."""

import os
import uuid

import pytest

from appliance.archive import storage
from appliance.archive.storage import FILES_PER_FOLDER, FileStorage


def test_files_keep_orthancs_layout_and_fill_one_folder_at_a_time(tmp_path):
    fs = FileStorage(tmp_path / "data")
    names = [fs.write(f"instance {i}".encode()) for i in range(FILES_PER_FOLDER + 10)]
    assert len(set(names)) == len(names)
    for name in names:
        assert uuid.UUID(name).version == 4 and str(uuid.UUID(name)) == name
        path = fs.path_of(name)
        assert path == tmp_path / "data" / name[0:2] / name[2:4] / name and path.is_file()
    folders = [n[:4] for n in names]
    assert len(set(folders[:FILES_PER_FOLDER])) == 1          # one folder, then the next
    assert len(set(folders)) == 2
    assert sorted(fs.read(n) for n in names) == sorted(f"instance {i}".encode() for i in range(len(names)))


def test_after_a_restart_a_folder_is_filled_only_up_to_its_room(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "FILES_PER_FOLDER", 4)
    prefixes = iter(["aaaa"] * 4 + ["aaaa", "bbbb"] + ["bbbb"] * 10)   # folder picks, then the other digits
    real = uuid.uuid4
    monkeypatch.setattr(storage.uuid, "uuid4", lambda: uuid.UUID(next(prefixes) + str(real())[4:]))
    fs = FileStorage(tmp_path / "data")
    first = [fs.write(b"x") for _ in range(3)]                # folder aa/aa, 3 of 4 places
    again = FileStorage(tmp_path / "data")                    # a restart: counts what the folder holds
    more = [again.write(b"y") for _ in range(3)]
    assert [n[:4] for n in first] == ["aaaa"] * 3
    assert [n[:4] for n in more] == ["aaaa", "bbbb", "bbbb"]  # the last place, then a full folder is skipped
    assert len(list((tmp_path / "data" / "aa" / "aa").iterdir())) == 4
    assert sorted(n for n, _ in again.scan()) == sorted(first + more)


def test_a_staged_file_is_invisible_until_published_and_gone_when_given_up(tmp_path):
    fs = FileStorage(tmp_path / "data")
    staged = fs.finish_staging(fs.start_staging(5), b"hello")
    assert [(n.endswith(storage.TMP_SUFFIX), tmp) for n, tmp in fs.scan()] == [(True, True)]
    name = fs.publish(staged, sync_folders=False)             # renamed; the folder fsync comes later
    fs.sync_folders(staged)
    assert list(fs.scan()) == [(name, False)] and fs.read(name) == b"hello"
    fs.discard(fs.stage(b"checked and refused"))
    fs.abandon_staging(fs.start_staging(10))                  # created, never written
    assert list(fs.scan()) == [(name, False)]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    fs = FileStorage(tmp_path / "data")
    staging = fs.start_staging(5)
    os.close(staging.fd)                                      # the write will fail (EBADF)
    with pytest.raises(OSError):
        fs.finish_staging(storage.Staging(staging.staged, staging.fd), b"hello")
    assert list(fs.scan()) == []


def test_a_second_server_on_the_same_storage_refuses_naming_the_first(make_server, tmp_path):
    """One server per storage folder: the second one stops with the first one's process and ports,
    and writes nothing; the lock goes with the first one's process, however it ends."""
    import subprocess
    import sys

    from tests.synth import ct_instance

    data = tmp_path / "shared-data"
    first = make_server({"StorageDirectory": str(data)}, name="first")
    assert first.post("/instances", ct_instance(rows=8, cols=8)).status == 200
    second = make_server({"StorageDirectory": str(data)}, name="second", start=False)
    out = subprocess.run([sys.executable, "-m", "appliance", "serve", "--config", str(second.config_path)],
                         cwd=second.workdir, env=second.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert f"another pipacs (process {first.proc.pid}" in out.stderr
    assert f"DICOM port {first.dicom_port}, HTTP port {first.http_port}" in out.stderr
    assert "Traceback" not in out.stderr
    assert first.get_json("/statistics")["CountInstances"] == 1     # the first one goes on, untouched

    first.kill()                                                     # kill -9: the kernel drops the lock
    second.start()
    assert second.get_json("/statistics")["CountInstances"] == 1
