"""Re-runnable adversity attacks on a real ``vtpu serve`` (issue 12).

Each attack is one function in :mod:`.memory`, :mod:`.stalls`, :mod:`.lockouts` or
:mod:`.storage`. It starts its own server on 127.0.0.1 (under a 2 GiB address-space
limit), loads data where the attack needs it, runs a probe client doing back-to-back
GETs in another process, attacks, and records: whether the server still answers a fresh
client, its RSS before/peak/after, the bytes the attacker really sent and read, the
probe's latencies during the attack, the attack's own outcome, and one check per bar of
the issue. ``python -m benchmarks.attacks --help`` runs them; :func:`run_attack` runs one.
"""
from .registry import ATTACKS, CLASSES, run_attack, select

__all__ = ["ATTACKS", "CLASSES", "run_attack", "select"]
