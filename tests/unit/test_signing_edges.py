"""Signing at the edges (issue #22, items 8, 13, 14), without an S3 server: a local HTTP
server that records what it gets and, like S3 and RGW, refuses a request time more than
15 minutes from its own clock (403 RequestTimeTooSkewed).  The real servers are in
test_edge_signing.py."""
from __future__ import annotations

import calendar
import datetime
import email.utils
import errno
import hashlib
import http.server
import logging
import os
import subprocess
import sys
import threading
import time

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from s3fuse import errors
from s3fuse.config import MountConfig
from s3fuse.errors import ConfigError
from s3fuse.fuse.boundary import to_errno
from s3fuse.s3 import ObjectClient, sigv4, transport
from s3fuse.s3 import stats as stats_module
from s3fuse.s3.object_options import ObjectOptions
from s3fuse.s3.objects import content_md5, error_kind
from s3fuse.s3.sigv4 import UNSIGNED, Signer

SKEW = 1200.0          # a clock 20 minutes ahead


class SkewCheckingServer(http.server.ThreadingHTTPServer):
    """Records (method, path, {lower-case header: value}, body); answers PUT (object or
    copy), HEAD and ListObjectsV2 like S3, and 403 RequestTimeTooSkewed (with its Date,
    no body for a HEAD) to a request whose X-Amz-Date is over 15 minutes off."""

    def __init__(self):
        self.requests: list = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(h, status, body=b"", headers=None):
                h.send_response(status)
                for k, v in (headers or {}).items():
                    h.send_header(k, v)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                if h.command != "HEAD":
                    h.wfile.write(body)

            def handle_any(h):
                body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in h.headers.items()}
                server.requests.append((h.command, h.path, headers, body))
                signed = calendar.timegm(time.strptime(headers.get("x-amz-date", "19700101T000000Z"),
                                                       "%Y%m%dT%H%M%SZ"))
                if abs(signed - time.time()) > 900:
                    return h.answer(403, b"<?xml version='1.0'?><Error><Code>RequestTimeTooSkewed</Code>"
                                         b"<Message>too skewed</Message></Error>")
                if h.command == "PUT" and "x-amz-copy-source" in headers:
                    return h.answer(200, b"<CopyObjectResult><ETag>&quot;abc&quot;</ETag></CopyObjectResult>")
                if h.command in ("PUT", "HEAD"):
                    return h.answer(200, headers={"ETag": '"abc"', "Last-Modified": email.utils.formatdate(usegmt=True)})
                return h.answer(200, b'<?xml version="1.0"?><ListBucketResult><Name>b</Name><KeyCount>0</KeyCount>'
                                     b"<IsTruncated>false</IsTruncated></ListBucketResult>")

            do_GET = do_PUT = do_HEAD = handle_any

            def log_message(h, *args):
                pass
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server():
    s = SkewCheckingServer()
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


@pytest.fixture
def skewed(monkeypatch):
    """The local clock 20 minutes ahead, for the transport's signer and botocore's."""
    real = stats_module.local_clock
    monkeypatch.setattr(stats_module, "local_clock", lambda: real() + SKEW)
    real_now = botocore.auth.get_current_datetime
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda *a, **k: real_now(*a, **k) + datetime.timedelta(seconds=SKEW))


def client_of(server, **kwargs) -> ObjectClient:
    return ObjectClient("b", endpoint=server.endpoint, access_key="a", secret_key="s", max_attempts=1, **kwargs)


# -- item 14: header values are sent as given, trimmed only in the canonical form -----------
def test_signer_sends_values_unchanged_and_signs_them_as_botocore_does(monkeypatch):
    """Over plain http with the body's SHA-256, as botocore signs it there: the same
    signature, header values sent untouched."""
    creds = Credentials("AKID", "SECRET")
    fixed = datetime.datetime(2026, 11, 21, 12, 0, 0)
    body = b"hello"
    headers = {"x-amz-meta-note": "a  b   c  ", "x-amz-meta-lead": "  x", "content-md5": content_md5(body)}
    ours = Signer(creds, clock=lambda: calendar.timegm(fixed.timetuple())).sign(
        "us-east-1", "PUT", "127.0.0.1:9000", "/b/k", {}, headers, transport.payload_hash(body, tls=False))
    assert ours["x-amz-meta-note"] == "a  b   c  " and ours["x-amz-meta-lead"] == "  x", "sent as given"
    assert sigv4.canonical_value("a  b   c  ") == "a b c" and sigv4.canonical_value("  x") == "x"
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: fixed)
    request = AWSRequest(method="PUT", url="http://127.0.0.1:9000/b/k", headers=dict(headers), data=body)
    botocore.auth.S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()
    assert ours["authorization"] == request.headers["Authorization"], "the canonical form is SigV4's"


@pytest.mark.parametrize("value", ["a\r\nx-amz-acl: public-read", "a\nb", "a\rb", "a\0b"])
def test_a_value_with_a_line_break_is_refused_before_any_request(server, value):
    with pytest.raises(errors.InvalidArgument) as info:
        Signer(Credentials("a", "s")).sign("us-east-1", "PUT", "h", "/b/k", {}, {"x-amz-meta-n": value}, UNSIGNED)
    assert info.value.errno == errno.EINVAL
    client = client_of(server)
    for call in (lambda: client.put("k", b"x", {"n": value}, content_md5="x"),
                 lambda: client.copy("k", "k", {"n": value}),          # botocore's path
                 lambda: client.create_multipart("k", {"n": value}),
                 lambda: client.put("k", b"x", {}, content_md5="x", headers={"content-type": value})):
        with pytest.raises(errors.InvalidArgument):
            call()
    assert server.requests == []


