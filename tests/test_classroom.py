"""The class bench (bench/classroom.py) measures what it says: a tiny class against real servers on
loopback (the raw delivery served by this checkout's code, which keeps main's routes), and its
shaped link made and removed in a namespace of its own. No figure is asserted, only what they count."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import classroom

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_class_on_loopback(tmp_path):
    cases = classroom.make_cases(4, tmp_path / "cases")
    new = classroom.run_delivery("new", cases, 2, tmp_path / "new", None, [0, 1, 0], ROOT)
    raw = classroom.run_delivery("raw", cases, 2, tmp_path / "raw", None, [0, 1, 0], ROOT)
    assert [p["case"] for p in new["phases"]] == ["CT", "CT J2K", "CT"] == [p["case"] for p in raw["phases"]]
    assert new["phases"][0]["lossless"] is True            # decoded PXF1 == the raw stored values
    for pn, pr in zip(new["phases"], raw["phases"], strict=True):
        assert len(pn["students"]) == len(pr["students"]) == 2
        for s in pn["students"] + pr["students"]:
            assert s["frames"] == 4 and 0 < s["first"] <= s["full"]
        # raw: four 512x512 int16 frames as .npy and the metadata at least; new: fewer bytes
        assert all(s["bytes"] > 4 * 512 * 512 * 2 for s in pr["students"])
        assert all(s["bytes"] < pr["students"][0]["bytes"] for s in pn["students"])
    assert new["cpu"] > 0 and new["rss"] > 0 and raw["hwm"] >= raw["rss"] > 0


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"),
                    reason="the shaped link needs root, ip and tc")
def test_shaped_link_lives_in_its_own_namespace_and_goes():
    ns = f"pipacs-test-{os.getpid()}"
    link = classroom.ShapedLink(ns=ns, devs=("ptst0", "ptst1"), ips=("10.213.78.1", "10.213.78.2"))
    try:
        assert ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        host = subprocess.run(["tc", "qdisc", "show", "dev", "ptst0"], capture_output=True, text=True).stdout
        inside = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", "ptst1"],
                                capture_output=True, text=True).stdout
        for shown in (host, inside):
            assert "20Mbit" in shown and ("netem" in shown or "tbf" in shown), shown
        assert link.client_rtt == (0.0 if "netem" in host else 0.01)
        # the namespace reaches the server's address through the pair, and only that: no route out
        assert subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W2", "10.213.78.1"],
                              capture_output=True).returncode == 0 or not shutil.which("ping")
        routes = subprocess.run(["ip", "netns", "exec", ns, "ip", "route"], capture_output=True, text=True).stdout
        assert "default" not in routes
    finally:
        link.close()
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", "ptst0"], capture_output=True).returncode != 0
