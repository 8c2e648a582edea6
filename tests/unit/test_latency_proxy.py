"""bench/latency_proxy.py: one RTT per request, one more per new connection, none per chunk.

A tiny keep-alive HTTP/1.1 server on loopback stands in for S3 (no mount, no S3 server).
Bounds are generous: the machine is shared, so a request may take longer than modelled,
but never less, and never by a multiple of the RTT."""
from __future__ import annotations

import http.client
import http.server
import importlib.util
import os
import socket
import statistics
import threading
import time

import pytest

from ..support.mounts import REPO

_spec = importlib.util.spec_from_file_location("latency_proxy", os.path.join(REPO, "bench", "latency_proxy.py"))
latency_proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(latency_proxy)

RTT = 0.050
SLACK = 0.040          # scheduling noise allowed on top of the model (2 shared cores)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        size = int(self.path.rsplit("/", 1)[1] or 0)
        self._answer(b"x" * size)

    def do_HEAD(self):
        self._answer(b"")

    def do_PUT(self):
        left = int(self.headers["Content-Length"])
        got = 0
        while left:
            data = self.rfile.read(min(left, 1 << 20))
            if not data:
                break
            got += len(data)
            left -= len(data)
        self._answer(str(got).encode())


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def proxy(server):
    with latency_proxy.LatencyProxy(server, rtt=RTT) as p:
        yield p


def _get(conn: http.client.HTTPConnection, path: str = "/0") -> float:
    t0 = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    return time.perf_counter() - t0


def test_each_request_on_a_keep_alive_connection_pays_one_rtt(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        _get(conn)                                   # connect (pays the handshake)
        times = [_get(conn) for _ in range(6)]
    finally:
        conn.close()
    assert min(times) >= RTT * 0.95, times
    assert statistics.median(times) <= RTT + SLACK, times
    assert proxy.stats()["connections"] == 1


def test_a_new_connection_pays_one_more_rtt(proxy):
    times = []
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            times.append(_get(conn))                 # first request on a new connection
        finally:
            conn.close()
    assert min(times) >= 2 * RTT * 0.95, times
    assert statistics.median(times) <= 2 * RTT + SLACK, times
    assert proxy.stats()["connections"] == 3


def test_pipelined_requests_sent_together_pay_one_rtt(proxy):
    n = 16
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"HEAD /0 HTTP/1.1\r\nHost: x\r\n\r\n")     # connect + one request
        _read_heads(s, 1)
        t0 = time.perf_counter()
        s.sendall(b"".join(b"HEAD /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n)))
        _read_heads(s, n)
        dt = time.perf_counter() - t0
    assert RTT * 0.95 <= dt <= RTT + SLACK + 0.050, dt     # not n x RTT, and all n answered in order


def _read_heads(s: socket.socket, n: int) -> None:
    buf = b""
    while buf.count(b"\r\n\r\n") < n:
        data = s.recv(65536)
        assert data, "connection closed early"
        buf += data
    assert buf.count(b"HTTP/1.") == n


def test_a_large_body_streams_at_full_speed(server, proxy):
    size = 64 << 20
    body = os.urandom(1 << 20) * 64

    def put(port: int) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            _get(conn)                               # connected and warm
            t0 = time.perf_counter()
            conn.request("PUT", "/big", body=body, headers={"Content-Length": str(size)})
            r = conn.getresponse()
            assert r.read() == str(size).encode()
            return time.perf_counter() - t0
        finally:
            conn.close()

    direct = min(put(int(server.rsplit(":", 1)[1])) for _ in range(2))
    proxied = put(proxy.port)
    # one RTT for the request, not one per 256 KiB chunk (that would be 256 x RTT = 12.8 s);
    # the proxy's own copying is allowed to cost as much again as the direct transfer, and more
    assert proxied >= RTT * 0.95, proxied
    assert proxied <= RTT + 3 * direct + 0.5, (proxied, direct)


def test_a_large_answer_is_not_delayed_per_chunk(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
    try:
        _get(conn)
        dt = _get(conn, f"/{32 << 20}")
    finally:
        conn.close()
    assert RTT * 0.95 <= dt <= RTT + 1.0, dt


def test_connections_do_not_wait_for_each_other(proxy):
    n, each = 8, 3
    times = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            t0 = time.perf_counter()
            for _ in range(each):
                _get(conn)
            times.append(time.perf_counter() - t0)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    # each client: handshake + 3 requests = 4 RTT; in series it would be 32 RTT
    assert len(times) == n
    assert min(times) >= (each + 1) * RTT * 0.95, times
    assert wall <= (each + 1) * RTT + 0.3, wall
    assert proxy.stats()["connections"] == n
