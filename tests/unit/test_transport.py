"""Addressing, proxies, request options and fallbacks of the transport (issue 14), without
an S3 server (the mounts are in test_transport_mount.py)."""
from __future__ import annotations

import base64
import hashlib
import http.server
import logging
import os
import threading

import pytest

from s3fuse.config import MountConfig
from s3fuse.s3.endpoint import Endpoint, Network
from s3fuse.errors import ConfigError
from s3fuse.s3 import ObjectClient
from s3fuse.s3.object_options import ObjectOptions, read_sse_c_key


class TestEndpoint:
    def test_aws_is_https_virtual_hosted_in_the_region(self):
        ep = Endpoint.resolve("my-bucket", None, None, None, "eu-west-1")
        assert (ep.url(), ep.connect_host, ep.host_header, ep.style) == \
            ("https://s3.eu-west-1.amazonaws.com", "my-bucket.s3.eu-west-1.amazonaws.com",
             "my-bucket.s3.eu-west-1.amazonaws.com", "virtual")
        assert ep.path("a b/ü+c") == "/a%20b/%C3%BC%2Bc" and ep.path(None) == "/"
        ep.set_region("ap-south-1")
        assert ep.connect_host == "my-bucket.s3.ap-south-1.amazonaws.com" and ep.region == "ap-south-1"

    def test_aws_path_style_on_request_or_for_dotted_names(self):
        assert Endpoint.resolve("my-bucket", None, "us-east-1", True).style == "path"
        dotted = Endpoint.resolve("my.bucket", None, "us-east-1", None)
        assert dotted.style == "path" and dotted.path("k") == "/my.bucket/k"
        assert Endpoint.resolve("my-bucket", None, None, None).region == "us-east-1"

    def test_custom_endpoint_is_path_style_unless_asked(self):
        ep = Endpoint.resolve("b", "http://127.0.0.1:7480/base", None, None)
        assert (ep.url(), ep.host_header, ep.path("k"), ep.style) == \
            ("http://127.0.0.1:7480/base", "127.0.0.1:7480", "/base/b/k", "path")
        vh = Endpoint.resolve("b", "https://s3.example.net", None, False)
        assert (vh.host_header, vh.path("k"), vh.url()) == ("b.s3.example.net", "/k", "https://s3.example.net")
        vh.set_region("x")
        assert vh.host == "s3.example.net", "a custom endpoint does not move with the region"


class TestProxies:
    def test_proxy_from_the_environment_and_no_proxy(self, monkeypatch):
        for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
                     "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.local:3128")
        monkeypatch.setenv("HTTP_PROXY", "proxy.local:8080")
        monkeypatch.setenv("NO_PROXY", "internal.example,.corp")
        net = Network()
        p = net.proxy_for("https", "b.s3.us-east-1.amazonaws.com")
        assert (p.hostname, p.port, p.username, p.password) == ("proxy.local", 3128, "user", "p%40ss")
        assert net.proxy_for("http", "s3.example.net").port == 8080
        assert net.absolute("http", "s3.example.net") and not net.absolute("https", "s3.example.net")
        assert net.proxy_for("https", "internal.example") is None
        assert net.proxy_for("https", "b.s3.corp") is None

    def test_no_proxy_variables_means_direct(self, monkeypatch):
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert Network().proxy_for("https", "s3.amazonaws.com") is None

    def test_a_bad_ca_bundle_is_a_config_error(self, tmp_path):
        bad = tmp_path / "ca.pem"
        bad.write_text("not a certificate")
        with pytest.raises(ConfigError):
            Network(str(bad)).ssl_context()


