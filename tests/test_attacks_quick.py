"""Adversity regression tests (issue 12): the quick versions of the attacks of
``benchmarks/attacks``, each against its own real ``vtpu serve`` on 127.0.0.1.

A test passes when every bar of its attack holds except the latency bars (the probe's
p99/max and the 100 ms new-client bar, which ``python -m benchmarks.attacks`` measures
and prints). An attack the server is known to fail would carry ``xfail(strict=True)``
with what was measured, so a fix makes its test XPASS (a failure) until the marker goes.
Every attack runs by default (and in CI); the longer ones are marked ``slow``, so
``-m "not slow"`` leaves them out.
"""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # pytest uses importlib mode; benchmarks/ sits beside tests/
    sys.path.insert(0, ROOT)

from benchmarks.attacks import run_attack  # noqa: E402

pytestmark = pytest.mark.integration


def known(reason: str):
    """Today's server fails a bar of this attack; ``reason`` says what was measured.

    Only a failed bar (AssertionError) is the expected failure: a harness error or a
    stall fails the test outright.
    """
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)


FAST = [
    pytest.param("baseline", id="control-baseline"),
    pytest.param("hello_bomb"),
    pytest.param("get_many_same_key"),
    pytest.param("fastpath_bad_utf8"),
    pytest.param("hello_odd_types"),
    pytest.param("intern_flood"),
    pytest.param("wal_deleted"),
    pytest.param("lock_deleted"),
]

SLOW = [
    pytest.param("idle_1100"),  # 1100 idle connections: the slowest of the cheap ones
    pytest.param("get_pipeline_unread"),
    pytest.param("batch_range"),
    pytest.param("batch_names"),
    pytest.param("track_unread"),
    pytest.param("partial_frames"),
    pytest.param("kg_wild_2hops"),
    pytest.param("kg_wild_3hops"),
    pytest.param("export_all"),
    pytest.param("cdel_all_durable"),
    pytest.param("batch_count"),
    pytest.param("batch_1m_ops"),
    pytest.param("disconnect_stops_work"),
    pytest.param("idle_2000"),
    pytest.param("unprotected_bind"),
    pytest.param("token_in_cmdline"),
    pytest.param("wal_flipped"),
    pytest.param("db_bit_flips"),
    pytest.param("disk_full"),
]


def assert_holds(name: str) -> None:
    """Run ``name``'s quick version; every non-latency bar must hold."""
    res = run_attack(name, quick=True)
    if res["verdict"] in ("ERROR", "STALLED"):
        pytest.fail(f"{res['verdict']}: {res['error'] or res['outcome']}\n"
                    f"{res['details'].get('traceback', '')}")
    bars = [c for c in res["checks"] if not c["timing"]]
    assert bars, f"{name} recorded no bar"
    failed = [f"{c['bar']}: {c['value']}" for c in bars if not c["ok"]]
    assert not failed, f"{name} ({res['outcome']}): " + "; ".join(failed)


@pytest.mark.parametrize("name", FAST)
def test_attack(name):
    assert_holds(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_attack_slow(name):
    assert_holds(name)
