"""Soak: pynetdicom associations and DCMTK storescu processes storing at once into a real
server, with a C-FIND loop alongside; no answer lost, every instance indexed once, memory flat.

Bounded by a number of stores (a few thousand small instances: well under two minutes on two
cores), never by time; `make bench ONLY=soak` runs the same load with 100 000 stores.
"""

from __future__ import annotations

import pytest

from .helpers import dcmtk
from .soakload import run_load

STORES = 6000
WARM_UP = 1500          # stores before the reference RSS: association threads and caches made
RSS_GROWTH_BOUND = 0.10  # the goal: VmRSS at the end within 10% of the one after warm-up


@pytest.mark.slow
def test_soak_no_lost_answers_and_flat_memory(make_server, tmp_path):
    dcmtk("storescu")
    srv = make_server()
    result = run_load(srv.dicom_port, "PIPACS", tmp_path / "load", pynetdicom_assocs=4, dcmtk_assocs=2,
                      stores=STORES, server=srv, find=True)
    assert not result.errors, result.errors[:5]
    assert result.lost == 0, f"{result.lost} C-STOREs never answered ({result.lost_in_sender} reached the sender)"
    assert result.answered_failed == 0
    assert result.answered_ok == result.stores == STORES
    assert result.pynetdicom_ok and result.dcmtk_ok      # both kinds of sender took part
    # every success is exactly one instance: each store carried a new SOP Instance UID
    assert srv.get_json("/statistics")["CountInstances"] == STORES
    assert len(srv.get_json("/instances")) == STORES
    # the C-FIND loop was answered all along
    assert result.find_latencies and result.find_failed == 0
    warm = next(rss for _, indexed, rss in result.samples if indexed >= WARM_UP)
    end = result.samples[-1][2]
    assert end <= warm * (1 + RSS_GROWTH_BOUND), (warm, end, result.samples[::10])
    assert "Traceback" not in srv.settled_log()
