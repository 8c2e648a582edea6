"""The bookkeeping of one bucket's requests: requests per operation, operations that
failed in the end, fallbacks from the transport to botocore, and the server's clock."""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from .. import metrics
from .objects import http_timestamp

log = logging.getLogger("s3fuse.s3")


class RequestStats:
    def __init__(self):
        self.lock = threading.Lock()      # guards the three counters below
        self.request_counts: dict = {}    # S3 operation -> requests sent
        self.error_count = 0              # operations that failed after their retries
        self.fallbacks: dict = {}         # operation -> requests botocore sent for the transport
        self.clock_offset = 0.0           # server time - local time, from answers' Date headers

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
        return time.time() + self.clock_offset

    def saw_date(self, value: Optional[str]):
        seen = http_timestamp(value)
        if seen:
            self.clock_offset = seen + 0.5 - time.time()    # Date has whole seconds
