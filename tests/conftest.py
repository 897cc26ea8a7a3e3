from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.archive import Archive

from .helpers import Server


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup`, pytest-xdist puts each xdist_group's name into its tests' node IDs;
    a pytest it does not fit silently drops that, and the groups' tests then run at the same time
    (see pyproject.toml). Say so instead."""
    if getattr(config.option, "loadgroup", False):
        lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(f"xdist_group marks are not applied by this pytest-xdist/pytest pair "
                                    f"(e.g. {lost[0]}): pin a pytest that pytest-xdist supports")
        # the long units first (a group runs on one worker, 20-30 s for Zeroconf or Chromium; the
        # slow tests), so that none of them is left to run alone at the end while the others idle
        items.sort(key=lambda i: not (i.get_closest_marker("xdist_group") or i.get_closest_marker("slow")))


@pytest.fixture
async def archive(tmp_path: Path):
    """An open Archive (index and files in tmp_path/data), in process: no server."""
    a = Archive(storage_dir=tmp_path / "data", index_dir=tmp_path / "data")
    await a.open()
    yield a
    await a.close()


@pytest.fixture
def server(tmp_path: Path):
    """A fresh pipacs process with an empty archive."""
    s = Server(tmp_path / "srv").start()
    yield s
    s.stop()


@pytest.fixture
def make_server(tmp_path: Path):
    """Start servers with a given configuration; all are stopped at the end of the test."""
    started: list[Server] = []

    def make(config: dict | None = None, name: str = "srv", start: bool = True, **kw) -> Server:
        s = Server(tmp_path / name, config, **kw)
        started.append(s)
        return s.start() if start else s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest) -> Callable[[Any, str], None]:
    """Screenshots of a browser test module, into the folder its SHOTS names (emptied once per module,
    so the folder holds this run's): ``shots(driver, "name")`` saves name.png there."""
    folder: Path = request.module.SHOTS
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    def shot(drv: Any, name: str) -> None:
        drv.save_screenshot(str(folder / f"{name}.png"))

    return shot


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real small filesystem (tmpfs of 3 MB) to fill up; needs root, as CI has."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])
