"""TLS inside TLS: HTTPS to the origin through an ``https://`` proxy.

The connection to such a proxy is itself TLS (its certificate checked like the origin's,
with the same CA bundle), the ``CONNECT`` - with Proxy-Authorization - goes inside it,
and the origin's TLS session runs inside the tunnel.  ``ssl`` cannot wrap an
``SSLSocket`` again, so the inner session is an ``ssl.SSLObject`` over memory BIOs whose
records travel through the outer socket (as urllib3, hence botocore, does for HTTPS
proxies).  ``TLSInTLS`` offers what ``http.client`` and ``s3.transport`` use of a socket.
"""
from __future__ import annotations

import io
import socket
import ssl

_RECEIVE = 1 << 16      # bytes asked of the outer socket at a time
_WRITE = 1 << 18        # bytes encrypted at a time (sendall of a large part body)


class TLSInTLS:
    """A TLS client session to ``server_hostname`` carried by ``outer`` (a connected
    socket, here the ``SSLSocket`` to the proxy after its CONNECT was answered).  The
    handshake happens in the constructor (``ssl.SSLError``/OSError when it fails)."""

    def __init__(self, outer, context: ssl.SSLContext, server_hostname: str):
        self._outer = outer
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._files = 0           # makefile() readers still open (as socket.socket counts them)
        self._closing = False
        self._io(self._tls.do_handshake)

    def _io(self, op, *args):
        """``op(*args)`` on the TLS object, moving records through the outer socket until
        it is done (the outer socket's timeout applies to each receive)."""
        while True:
            try:
                result = op(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self._outer.recv(_RECEIVE)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            self._flush()
            return result

    def _flush(self):
        data = self._outgoing.read()
        if data:
            self._outer.sendall(data)

    # -- what http.client and the transport use -----------------------------------------
    def sendall(self, data, flags: int = 0):
        view = memoryview(data).cast("B")
        while view:
            written = self._io(self._tls.write, view[:_WRITE])
            view = view[written:]

    def send(self, data, flags: int = 0) -> int:
        self.sendall(data)
        return len(memoryview(data).cast("B"))

    def recv(self, size: int = _RECEIVE, flags: int = 0) -> bytes:
        try:
            return self._io(self._tls.read, size)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):     # closed (cleanly or not): end of file
            return b""

    def recv_into(self, buffer, size: int = 0, flags: int = 0) -> int:
        size = size or memoryview(buffer).nbytes
        try:
            return self._io(self._tls.read, size, buffer)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0

    def makefile(self, mode: str = "rb", buffering=None, **_ignored):
        if mode not in ("r", "rb"):
            raise ValueError(f"TLSInTLS.makefile: mode {mode!r} (only reading)")
        raw = socket.SocketIO(self, "rb")
        self._files += 1
        return io.BufferedReader(raw, io.DEFAULT_BUFFER_SIZE if buffering in (None, -1, 0) else buffering)

    def _decref_socketios(self):
        """A reader is closed (``socket.SocketIO.close``): the socket closes with the last
        one if ``close()`` was called - http.client closes the connection of a
        ``Connection: close`` answer before its body is read."""
        self._files -= 1
        if self._closing and self._files <= 0:
            self._outer.close()

    def settimeout(self, timeout):
        self._outer.settimeout(timeout)

    def gettimeout(self):
        return self._outer.gettimeout()

    def setsockopt(self, *args):
        self._outer.setsockopt(*args)

    def fileno(self) -> int:
        return self._outer.fileno()

    def getpeercert(self, binary_form: bool = False):
        return self._tls.getpeercert(binary_form)

    def shutdown(self, how: int):
        self._outer.shutdown(how)

    def close(self):
        self._closing = True
        if self._files <= 0:
            self._outer.close()
