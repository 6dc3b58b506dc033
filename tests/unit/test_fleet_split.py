"""Splitting a simulated fleet over worker processes, and adding up what they report."""

from __future__ import annotations

import pytest

from ancsync.tools.fleet import DeviceResult, FleetPlan, device_names, split_devices, summarize


@pytest.mark.parametrize(
    ("devices", "processes", "sizes"),
    [(4, 2, [2, 2]), (5, 2, [3, 2]), (10, 3, [4, 3, 3]), (2, 8, [1, 1]), (1, 1, [1]), (0, 2, [])],
)
def test_shares_are_even_in_order_and_never_empty(
    devices: int, processes: int, sizes: list[int]
) -> None:
    names = device_names("d-", devices)
    shares = split_devices(names, processes)
    assert [len(share) for share in shares] == sizes
    assert [name for share in shares for name in share] == names


def test_at_least_one_process() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        split_devices(["a"], 0)


def test_names_are_numbered_from_one_and_padded() -> None:
    assert device_names("anc-sim-", 2) == ["anc-sim-001", "anc-sim-002"]
    assert device_names("x", 1200)[-1] == "x1200"


def test_a_plan_survives_its_json() -> None:
    plan = FleetPlan(("a", "b"), 10.0, 5.0, None, 30.0, "sim-1", certs_dir="/c")
    assert FleetPlan.from_json(plan.share(["b"]).to_json()) == FleetPlan(
        ("b",), 10.0, 5.0, None, 30.0, "sim-1", certs_dir="/c"
    )


def result(thing: str, *, connected: bool = True, error: str | None = None) -> DeviceResult:
    return {
        "thing_name": thing,
        "connected": connected,
        "records_accepted": 10,
        "records_delivered": 9,
        "records_dropped": 1,
        "batches_sent": 3,
        "batches_acknowledged": 3,
        "published": 5,
        "acknowledged": 4,
        "shadow_accepted": 2,
        "error": error,
    }


def test_the_summary_adds_up_every_worker() -> None:
    workers = [[result("a"), result("b")], [result("c", connected=False, error="refused")]]
    summary = summarize(workers, endpoint="h", port=1, elapsed=2.345, worker_errors=["w2 died"])
    assert summary["devices"] == 3
    assert summary["processes"] == 2
    assert summary["connected"] == 2
    assert summary["records_accepted"] == 30
    assert summary["records_delivered"] == 27
    assert summary["acknowledged"] == 12
    assert summary["elapsed_s"] == 2.35
    assert summary["errors"] == ["w2 died", "c: refused"]
