"""Ranged GETs of ``s3.ObjectClient`` (a mixin: through the transport, else - a server
that ignored the Range, counted as a fallback - one botocore request per attempt, all
under the client's retry policy; it imports nothing of botocore itself -
``self._translate`` maps its exceptions)."""
from __future__ import annotations

from typing import Callable, Optional

from .. import errors, metrics


class RangeReads:
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

        def once():
            if self._fast is not None:
                at = reached[0]
                got = self._fast.get(key, at, end, etag, chunk_size, deliver, alloc)
                if got is not None:
                    if got != end:
                        raise errors.with_status(errors.Unreachable(
                            f"get {key!r}: body cut at {got} of [{at},{end})"), "cut")
                    return
                self._fallback("get_object", "an answer that is not the range asked for")
            self._boto_get(key, reached[0], end, etag, chunk_size, deliver)
        self._run("get_object", f"get {key!r} [{start},{end})", once)
        return b"" if sink is not None else b"".join(pieces)

    def _boto_get(self, key, start, end, etag, chunk_size, deliver):
        what = f"get {key!r} [{start},{end})"
        kwargs = dict(Key=key, Range=f"bytes={start}-{end - 1}")
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        resp = self._call("get_object", what, **kwargs)
        body = resp["Body"]
        offset = start
        try:
            pending = b""
            while True:
                chunk = body.read(chunk_size - len(pending))
                if not chunk:
                    break
                pending += chunk
                if len(pending) >= chunk_size:
                    deliver(offset, pending)
                    offset += len(pending)
                    pending = b""
            if pending:
                deliver(offset, pending)
                offset += len(pending)
        except Exception as exc:
            translated = self._translate(exc, what)     # the connection broke inside the body
            if translated is exc:
                raise
            raise translated from exc
        finally:
            body.close()
        if offset != end:
            raise errors.with_status(errors.Unreachable(f"{what}: short body ({offset - start} of {end - start} bytes)"),
                                     "cut")