class TestObjectOptions:
    def test_mount_options_override_the_objects_own_encryption(self):
        opts = ObjectOptions(sse="aws:kms", sse_kms_key_id="k1", storage_class="STANDARD_IA", acl="private")
        h = opts.write_headers({"content-type": "text/plain", "x-amz-server-side-encryption": "AES256"})
        assert h == {"content-type": "text/plain", "x-amz-server-side-encryption": "aws:kms",
                     "x-amz-server-side-encryption-aws-kms-key-id": "k1", "x-amz-storage-class": "STANDARD_IA",
                     "x-amz-acl": "private"}
        assert ObjectOptions().write_headers({"x-amz-server-side-encryption": "aws:kms"}) == \
            {"x-amz-server-side-encryption": "aws:kms"}, "without options an object keeps its own"

    def test_sse_c_headers_and_params(self):
        key = bytes(range(32))
        opts = ObjectOptions(sse_c_key=key, requester_pays=True)
        h = opts.write_headers()
        assert h["x-amz-server-side-encryption-customer-algorithm"] == "AES256"
        assert h["x-amz-server-side-encryption-customer-key-md5"] == \
            base64.b64encode(hashlib.md5(key).digest()).decode()
        assert opts.common() == {"x-amz-request-payer": "requester"}
        p = opts.params()
        assert p["SSECustomerKey"] == key and p["CopySourceSSECustomerKey"] == key and p["RequestPayer"] == "requester"
        assert "key" not in str(opts.describe()).lower().replace("sse-c", "")

    def test_config_checks(self, tmp_path):
        assert ObjectOptions.from_config(MountConfig(sse_kms_key_id="k")).sse == "aws:kms"
        with pytest.raises(ConfigError):
            ObjectOptions.from_config(MountConfig(sse="AES256", sse_kms_key_id="k"))
        f = tmp_path / "key"
        f.write_bytes(os.urandom(32))
        f.chmod(0o600)
        with pytest.raises(ConfigError):
            ObjectOptions.from_config(MountConfig(sse="AES256", sse_c_key=str(f)))

    @pytest.mark.parametrize("text", ["raw", "base64", "hex"])
    def test_sse_c_key_file_formats_and_mode(self, tmp_path, text):
        key = os.urandom(32)
        f = tmp_path / "key"
        f.write_bytes({"raw": key, "base64": base64.b64encode(key) + b"\n",
                       "hex": key.hex().encode() + b"\n"}[text])
        f.chmod(0o600)
        assert read_sse_c_key(str(f)) == key
        f.chmod(0o640)
        with pytest.raises(ConfigError, match="chmod 600"):
            read_sse_c_key(str(f))
        f.chmod(0o600)
        f.write_bytes(b"short\n")
        with pytest.raises(ConfigError, match="256-bit"):
            read_sse_c_key(str(f))


class ListingServer(http.server.ThreadingHTTPServer):
    """Answers every ListObjectsV2 with a page the transport cannot trust (truncated, no
    continuation token): botocore reads it instead, and that is counted as a fallback."""

    def __init__(self):
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(h):
                self.requests.append(h.path)
                body = (b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                        b"<Name>b</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
                        b"<IsTruncated>true</IsTruncated><Contents><Key>k</Key><Size>3</Size>"
                        b"<ETag>&quot;abc&quot;</ETag><LastModified>2026-11-25T12:00:00.000Z</LastModified>"
                        b"</Contents></ListBucketResult>")
                h.send_response(200)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)

            def log_message(h, *args):
                pass
        super().__init__(("127.0.0.1", 0), Handler)


def test_a_fallback_is_logged_and_counted(caplog):
    server = ListingServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ObjectClient("b", endpoint=f"http://127.0.0.1:{server.server_address[1]}", access_key="a",
                              secret_key="s")
        with caplog.at_level(logging.WARNING, logger="s3fuse.s3"):
            page = client.list_page("")
            client.list_page("")
        assert [o.key for o in page.objects] == ["k"]
        assert len(server.requests) == 4, "each listing: the transport's request, then botocore's"
        stats = client.transport_stats()
        assert stats["fallbacks"] == {"list_objects_v2": 2} and stats["fallback_total"] == 2
        assert [r.message for r in caplog.records if "through botocore" in r.message] == \
            ["list_objects_v2 through botocore (a listing it could not read): fallback 1 of this kind"]
    finally:
        server.shutdown()
        server.server_close()


def test_connect_timeout_then_read_timeout():
    """A short timeout to connect (TLS and tunnel included), the request timeout after."""
    import socket
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        conn = Network(connect_timeout=1.5, read_timeout=7.0).connect("http", "127.0.0.1", listener.getsockname()[1])
        try:
            assert conn.timeout == 1.5 and conn.sock.gettimeout() == 7.0
        finally:
            conn.close()
    assert Network(connect_timeout=10, read_timeout=2).connect_timeout == 2, "never longer than a request"
