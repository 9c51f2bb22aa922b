"""The table of attacks and the one function that runs an attack from start to cleanup."""
from __future__ import annotations

import traceback
from typing import Callable, Dict, List, NamedTuple, Optional

from .harness import HARD_TIMEOUT, MEM_LIMIT, Run, Stalled

CLASSES = ("control", "memory", "stalls", "lockouts", "storage")


class Attack(NamedTuple):
    """One registered attack.

    :ivar name: its name (the function's).
    :ivar cls: one of :data:`CLASSES` (``control`` is the no-attack baseline).
    :ivar fn: ``fn(run)`` performs it on a :class:`~benchmarks.attacks.harness.Run`.
    :ivar doc: the first paragraph of its docstring, on one line.
    :ivar probe: whether the probe runs during it.
    """

    name: str
    cls: str
    fn: Callable[[Run], None]
    doc: str
    probe: bool


ATTACKS: Dict[str, Attack] = {}


def attack(cls: str, probe: bool = True) -> Callable:
    """Register the decorated ``fn(run)`` as an attack of class ``cls``."""
    if cls not in CLASSES:
        raise ValueError(f"unknown attack class {cls!r}")

    def deco(fn: Callable[[Run], None]) -> Callable[[Run], None]:
        para = (fn.__doc__ or fn.__name__).strip().split("\n\n")[0]
        doc = " ".join(line.strip() for line in para.splitlines())
        ATTACKS[fn.__name__] = Attack(fn.__name__, cls, fn, doc, probe)
        return fn

    return deco


def select(only: Optional[str] = None) -> List[Attack]:
    """The attacks named by ``only`` (comma-separated classes or names; None = all).

    :raises KeyError: a name that is neither a class nor an attack.
    """
    from . import lockouts, memory, stalls, storage  # noqa: F401  (they register)

    everything = sorted(ATTACKS.values(), key=lambda a: CLASSES.index(a.cls))
    if not only:
        return everything
    out: List[Attack] = []
    for word in (w.strip() for w in only.split(",") if w.strip()):
        if word in CLASSES:
            out += [a for a in everything if a.cls == word and a not in out]
        elif word in ATTACKS:
            if ATTACKS[word] not in out:
                out.append(ATTACKS[word])
        else:
            raise KeyError(f"no attack or class named {word!r} "
                           f"(classes: {', '.join(CLASSES)}; names: {', '.join(ATTACKS)})")
    return out


def run_attack(name: str, quick: bool = False, timeout: float = HARD_TIMEOUT,
               mem_limit: Optional[int] = MEM_LIMIT, keep: bool = False) -> dict:
    """Run one attack and clean up after it, whatever happens.

    :param name: the attack.
    :param quick: the small version.
    :param timeout: hard timeout of the attack phase, after which it is "STALLED".
    :param mem_limit: address-space limit of the servers it starts.
    :param keep: keep the work directory (logs, data) for a look afterwards.
    :returns: :meth:`Run.result` (verdict, numbers, checks).
    """
    select(name)
    a = ATTACKS[name]
    run = Run(a.name, a.cls, quick, timeout=timeout, mem_limit=mem_limit, with_probe=a.probe)
    error = None
    try:
        a.fn(run)
    except Stalled:
        pass
    except Exception as exc:  # noqa: BLE001  (reported as ERROR, never hides a verdict)
        if not run.stalled:
            error = f"{type(exc).__name__}: {exc}"
            run.details["traceback"] = traceback.format_exc(limit=6)
    finally:
        run.end()
        if run.stalled:
            run.outcome = "; ".join(x for x in (
                run.outcome, f"hard timeout of {timeout:g} s: stopped and killed") if x)
        run.close(keep=keep)
    res = run.result(error)
    if keep:
        res["workdir"] = run.workdir
    return res
