"""The bookkeeping of ``s3.ObjectClient`` (a mixin): requests per operation, failures,
fallbacks from the transport to botocore, the server's clock, and what ``s3fuse status``
shows of how requests travel."""
from __future__ import annotations

import logging
import time
from typing import Optional

from .. import metrics
from .objects import http_timestamp

log = logging.getLogger("s3fuse.s3")


class ClientStats:
    def transport_stats(self) -> dict:
        """How requests travel, for ``s3fuse status``: endpoint, addressing, region,
        connections opened by the transport, fallbacks to botocore per operation."""
        ep = self.endpoint
        with self.stats_lock:
            fallbacks = dict(self.fallbacks)
        return {"endpoint": ep.url(), "addressing": ep.style, "region": ep.region,
                "transport": "s3fuse" if self._fast is not None else "botocore",
                "connections_opened": self._fast.connections_opened if self._fast is not None else 0,
                "fallbacks": fallbacks, "fallback_total": sum(fallbacks.values()), **self.options.describe()}

    def _fallback(self, op: str, why: str):
        with self.stats_lock:
            self.fallbacks[op] = n = self.fallbacks.get(op, 0) + 1
        if n == 1 or n % 1000 == 0:
            log.warning("%s through botocore (%s): fallback %d of this kind", op, why, n)

    def server_now(self) -> float:
        """The server's clock now, as estimated from the Date of its answers (LastModified
        values are in server time)."""
        return time.time() + self._clock_offset

    def _saw_date(self, value: Optional[str]):
        seen = http_timestamp(value)
        if seen:
            self._clock_offset = seen + 0.5 - time.time()    # Date has whole seconds

    def _record(self, op: str, status, sent: int = 0):
        """One request sent (by botocore or the transport) and how it ended: ``status`` is
        the HTTP status, or "unreachable"/"timeout"; ``sent`` the bytes of its body."""
        with self.stats_lock:
            self.request_counts[op] = self.request_counts.get(op, 0) + 1
        metrics.S3_REQUESTS.inc(op, str(status))
        if sent:
            metrics.S3_SENT.inc(n=sent)

