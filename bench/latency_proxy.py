#!/usr/bin/env python3
"""A TCP proxy that puts a network round trip between an S3 client and its server.

This kernel has no ``sch_netem``, so ``tc qdisc ... netem delay`` cannot add latency on
loopback; this proxy does it in user space, per request rather than per packet.

Model (one number, ``rtt``, in seconds):

- **Request path carries the whole round trip.**  Every byte the client sends reaches
  the server ``rtt`` after the proxy received it; the server's answer comes back at once.
  For a request/answer exchange this costs exactly what a real link of that RTT costs
  (``rtt/2`` out + ``rtt/2`` back): the answer reaches the client one ``rtt`` after the
  request left.  Only the moment the server sees the request differs (``rtt`` instead of
  ``rtt/2`` after it was sent), which no client can observe.
- **A request that follows an answer waits one RTT**: a new request on a keep-alive
  connection, the body sent after a ``100 Continue``, the next page of a listing.
- **Pipelined requests sent together pay one RTT together**: bytes are a delay line, not
  a queue of requests, so sixteen HEADs written at once arrive at once, in order.
- **Large bodies stream at full speed**: every chunk is delayed by the same ``rtt``, so
  a 256 MiB upload is shifted by one RTT, not slowed by one per chunk.  (There is no
  bandwidth limit and no TCP window: on a real link one connection of window W moves at
  most W/RTT; Linux's auto-tuned windows of several MiB make that 100+ MiB/s at 20 ms.)
- **A new connection pays one more RTT** (the TCP handshake): its first byte is treated
  as sent no earlier than ``rtt`` after the connection was accepted, then delayed ``rtt``
  as usual.  TLS would add more; the endpoints here are plain HTTP.
- Connections are independent: three threads each (client reader, delayed writer,
  server-to-client relay), so a slow connection never holds up another.

Use from Python (tests)::

    with LatencyProxy("http://127.0.0.1:7480", rtt=0.020) as p:
        url = p.endpoint          # http://127.0.0.1:PORT
        ...
        p.stats()                 # {"connections": .., "bursts": .., ...}

or as a process (``python3 -m bench`` runs it so, out of its own GIL)::

    python3 -m bench.latency_proxy --upstream http://127.0.0.1:7480 --rtt-ms 20

(stdlib only and no imports from the bench package: ``python3 bench/latency_proxy.py``
and loading the file by path, as its test does, work too)

which prints ``LISTENING <port>`` on stdout once it accepts connections, answers a line
``stats`` on stdin with one JSON line of counters, and stops on EOF of stdin or SIGTERM.
"""
from __future__ import annotations

import argparse
import collections
import json
import signal
import socket
import sys
import threading
import time
import urllib.parse
from typing import Optional

CHUNK = 256 * 1024            # one recv
MAX_QUEUED = 64 * 1024 * 1024  # bytes held in one connection's delay line before the reader waits
COALESCE = 1024 * 1024         # bytes the writer sends in one sendall at most


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def parse_upstream(upstream) -> tuple[str, int]:
    if isinstance(upstream, tuple):
        return upstream
    u = urllib.parse.urlparse(upstream if "://" in upstream else "http://" + upstream)
    if u.scheme not in ("http", ""):
        raise ValueError(f"only plain http upstreams are supported, not {upstream!r}")
    return u.hostname or "127.0.0.1", u.port or 80


