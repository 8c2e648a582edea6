"""A small threaded TCP proxy that injects network faults between s3fuse and an S3 server
(the helpers the fault, crash, concurrency and security tests share are in probes.py,
ops.py and mounts.py).

``FaultProxy(upstream_endpoint)`` listens on 127.0.0.1 (loopback only, and only towards a
loopback upstream) and is controlled at run time with ``set(mode, arg, count)``:

- ``pass``                    forward everything
- ``delay``     arg = ms      hold each new request ``arg`` ms before forwarding it
- ``reset``                   answer each new request with a TCP reset (RST, nothing forwarded)
- ``blackhole``               swallow each new request and never answer (the connection
                              stays open until the client gives up)
- ``truncate``  arg = bytes   forward the request, then only the first ``arg`` bytes of
                              its response, then close the connection (FIN)

A fault applies per HTTP request (a request starts when a connection that is idle or has
received response bytes sends data beginning with an HTTP method), so connections kept
alive in a client pool see mode changes at their next request.  ``count`` limits the
fault to the next ``count`` requests, after which the proxy passes again (a one-shot
fault that client retries must overcome); ``methods`` (e.g. ``{"PUT", "POST"}``: uploads,
copies and completes) limits it to requests of those HTTP methods, the others pass.  ``reset_all()`` cuts every open connection
now.  ``stats`` counts connections, requests, injected faults per mode, and the bytes
forwarded each way (``bytes_up``: requests with their bodies, ``bytes_down``: answers).

Bounded: every socket operation has a timeout, threads poll a stop flag, and the proxy
stops by itself after ``lifetime`` seconds; ``close()`` (fixture teardown) stops it at once.
"""
from __future__ import annotations

import ipaddress
import select
import socket
import struct
import threading
import time
import urllib.parse
from typing import Optional

MODES = ("pass", "delay", "reset", "blackhole", "truncate")
_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _hard_close(sock: socket.socket):
    """Close with SO_LINGER 0: the peer gets a TCP RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Fault:
    __slots__ = ("mode", "arg", "methods")

    def __init__(self, mode="pass", arg=None, methods=None):
        self.mode, self.arg = mode, arg
        self.methods = None if methods is None else {m.encode() if isinstance(m, str) else m for m in methods}


class FaultProxy:
    def __init__(self, upstream: str, lifetime: float = 900.0):
        u = urllib.parse.urlparse(upstream)
        host, port = u.hostname, u.port or 80
        if not _is_loopback(host):
            raise ValueError(f"FaultProxy only forwards to loopback, not {host!r}")
        self.upstream = (host, port)
        self._lock = threading.Lock()
        self._fault = _Fault()
        self._count: Optional[int] = None
        self._stop = threading.Event()
        self._conns: set = set()
        self._threads: list = []
        self.stats = {"connections": 0, "requests": 0, "faults": {m: 0 for m in MODES if m != "pass"},
                      "bytes_up": 0, "bytes_down": 0}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._deadline = time.monotonic() + lifetime
        t = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True)
        t.start()
        self._threads.append(t)

    # -- control ----------------------------------------------------------------------------
    def set(self, mode: str, arg=None, count: Optional[int] = None, methods=None):
        if mode not in MODES:
            raise ValueError(mode)
        if mode in ("delay", "truncate") and not isinstance(arg, int):
            raise ValueError(f"{mode} needs an int argument")
        with self._lock:
            self._fault = _Fault(mode, arg, methods)
            self._count = count

    def clear(self):
        self.set("pass")

    @property
    def mode(self) -> str:
        with self._lock:
            return self._fault.mode

    def injected(self) -> int:
        with self._lock:
            return sum(self.stats["faults"].values())

    def reset_all(self):
        """Cut every open connection now (RST to both sides)."""
        with self._lock:
            conns = list(self._conns)
        for client, upstream in conns:
            _hard_close(client)
            if upstream is not None:
                _hard_close(upstream)

    def close(self):
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        self.reset_all()
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _stopped(self) -> bool:
        return self._stop.is_set() or time.monotonic() > self._deadline

    def _take_fault(self, method: bytes = b"") -> _Fault:
        """The fault for a request of ``method`` starting now (consumes one of ``count``)."""
        with self._lock:
            self.stats["requests"] += 1
            fault = self._fault
            if fault.mode == "pass":
                return fault
            if fault.methods is not None and method not in fault.methods:
                return _Fault()
            self.stats["faults"][fault.mode] += 1
            if self._count is not None:
                self._count -= 1
                if self._count <= 0:
                    self._fault, self._count = _Fault(), None
            return fault

    def _count_bytes(self, name: str, n: int):
        with self._lock:
            self.stats[name] += n

    def _accept_loop(self):
        while not self._stopped():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                self.stats["connections"] += 1
                self._threads = [t for t in self._threads if t.is_alive()]
            t = threading.Thread(target=self._serve, args=(client,), name=f"faultproxy-conn-{self.port}", daemon=True)
            t.start()
            self._threads.append(t)
        # lifetime over or closed: cut whatever is still open
        self._stop.set()
        self.reset_all()

    def _serve(self, client: socket.socket):
        upstream = None
        entry = (client, None)
        try:
            client.settimeout(5)
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _hard_close(client)
                return
            entry = (client, upstream)
            with self._lock:
                self._conns.add(entry)
            fault = _Fault()
            awaiting = True          # the next client bytes start a request
            blackholed = False
            response_bytes = 0
            while not self._stopped():
                try:
                    ready, _, _ = select.select([client, upstream], [], [], 0.2)
                except (OSError, ValueError):
                    break
                if client in ready:
                    data = client.recv(1 << 16)
                    if not data:
                        break
                    if blackholed:
                        continue
                    if awaiting and data.startswith(_METHODS):
                        awaiting = False
                        fault = self._take_fault(data.split(b" ", 1)[0])
                        response_bytes = 0
                        if fault.mode == "reset":
                            _hard_close(client)
                            _hard_close(upstream)
                            return
                        if fault.mode == "blackhole":
                            blackholed = True
                            continue
                        if fault.mode == "delay":
                            if self._stop.wait(fault.arg / 1000.0):
                                break
                    upstream.sendall(data)
                    self._count_bytes("bytes_up", len(data))
                if upstream in ready:
                    data = upstream.recv(1 << 16)
                    if not data:
                        break
                    awaiting = True
                    if fault.mode == "truncate":
                        room = fault.arg - response_bytes
                        if len(data) >= room:
                            if room > 0:
                                client.sendall(data[:room])
                            try:
                                client.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass
                            break
                        response_bytes += len(data)
                    client.sendall(data)
                    self._count_bytes("bytes_down", len(data))
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(entry)
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass


class ProxiedServer:
    """A server-like object (endpoint, keys, env()) for ``mounts.Mount`` that sends
    s3fuse through ``proxy`` to ``server``."""

    def __init__(self, server, proxy: FaultProxy):
        self.server, self.proxy = server, proxy
        self.endpoint = proxy.endpoint
        self.access_key, self.secret_key = server.access_key, server.secret_key
        self.kind = getattr(server, "kind", "s3")

    def env(self) -> dict:
        return self.server.env()
