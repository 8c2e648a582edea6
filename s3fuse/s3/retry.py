"""The one retry layer: every S3 request of ``s3.ObjectClient`` runs through a policy.

A failure of kind ``errors.Transient`` (the endpoint unreachable or timing out, a body cut
short, 5xx, 503 SlowDown, 429) is tried again after a growing delay with jitter, at most
``attempts`` times in all and never past ``budget`` seconds from the first try; any other
error is an answer and goes straight to the caller.  botocore's own retries are off, the
transport does not retry (it only replaces a stale keep-alive connection once), and the
code above the client does not retry requests either: the journal is what makes an
upload that ran out of attempts finish later (fs/commits.py).
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Optional, TypeVar

from .. import errors, metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryPolicy:
    def __init__(self, attempts: int = 5, first_delay: float = 0.2, max_delay: float = 5.0,
                 budget: Optional[float] = None, sleep: Callable[[float], None] = time.sleep):
        self.attempts = max(1, attempts)
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.budget = budget
        self._sleep = sleep

    def delay(self, failures: int, exc: BaseException) -> float:
        """Seconds to wait after the ``failures``-th failure: doubling from ``first_delay``
        up to ``max_delay``, with jitter; a server that asked us to slow down waits at
        least one second."""
        base = min(self.max_delay, self.first_delay * (2 ** (failures - 1)))
        if isinstance(exc, errors.ServerBusy):
            base = max(base, min(1.0, self.max_delay))
        return base * random.uniform(0.5, 1.0)

    def run(self, attempt: Callable[[], T], what: str, op: Optional[str] = None) -> T:
        """``attempt()`` until it answers, under this policy.  ``op`` (botocore's name of
        the S3 operation) labels the failure: the error raised in the end carries it
        (``s3_op``) and the attempts made, for the one line that reports it."""
        started = time.monotonic()
        name = errors.s3_op_name(op) if op else None
        for n in range(1, self.attempts + 1):
            try:
                return attempt()
            except errors.FsError as exc:
                if name and exc.s3_op is None:
                    exc.s3_op = name
                exc.attempts = n
                if not isinstance(exc, errors.Transient) or n == self.attempts:
                    raise
                wait = self.delay(n, exc)
                if self.budget is not None and time.monotonic() - started + wait > self.budget:
                    raise
                metrics.S3_RETRIES.inc(op or "unknown")
                log.warning("%s; retrying in %.1f s (attempt %d of %d)", errors.describe(exc), wait, n + 1,
                            self.attempts)
                self._sleep(wait)
        raise AssertionError("not reached")