class _Conn:
    """One proxied connection: client -> (delay line) -> server, server -> client."""

    def __init__(self, proxy: "LatencyProxy", client: socket.socket):
        self.proxy = proxy
        self.client = client
        self.server: Optional[socket.socket] = None
        self.accepted = time.monotonic()
        # the handshake: the client can send nothing before this moment
        self.ready_at = self.accepted + (proxy.rtt if proxy.handshake else 0.0)
        self.queue: collections.deque = collections.deque()   # (due, bytes or None for EOF)
        self.queued = 0
        self.cond = threading.Condition()
        self.closed = False
        self.answered = True      # server bytes seen since the client last sent: next chunk is a new request
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        try:
            self.server = socket.create_connection(self.proxy.upstream, timeout=10)
            self.server.settimeout(None)
        except OSError:
            self.close()
            return
        _nodelay(self.client)
        _nodelay(self.server)
        for fn, name in ((self._read_client, "up-read"), (self._write_server, "up-write"),
                         (self._relay_down, "down")):
            t = threading.Thread(target=fn, name=f"latency-proxy-{name}", daemon=True)
            self.threads.append(t)
            t.start()

    # client -> delay line
    def _read_client(self) -> None:
        try:
            while True:
                data = self.client.recv(CHUNK)
                now = time.monotonic()
                with self.cond:
                    if self.closed:
                        return
                    if data and self.answered:
                        self.proxy._count("bursts")
                        self.answered = False
                    while data and self.queued > MAX_QUEUED and not self.closed:
                        self.cond.wait(0.5)
                    self.queue.append((max(now, self.ready_at) + self.proxy.rtt, data or None))
                    self.queued += len(data)
                    self.cond.notify_all()
                if not data:
                    return
                self.proxy._count("bytes_up", len(data))
        except OSError:
            self.close()

    # delay line -> server
    def _write_server(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.closed:
                        if self.queue:
                            wait = self.queue[0][0] - time.monotonic()
                            if wait <= 0:
                                break
                            self.cond.wait(wait)
                        else:
                            self.cond.wait()
                    if self.closed:
                        return
                    now = time.monotonic()
                    out, n, eof = [], 0, False
                    while self.queue and self.queue[0][0] <= now and n < COALESCE:
                        _, data = self.queue.popleft()
                        if data is None:
                            eof = True
                            break
                        out.append(data)
                        n += len(data)
                    self.queued -= n
                    self.cond.notify_all()
                if out:
                    self.server.sendall(b"".join(out))
                if eof:
                    self.server.shutdown(socket.SHUT_WR)
                    return
        except OSError:
            self.close()

    # server -> client, no delay
    def _relay_down(self) -> None:
        try:
            while True:
                data = self.server.recv(CHUNK)
                if not data:
                    self.client.shutdown(socket.SHUT_WR)
                    break
                with self.cond:
                    self.answered = True
                self.client.sendall(data)
                self.proxy._count("bytes_down", len(data))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.queue.clear()
            self.cond.notify_all()
        for s in (self.client, self.server):
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        self.proxy._forget(self)


class LatencyProxy:
    """Listen on ``listen`` (loopback, port 0 = any free one) and forward to ``upstream``
    (URL or (host, port)) with ``rtt`` seconds per request and one more per connection."""

    def __init__(self, upstream, rtt: float, listen: tuple[str, int] = ("127.0.0.1", 0),
                 handshake: bool = True):
        self.upstream = parse_upstream(upstream)
        self.rtt = max(0.0, float(rtt))
        self.handshake = handshake
        self._listen_addr = listen
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._counters = {"connections": 0, "bursts": 0, "bytes_up": 0, "bytes_down": 0}
        self._sock: Optional[socket.socket] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LatencyProxy":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(self._listen_addr)
        s.listen(256)
        s.settimeout(0.2)
        self._sock = s
        self.port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="latency-proxy-accept", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            client.settimeout(None)
            conn = _Conn(self, client)
            with self._lock:
                self._conns.add(conn)
                self._counters["connections"] += 1
            # connect upstream off the accept thread: a slow upstream must not hold others
            threading.Thread(target=conn.start, name="latency-proxy-conn", daemon=True).start()

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counters[what] += n

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def stats(self) -> dict:
        with self._lock:
            return dict(self._counters, open_connections=len(self._conns), rtt_ms=self.rtt * 1000)

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()

    def __enter__(self) -> "LatencyProxy":
        return self.start() if self._sock is None else self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="TCP proxy that adds a round trip per request (see module doc)")
    ap.add_argument("--upstream", required=True, help="http://HOST:PORT of the S3 server")
    ap.add_argument("--rtt-ms", type=float, required=True, help="round trip to add per request, ms")
    ap.add_argument("--port", type=int, default=0, help="loopback port to listen on (0: any free one)")
    ap.add_argument("--no-handshake", action="store_true", help="a new connection pays no extra RTT")
    args = ap.parse_args(argv)
    proxy = LatencyProxy(args.upstream, args.rtt_ms / 1000.0, listen=("127.0.0.1", args.port),
                         handshake=not args.no_handshake).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    def control():
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(proxy.stats()), flush=True)
        done.set()             # stdin closed: the parent is gone
    threading.Thread(target=control, daemon=True).start()
    print(f"LISTENING {proxy.port}", flush=True)
    while not done.wait(0.5):
        pass
    proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
