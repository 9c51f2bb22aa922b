"""Retry policy of the vtpu clients: a :class:`Retry` object and its backoff strategies.

The policy only *decides*; the clients do the waiting (``time.sleep`` in the sync
client, ``asyncio.sleep`` in the asyncio client), so one policy object serves both::

    Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3)

A call is retried only when all three hold: the request is idempotent (a PUT that may
already have been applied is never sent twice), the error is one of
``supported_errors`` (by default :class:`vtpu.errors.ConnectionError`: the connection
broke, so the request may not have arrived; a timeout is not retried, because the server
may still be working on it), and fewer than ``retries`` retries were made.
"""
from __future__ import annotations

import random

from vtpu import errors as E

__all__ = [
    "Retry",
    "NoBackoff",
    "ConstantBackoff",
    "ExponentialWithJitterBackoff",
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_CAP",
]

DEFAULT_BACKOFF_BASE = 0.05
DEFAULT_BACKOFF_CAP = 1.0


class NoBackoff:
    """Retry at once."""

    def compute(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts: always 0."""
        return 0.0


class ConstantBackoff:
    """Wait the same time before every retry.

    :param seconds: the wait.
    """

    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def compute(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts: ``seconds``."""
        return self.seconds


class ExponentialWithJitterBackoff:
    """Exponential backoff with full jitter: a uniform draw from
    ``[0, min(cap, base * 2**failures)]``.

    The jitter keeps many clients that lost the same server from reconnecting in step.

    :param base: the upper bound of the first wait, in seconds.
    :param cap: the largest wait, in seconds.
    """

    def __init__(self, base: float = DEFAULT_BACKOFF_BASE, cap: float = DEFAULT_BACKOFF_CAP):
        self.base = float(base)
        self.cap = float(cap)

    def compute(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts (0, 1, 2, ...)."""
        return random.random() * min(self.cap, self.base * (2 ** failures))


class Retry:
    """When and after how long a failed call is sent again.

    :param backoff: an object with ``compute(failures) -> seconds`` (default
        :class:`ExponentialWithJitterBackoff`).
    :param retries: how many times one call may be retried (0: never).
    :param supported_errors: the exception classes that allow a retry.
    """

    def __init__(self, backoff=None, retries: int = 1,
                 supported_errors: tuple = (E.ConnectionError,)):
        if retries < 0:
            raise E.InterfaceError(f"retries must be >= 0, got {retries}")
        self.backoff = ExponentialWithJitterBackoff() if backoff is None else backoff
        self.retries = int(retries)
        self.supported_errors = tuple(supported_errors)

    def delay(self, error: BaseException, failures: int, idempotent: bool) -> float | None:
        """Decide about one failed attempt.

        :param error: what the attempt raised.
        :param failures: how many attempts of this call failed before this one.
        :param idempotent: whether the call may be sent twice.
        :returns: seconds to wait before the next attempt, or ``None``: raise ``error``.
        """
        if not idempotent or failures >= self.retries \
                or not isinstance(error, self.supported_errors):
            return None
        return self.backoff.compute(failures)

    def __repr__(self) -> str:
        return f"Retry({type(self.backoff).__name__}, retries={self.retries})"
