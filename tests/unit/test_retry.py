"""The one retry layer (s3fuse.retry) and how ObjectClient uses it: transient failures
are tried again with growing delays within a bound, answers are not, a 503 SlowDown
backs off at once (no extra request), and the mount-time probe stays short."""
from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from s3fuse import errors
from s3fuse.s3.retry import RetryPolicy
from s3fuse.s3 import ObjectClient


def recorder():
    sleeps = []
    return sleeps, sleeps.append


def failing(n, exc):
    """A function that raises ``exc`` its first ``n`` calls, then answers "ok"."""
    calls = []

    def fn():
        calls.append(time.monotonic())
        if len(calls) <= n:
            raise exc
        return "ok"
    return fn, calls


class TestRetryPolicy:
    def test_transient_failures_are_retried_with_growing_delays(self):
        sleeps, sleep = recorder()
        fn, calls = failing(3, errors.Unreachable("refused"))
        assert RetryPolicy(attempts=5, first_delay=0.2, max_delay=5, sleep=sleep).run(fn, "x") == "ok"
        assert len(calls) == 4 and len(sleeps) == 3
        for n, s in enumerate(sleeps):
            assert 0.5 * 0.2 * 2 ** n <= s <= 0.2 * 2 ** n, sleeps

    def test_attempts_are_bounded(self):
        sleeps, sleep = recorder()
        fn, calls = failing(99, errors.ServerBusy("503 SlowDown"))
        with pytest.raises(errors.ServerBusy):
            RetryPolicy(attempts=3, sleep=sleep).run(fn, "x")
        assert len(calls) == 3 and len(sleeps) == 2
        assert all(s >= 0.5 for s in sleeps), "a server asking to slow down gets at least ~1 s"

    def test_total_time_is_bounded(self):
        fn, calls = failing(99, errors.Unreachable("timeout"))
        started = time.monotonic()
        with pytest.raises(errors.Unreachable):
            RetryPolicy(attempts=50, first_delay=0.05, max_delay=0.1, budget=0.3).run(fn, "x")
        assert time.monotonic() - started < 0.5 and len(calls) < 50

    @pytest.mark.parametrize("exc", [errors.NotFound("k"), errors.AccessDenied("403"),
                                     errors.ObjectChanged("412"), errors.BackendError("400 InvalidArgument"),
                                     errors.UploadGone("NoSuchUpload")])
    def test_answers_are_not_retried(self, exc):
        sleeps, sleep = recorder()
        fn, calls = failing(1, exc)
        with pytest.raises(type(exc)):
            RetryPolicy(attempts=5, sleep=sleep).run(fn, "x")
        assert len(calls) == 1 and sleeps == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_a_refused_endpoint_retries_times(monkeypatch):
    """-o retries=N: N attempts in all through the transport (no botocore pass on top),
    and the mount-time probe makes 2 short ones."""
    client = ObjectClient("b", endpoint=f"http://127.0.0.1:{free_port()}", access_key="a", secret_key="s",
                          max_attempts=4, read_timeout=5)
    sleeps, sleep = recorder()
    monkeypatch.setattr(client.requests.retry, "_sleep", sleep)
    with pytest.raises(errors.Unreachable):
        client.head("k")
    assert len(sleeps) == 3 and client.error_count == 1
    monkeypatch.setattr(client.requests.probe_retry, "_sleep", sleep)
    sleeps.clear()
    with pytest.raises(errors.Unreachable):
        client.probe()
    assert len(sleeps) == 1


class SlowDownServer(http.server.ThreadingHTTPServer):
    """Answers the first ``busy`` requests 503 SlowDown, then HEAD 200."""

    def __init__(self, busy: int):
        self.busy = busy
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(h):
                self.requests.append((h.command, h.path))
                if len(self.requests) <= self.busy:
                    body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate</Message></Error>"
                    h.send_response(503)
                    h.send_header("Content-Length", str(len(body)))
                    h.end_headers()
                    return
                h.send_response(200)
                h.send_header("Content-Length", "5")
                h.send_header("ETag", '"abc"')
                h.send_header("Last-Modified", "Wed, 25 Nov 2026 12:00:00 GMT")
                h.send_header("x-amz-meta-mode", "33188")
                h.end_headers()

            def log_message(h, *args):
                pass
        super().__init__(("127.0.0.1", 0), Handler)


def test_slowdown_backs_off_without_an_extra_request(monkeypatch):
    server = SlowDownServer(busy=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ObjectClient("b", endpoint=f"http://127.0.0.1:{server.server_address[1]}", access_key="a",
                              secret_key="s", max_attempts=5)
        sleeps, sleep = recorder()
        monkeypatch.setattr(client.requests.retry, "_sleep", sleep)
        info = client.head("k")
        assert info.etag == "abc" and info.size == 5 and info.metadata == {"mode": "33188"}
        assert len(server.requests) == 3, "two 503s then the answer: no request made twice per attempt"
        assert len(sleeps) == 2 and all(s >= 0.5 for s in sleeps)
    finally:
        server.shutdown()
