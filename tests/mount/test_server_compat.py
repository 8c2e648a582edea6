"""s3fuse's S3 layer (s3fuse.s3.ObjectClient, the upload resume) against each real test
server, for the places where S3 servers answer differently.  Each case here was found
on Ceph RGW:

- ListParts of an upload id the server no longer knows (completed or aborted): moto and
  AWS answer NoSuchUpload, RGW answers NoSuchKey (404).  A crash between
  CompleteMultipartUpload and the removal of the journal record left the next mount
  retrying that resume forever (tests/mount/test_crash_loop.py timed out on RGW).
- CompleteMultipartUpload: RGW may answer without an ETag; the ETag keys the caches.
- GetObject of any range of an empty object: 416 on RGW; s3fuse must not ask.
- CopyObject of an object onto itself: refused unless the metadata is replaced."""
from __future__ import annotations

import hashlib
import os
import stat

import pytest

from s3fuse import errors
from s3fuse.meta.attrs import MD5_HEADER
from s3fuse.s3.objects import content_md5 as md5_b64
from s3fuse.s3 import ObjectClient
from s3fuse.write.journal import CLOSED, Entry, Journal
from s3fuse.write.uploader import Uploader

MiB = 1 << 20


@pytest.fixture
def client(s3_server, bucket):
    return ObjectClient(bucket, endpoint=s3_server.endpoint, access_key=s3_server.access_key,
                        secret_key=s3_server.secret_key, max_attempts=2)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("fate", ["completed", "aborted"])
def test_resume_of_an_upload_the_server_no_longer_has(client, s3, bucket, tmp_path, fate):
    """A CLOSED journal record whose multipart upload was completed (the crash came before
    the record was removed) or aborted: the resume starts the upload again and succeeds."""
    data = os.urandom(11 * MiB)
    parts = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    meta = {"mode": str(stat.S_IFREG | 0o644), MD5_HEADER: md5(data)}
    upload_id = client.create_multipart("k", meta)
    etags = [client.upload_part("k", upload_id, n, p, md5_b64(p)) for n, p in enumerate(parts, 1)]
    if fate == "completed":
        client.complete_multipart("k", upload_id, list(enumerate(etags, 1)))
    else:
        client.abort_multipart("k", upload_id)
    with pytest.raises(errors.UploadGone):
        client.list_parts("k", upload_id)

    staging = tmp_path / "staging"
    staging.write_bytes(data)
    journal = Journal(str(tmp_path / "journal"))
    entry = Entry(id=journal.new_id(), key="k", staging=str(staging), state=CLOSED, size=len(data),
                  md5=md5(data), metadata=dict(meta), upload_id=upload_id, part_size=5 * MiB,
                  parts={str(n): md5(p) for n, p in enumerate(parts, 1)}, uploaded_metadata=dict(meta))
    journal.save(entry)
    uploader = Uploader(client, journal, threads=2, part_size=5 * MiB)
    try:
        etag = uploader.upload(Journal(journal.dir).load(entry.id), verify_server_parts=True)
    finally:
        uploader.close()
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == data and got["Metadata"][MD5_HEADER] == md5(data)
    assert etag == got["ETag"].strip('"') and etag.endswith("-3")


def test_complete_multipart_returns_the_etag(client, s3, bucket):
    body = os.urandom(5 * MiB)
    upload_id = client.create_multipart("m")
    etag = client.upload_part("m", upload_id, 1, body, md5_b64(body))
    final = client.complete_multipart("m", upload_id, [(1, etag)])
    assert final and final == s3.head_object(Bucket=bucket, Key="m")["ETag"].strip('"')


def test_empty_object_needs_no_range_request(client, s3, bucket):
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    before = dict(client.request_counts)
    assert client.get_range("empty", 0, 0) == b""
    assert client.request_counts == before


def test_metadata_copy_onto_itself(client, s3, bucket):
    s3.put_object(Bucket=bucket, Key="self", Body=b"same bytes", Metadata={"mode": "33188"})
    etag = client.copy("self", "self", {"mode": str(stat.S_IFREG | 0o600), "mtime": "1600000000"})
    head = s3.head_object(Bucket=bucket, Key="self")
    assert head["Metadata"] == {"mode": str(stat.S_IFREG | 0o600), "mtime": "1600000000"}
    assert etag == head["ETag"].strip('"')
    assert s3.get_object(Bucket=bucket, Key="self")["Body"].read() == b"same bytes"


@pytest.mark.servers("rgw")
def test_a_retried_create_aborts_the_upload_of_its_lost_answer(client, s3, bucket, monkeypatch):
    """CreateMultipartUpload whose answer is lost (the server created the upload, the
    client saw a timeout): the retry layer asks again, and the client aborts the upload
    the failed attempt left, keeping the one it returns.  Uploads are matched by key and
    initiation time (another writer's upload of the key may be older): RGW only, as moto
    reports every upload initiated on 2010-11-10."""
    from s3fuse import errors
    from s3fuse.s3.objects import xml_text
    fast = client.requests.fast
    assert fast is not None, "CreateMultipartUpload goes through the hand-signed transport"
    real = fast._request
    created = []

    def lose_first_answer(method, key, *args, **kwargs):
        answer = real(method, key, *args, **kwargs)
        if method == "POST" and "uploads" in (kwargs.get("query") or {}):
            created.append(xml_text(answer[2], "UploadId"))
            if len(created) == 1:
                raise errors.with_status(errors.Unreachable(f"POST {key!r}: timed out"), "timeout")
        return answer
    monkeypatch.setattr(fast, "_request", lose_first_answer)
    monkeypatch.setattr(client.requests.retry, "_sleep", lambda s: None)
    upload_id = client.create_multipart("k")
    assert len(created) == 2 and upload_id == created[1]
    left = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == [upload_id]
    client.abort_multipart("k", upload_id)