# -- item 13: payloads are signed over plain http; SSE-C keys need https -----------------------
def test_a_put_over_http_signs_its_body_sha256(server):
    body = os.urandom(100_000)
    client = client_of(server)
    client.put("k", body, {"mode": "33188"}, content_md5=content_md5(body))
    (method, _, headers, received), = server.requests
    assert method == "PUT" and received == body
    assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert transport.payload_hash(body, tls=True) == UNSIGNED, "over TLS the body is not hashed a second time"


def test_sse_c_key_needs_https(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    with pytest.raises(ConfigError, match="https"):
        ObjectOptions.from_config(MountConfig(endpoint="http://127.0.0.1:9000", sse_c_key=str(key)))
    assert ObjectOptions.from_config(MountConfig(endpoint="https://s3.example", sse_c_key=str(key))).sse_c_key
    assert ObjectOptions.from_config(MountConfig(sse_c_key=str(key))).sse_c_key, "AWS is https"
    assert ObjectOptions.from_config(MountConfig(endpoint="http://127.0.0.1:9000")).sse_c_key is None
    with pytest.raises(ConfigError, match="in clear"):
        ObjectClient("b", endpoint="http://127.0.0.1:9", access_key="a", secret_key="s",
                     options=ObjectOptions(sse_c_key=os.urandom(32)))


def test_a_mount_with_sse_c_key_over_http_fails_in_one_line(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="s")
    proc = subprocess.run([sys.executable, "-m", "s3fuse", "bucket", str(mp), "-o",
                           f"endpoint=http://127.0.0.1:9,sse_c_key={key},cache_dir={tmp_path / 'cache'}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert proc.stderr.count("\n") == 1 and "sse_c_key needs an https endpoint" in proc.stderr, proc.stderr


# -- item 8: a local clock minutes off is corrected from the server's answers ----------------
def test_a_request_refused_for_its_time_is_corrected_and_sent_again(server, skewed, caplog):
    client = client_of(server)
    with caplog.at_level(logging.WARNING, logger="s3fuse.s3"):
        info = client.head("k")                      # a HEAD: the 403 has no body, only its Date
    assert info.etag == "abc"
    assert [m for m, _, _, _ in server.requests] == ["HEAD", "HEAD"], "refused once, then accepted"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("local clock is 1200 s ahead of the server's" in w or "local clock is 1199 s ahead" in w
               or "local clock is 1201 s ahead" in w for w in warnings), warnings
    # from now on every request is signed with the server's time, botocore's too
    client.put("k", b"x", {}, content_md5=content_md5(b"x"))
    client.copy("k", "k2", {"mode": "33188"})        # CopyObject goes through botocore
    assert [m for m, _, _, _ in server.requests] == ["HEAD", "HEAD", "PUT", "PUT"]
    dates = [calendar.timegm(time.strptime(h["x-amz-date"], "%Y%m%dT%H%M%SZ")) for _, _, h, _ in server.requests]
    assert abs(dates[0] - time.time()) > 1000 and all(abs(d - time.time()) < 60 for d in dates[1:]), dates


def test_the_mount_probe_corrects_the_clock_from_the_date_of_its_answer(server, skewed, caplog):
    """A server that does not check the time (moto) still shows its clock: warned, corrected."""
    client = client_of(server)
    with caplog.at_level(logging.WARNING, logger="s3fuse.s3"):
        client.probe()
    assert len(server.requests) == 2 and client.requests.stats.signing_offset == pytest.approx(-SKEW, abs=3)
    assert any("requests are signed with the server's time" in r.getMessage() for r in caplog.records)


def test_botocore_requests_are_corrected_too(server, skewed):
    client = client_of(server)
    client.copy("k", "k2", {"mode": "33188"})        # refused, corrected, sent again by botocore
    assert [m for m, _, _, _ in server.requests] == ["PUT", "PUT"]
    assert "x-amz-copy-source" in server.requests[1][2]


def test_a_small_difference_is_left_alone_and_a_refusal_without_a_clock_is_not_retried(server):
    stats = stats_module.RequestStats()
    assert not stats.server_time_is(time.time() + 30) and stats.signing_offset == 0.0
    assert stats.clock_offset == pytest.approx(30, abs=1)
    assert stats.server_time_is(time.time() - 300) and stats.signing_offset == pytest.approx(-300, abs=1)
    assert stats.server_time_is(time.time()) and stats.signing_offset == 0.0, "back in step"
    denied = errors.AccessDenied("head 'k': 403")
    assert not stats.clock_refused(denied, 0.0), "a plain 403 with the clocks in step: an answer"


def test_clock_and_expired_credentials_are_their_own_kinds(caplog):
    assert error_kind("RequestTimeTooSkewed", 403) is errors.ClockSkewed
    assert error_kind("ExpiredToken", 400) is errors.CredentialsExpired
    expired = errors.CredentialsExpired("head 'k': 400 ExpiredToken")
    expired.s3_op, expired.status, expired.attempts = "HeadObject", "400", 1
    with caplog.at_level(logging.DEBUG, logger="s3fuse.fuse_ops"):
        assert to_errno("getattr", ("/k",), expired) == errno.EACCES
    # issue #23: refused credentials are reported once by s3.chain (tests/unit/test_credentials.py),
    # not once per operation at the FUSE boundary
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors.is_quiet(errors.ClockSkewed("x")) and errors.is_quiet(errors.AccessDenied("x"))
