"""The bookkeeping of one bucket's requests: requests per operation, operations that
failed in the end, fallbacks from the transport to botocore, and the server's clock.

The server's clock: every Date header the client reads (the mount-time probe, PUTs,
copies, refusals) gives ``clock_offset`` (server time - local time; LastModified values
are in server time).  Requests are signed with the local clock while it is within
``SKEW_CORRECTED`` of the server's, else with the server's time (``signing_time``): SigV4
allows 15 minutes, and a clock 20 minutes off would otherwise make every request a 403
RequestTimeTooSkewed.  Each change of the signing clock is logged as a warning.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from .. import metrics
from .objects import http_timestamp

log = logging.getLogger("s3fuse.s3")

SKEW_CORRECTED = 60.0     # seconds between the local clock and the server's that are corrected


def local_clock() -> float:
    """The local clock (one function: the signer and the offsets read the same clock)."""
    return time.time()


class RequestStats:
    def __init__(self):
        self.lock = threading.Lock()      # guards the three counters below
        self.request_counts: dict = {}    # S3 operation -> requests sent
        self.error_count = 0              # operations that failed after their retries
        self.fallbacks: dict = {}         # operation -> requests botocore sent for the transport
        self.clock_offset = 0.0           # server time - local time, from answers' Date headers
        self.signing_offset = 0.0         # what requests are signed with: 0, or clock_offset when far off

    def record(self, op: str, status, sent: int = 0):
        """One request sent (by botocore or the transport) and how it ended: ``status`` is
        the HTTP status, or "unreachable"/"timeout"; ``sent`` the bytes of its body."""
        with self.lock:
            self.request_counts[op] = self.request_counts.get(op, 0) + 1
        metrics.S3_REQUESTS.inc(op, str(status))
        if sent:
            metrics.S3_SENT.inc(n=sent)

    def failed(self):
        with self.lock:
            self.error_count += 1

    def fallback(self, op: str, why: str):
        with self.lock:
            self.fallbacks[op] = n = self.fallbacks.get(op, 0) + 1
        if n == 1 or n % 1000 == 0:
            log.warning("%s through botocore (%s): fallback %d of this kind", op, why, n)

    def fallback_counts(self) -> dict:
        with self.lock:
            return dict(self.fallbacks)

    def server_now(self) -> float:
        """The server's clock now, as estimated from the Date of its answers (LastModified
        values are in server time)."""
        return local_clock() + self.clock_offset

    def signing_time(self) -> float:
        """The time requests are signed with (``sigv4.Signer``'s clock)."""
        return local_clock() + self.signing_offset

    def saw_date(self, value: Optional[str]):
        seen = http_timestamp(value)
        if seen:
            self.server_time_is(seen + 0.5)    # Date has whole seconds

    def server_time_is(self, server_time: float, refused: bool = False) -> bool:
        """The server's clock read from an answer: the offsets follow it.  True if the
        signing clock changed (the local one is SKEW_CORRECTED off, or back in step)."""
        offset = server_time - local_clock()
        with self.lock:
            self.clock_offset = offset
            if abs(offset - self.signing_offset) < SKEW_CORRECTED:
                return False
            self.signing_offset = offset if abs(offset) >= SKEW_CORRECTED else 0.0
        why = "the server refused a request for its time" if refused else "from the Date of its answers"
        if self.signing_offset:
            log.warning("the local clock is %.0f s %s the server's (%s): requests are signed with the server's "
                        "time from now on", abs(offset), "behind" if offset > 0 else "ahead of", why)
        else:
            log.warning("the local clock is within %.0f s of the server's again (%s): requests are signed with "
                        "the local time", abs(offset), why)
        return True

    def clock_refused(self, exc, signed_offset: float) -> bool:
        """A request refused (403, RequestTimeTooSkewed) that was signed with
        ``signed_offset``: learn the server's clock from the answer (``exc.server_time``).
        True if one more attempt is worth it: requests are now signed with another time."""
        server_time = getattr(exc, "server_time", 0.0)
        if server_time:
            self.server_time_is(server_time, refused=True)
        return self.signing_offset != signed_offset
