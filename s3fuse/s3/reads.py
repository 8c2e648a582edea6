"""Ranged GETs: through the transport, else - a server that ignored the Range, counted as
a fallback - one botocore request per attempt, all under the bucket's retry policy
(``requests.Requests``)."""
from __future__ import annotations

from typing import Callable, Optional

from .. import errors, metrics


class RangeReads:
    def __init__(self, requests):
        self.requests = requests

    def get_range(self, key: str, start: int, end: int, etag: Optional[str] = None,
                  chunk_size: int = 1 << 20, sink: Optional[Callable[[int, bytes], None]] = None,
                  alloc: Optional[Callable[[], bytearray]] = None) -> bytes:
        """GET bytes [start, end) of ``key``.  With ``etag`` the server must still have that
        version (If-Match; a changed object raises ObjectChanged).  With ``sink`` the body is
        streamed to ``sink(offset, chunk)`` in ``chunk_size`` pieces and b"" is returned.
        A body cut short is an attempt that failed: the next one asks for the rest.
        ``alloc()`` gives the buffers of full chunks (a pool's, see data/memory.py)."""
        if end <= start:
            return b""
        pieces: list = []
        reached = [start]       # bytes before this went to ``sink`` (or ``pieces``)

        def deliver(offset: int, chunk):
            metrics.S3_RECEIVED.inc(n=len(chunk))
            if sink is None:
                pieces.append(chunk)
            else:
                sink(offset, chunk)
            reached[0] = offset + len(chunk)

        fast = self.requests.fast

        def once():
            if fast is not None:
                at = reached[0]
                got = fast.get(key, at, end, etag, chunk_size, deliver, alloc)
                if got is not None:
                    if got != end:
                        raise errors.with_status(errors.Unreachable(
                            f"get {key!r}: body cut at {got} of [{at},{end})"), "cut")
                    return
                self.requests.stats.fallback("get_object", "an answer that is not the range asked for")
            self._boto_get(key, reached[0], end, etag, chunk_size, deliver)
        self.requests.run("get_object", f"get {key!r} [{start},{end})", once)
        return b"" if sink is not None else b"".join(pieces)

    def _boto_get(self, key, start, end, etag, chunk_size, deliver):
        what = f"get {key!r} [{start},{end})"
        kwargs = dict(Key=key, Range=f"bytes={start}-{end - 1}")
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        resp = self.requests.call("get_object", what, **kwargs)
        offset = self.requests.boto.read_body(resp, what, chunk_size, deliver, start)
        if offset != end:
            raise errors.with_status(errors.Unreachable(f"{what}: short body ({offset - start} of {end - start} bytes)"),
                                     "cut")
