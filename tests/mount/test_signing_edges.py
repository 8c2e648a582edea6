"""Signing at the edges against the real test servers (issue #22, items 8, 13, 14).

- A local clock 20 minutes ahead (moved in-process for s3fuse's signer and botocore's):
  RGW refuses such requests (403 RequestTimeTooSkewed), moto does not check the time but
  its Date shows the server's clock; either way the client corrects it, warns, and every
  request succeeds.
- PUTs over plain http carry their body's SHA-256 (RGW checks it: a wrong one is refused).
- Another tool's metadata keeps its runs of spaces through a chmod (a metadata rewrite).
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os

import botocore.auth
import pytest

from s3fuse import errors
from s3fuse.s3 import ObjectClient, transport
from s3fuse.s3 import stats as stats_module
from s3fuse.s3.objects import content_md5

SKEW = 1200.0


def skew(monkeypatch):
    """The local clock 20 minutes ahead for s3fuse's signer and for botocore (the test's
    own boto3 client too, until ``monkeypatch.undo()``)."""
    real = stats_module.local_clock
    monkeypatch.setattr(stats_module, "local_clock", lambda: real() + SKEW)
    real_now = botocore.auth.get_current_datetime
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda *a, **k: real_now(*a, **k) + datetime.timedelta(seconds=SKEW))


def client_for(server, bucket) -> ObjectClient:
    return ObjectClient(bucket, endpoint=server.endpoint, access_key=server.access_key,
                        secret_key=server.secret_key, max_attempts=2)


def test_a_clock_20_minutes_ahead_is_corrected_at_mount_time(s3_server, s3, bucket, monkeypatch, caplog):
    skew(monkeypatch)
    client = client_for(s3_server, bucket)
    with caplog.at_level(logging.WARNING, logger="s3fuse.s3"):
        client.probe()
    warned = [r.getMessage() for r in caplog.records if "ahead of the server's" in r.getMessage()]
    assert len(warned) == 1 and "requests are signed with the server's time" in warned[0], caplog.text
    assert client.requests.stats.signing_offset == pytest.approx(-SKEW, abs=3)
    refused = client.request_counts["list_objects_v2"] - 1
    assert refused == (1 if s3_server.kind == "rgw" else 0), "RGW refused the first probe; moto does not check"
    # every kind of request afterwards: the transport's and botocore's
    client.put("a.txt", b"alpha", {"mode": "33188"}, content_md5=content_md5(b"alpha"))
    assert client.head("a.txt").size == 5
    client.copy("a.txt", "b.txt", {"mode": "33184"})                  # CopyObject: botocore
    upload = client.create_multipart("c.bin")                        # botocore
    part = os.urandom(1000)
    etag = client.upload_part("c.bin", upload, 1, part, content_md5(part))
    client.complete_multipart("c.bin", upload, [(1, etag)])
    monkeypatch.undo()
    assert s3.get_object(Bucket=bucket, Key="b.txt")["Body"].read() == b"alpha"
    assert s3.get_object(Bucket=bucket, Key="c.bin")["Body"].read() == part
    assert s3.head_object(Bucket=bucket, Key="b.txt")["Metadata"]["mode"] == "33184"
    assert client.error_count == 0


@pytest.mark.servers("rgw")
def test_a_refused_request_corrects_the_clock_and_is_sent_again(s3_server, s3, bucket, monkeypatch, caplog):
    """No probe first: a HEAD (its 403 has no body, only a Date) and a botocore copy."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    skew(monkeypatch)
    for first in ("head", "copy"):
        client = client_for(s3_server, bucket)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="s3fuse.s3"):
            if first == "head":
                assert client.head("k").size == 4
            else:
                client.copy("k", "k2", {"mode": "33188"})
        assert client.request_counts == {"head_object" if first == "head" else "copy_object": 2}
        assert any("the server refused a request for its time" in r.getMessage() for r in caplog.records), \
            caplog.text


def test_puts_over_http_sign_the_body_sha256(s3_server, s3, bucket, monkeypatch):
    hashed = []
    real = transport.payload_hash

    def spy(body, tls):
        hashed.append(real(body, tls))
        return hashed[-1]
    monkeypatch.setattr(transport, "payload_hash", spy)
    client = client_for(s3_server, bucket)
    body = os.urandom(200_000)
    client.put("k", body, {}, content_md5=content_md5(body))
    assert hashed == [hashlib.sha256(body).hexdigest()]
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body
    if s3_server.kind == "rgw":        # the server checks it (moto does not)
        monkeypatch.setattr(transport, "payload_hash", lambda body, tls: hashlib.sha256(b"other").hexdigest())
        with pytest.raises(errors.BackendError, match="XAmzContentSHA256Mismatch"):
            client.put("k2", body, {}, content_md5=content_md5(body))


@pytest.mark.servers("moto")
def test_foreign_metadata_keeps_its_spaces_through_chmod_and_overwrite(s3, bucket, mounter):
    meta = {"note": "a  b   c", "other": "x  y"}
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"old", Metadata=meta)
    s3.put_object(Bucket=bucket, Key="d/", Body=b"", Metadata=meta)
    s3.put_object(Bucket=bucket, Key="g.txt", Body=b"old", Metadata=meta)
    before = {k: s3.head_object(Bucket=bucket, Key=k)["Metadata"] for k in ("f.txt", "d/", "g.txt")}
    assert all(m["note"] == "a  b   c" for m in before.values()), before
    m = mounter(bucket)
    os.chmod(m.p("f.txt"), 0o600)            # a copy onto itself (botocore)
    os.chmod(m.p("d"), 0o700)                # the marker's PUT (the transport)
    with open(m.p("g.txt"), "wb") as f:      # a new version: the PUT keeps other tools' metadata
        f.write(b"new content")
    m.unmount()
    for key in ("f.txt", "d/", "g.txt"):
        after = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
        assert {k: after.get(k) for k in meta} == {k: before[key][k] for k in meta}, (key, after)
    assert s3.get_object(Bucket=bucket, Key="g.txt")["Body"].read() == b"new content"
