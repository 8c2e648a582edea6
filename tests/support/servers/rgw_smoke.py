#!/usr/bin/env python3
"""Smoke test of the S3 calls s3fuse relies on, against a running S3 server.

Usage:
    eval "$(tests/support/servers/rgw.sh start)"
    python3 tests/support/servers/rgw_smoke.py            # basic calls
    python3 tests/support/servers/rgw_smoke.py --big      # + 256 MiB object and 5,000 small ones

Reads S3FUSE_TEST_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
Needs boto3. Exits non-zero on the first failing check.
"""
import argparse
import hashlib
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

MiB = 1024 * 1024


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["S3FUSE_TEST_ENDPOINT"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 2},
            max_pool_connections=32,
        ),
    )


def check(cond, what):
    if not cond:
        print("FAIL:", what, file=sys.stderr)
        sys.exit(1)
    print("ok:", what)


def basic(s3, bucket):
    s3.create_bucket(Bucket=bucket)
    check(bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]], "create_bucket/list_buckets")

    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello world",
                  Metadata={"mode": "0644"}, ContentType="text/plain")
    r = s3.get_object(Bucket=bucket, Key="hello.txt")
    check(r["Body"].read() == b"hello world", "put/get")
    check(r["Metadata"].get("mode") == "0644", "user metadata round-trip")
    h = s3.head_object(Bucket=bucket, Key="hello.txt")
    check(h["ContentLength"] == 11, "head_object")

    r = s3.get_object(Bucket=bucket, Key="hello.txt", Range="bytes=6-10")
    check(r["Body"].read() == b"world" and r["ContentRange"] == "bytes 6-10/11", "ranged get")
    r = s3.get_object(Bucket=bucket, Key="hello.txt", Range="bytes=6-")
    check(r["Body"].read() == b"world", "open-ended ranged get")

    # Listing: dir/ marker next to dir/x, pagination with MaxKeys=2 + Delimiter.
    for k in ["dir/", "dir/x", "dir/y", "dir/sub/z", "a1", "a2", "a3", "b/1"]:
        s3.put_object(Bucket=bucket, Key=k, Body=b"" if k.endswith("/") else k.encode())
    keys, prefixes, pages, token = [], [], 0, None
    while True:
        kw = dict(Bucket=bucket, Delimiter="/", MaxKeys=2)
        if token:
            kw["ContinuationToken"] = token
        r = s3.list_objects_v2(**kw)
        pages += 1
        check(r["KeyCount"] <= 2, "page %d has <= 2 entries (KeyCount=%d)" % (pages, r["KeyCount"]))
        keys += [c["Key"] for c in r.get("Contents", [])]
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    check(sorted(keys) == ["a1", "a2", "a3", "hello.txt"], "root keys %r" % keys)
    check(sorted(prefixes) == ["b/", "dir/"], "root prefixes %r" % prefixes)
    check(pages >= 3, "pagination used %d pages" % pages)

    keys, prefixes, token = [], [], None
    while True:
        kw = dict(Bucket=bucket, Prefix="dir/", Delimiter="/", MaxKeys=2)
        if token:
            kw["ContinuationToken"] = token
        r = s3.list_objects_v2(**kw)
        keys += [c["Key"] for c in r.get("Contents", [])]
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    check(sorted(keys) == ["dir/", "dir/x", "dir/y"], "dir/ marker listed with dir/x: %r" % keys)
    check(prefixes == ["dir/sub/"], "dir/ prefixes %r" % prefixes)
    r = s3.list_objects_v2(Bucket=bucket, Prefix="dir/x", MaxKeys=1)
    check([c["Key"] for c in r["Contents"]] == ["dir/x"], "prefix lookup of a single key")

    # Multipart: 2 parts of 5 MiB, list_parts, upload_part_copy, complete.
    p1 = os.urandom(5 * MiB)
    p2 = os.urandom(5 * MiB)
    s3.put_object(Bucket=bucket, Key="src5m", Body=p2)
    mpu = s3.create_multipart_upload(Bucket=bucket, Key="mp.bin", Metadata={"k": "v"})
    uid = mpu["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="mp.bin", UploadId=uid, PartNumber=1, Body=p1)["ETag"]
    e2 = s3.upload_part_copy(Bucket=bucket, Key="mp.bin", UploadId=uid, PartNumber=2,
                             CopySource={"Bucket": bucket, "Key": "src5m"})["CopyPartResult"]["ETag"]
    e3 = s3.upload_part_copy(Bucket=bucket, Key="mp.bin", UploadId=uid, PartNumber=3,
                             CopySource={"Bucket": bucket, "Key": "hello.txt"},
                             CopySourceRange="bytes=0-4")["CopyPartResult"]["ETag"]
    ups = s3.list_multipart_uploads(Bucket=bucket)
    check(any(u["UploadId"] == uid for u in ups.get("Uploads", [])), "list_multipart_uploads")
    parts = s3.list_parts(Bucket=bucket, Key="mp.bin", UploadId=uid)["Parts"]
    check([(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MiB), (2, 5 * MiB), (3, 5)],
          "list_parts %r" % [(p["PartNumber"], p["Size"]) for p in parts])
    parts = s3.list_parts(Bucket=bucket, Key="mp.bin", UploadId=uid, MaxParts=1)
    check(parts["IsTruncated"] and len(parts["Parts"]) == 1, "list_parts pagination")
    s3.complete_multipart_upload(
        Bucket=bucket, Key="mp.bin", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2},
                                   {"PartNumber": 3, "ETag": e3}]})
    body = s3.get_object(Bucket=bucket, Key="mp.bin")["Body"].read()
    check(body == p1 + p2 + b"hello", "multipart complete (incl. upload_part_copy)")
    h = s3.head_object(Bucket=bucket, Key="mp.bin")
    check(h["ETag"].strip('"').endswith("-3") and h["Metadata"] == {"k": "v"}, "multipart ETag/metadata")
    r = s3.get_object(Bucket=bucket, Key="mp.bin", Range="bytes=%d-%d" % (5 * MiB - 2, 5 * MiB + 1))
    check(r["Body"].read() == p1[-2:] + p2[:2], "ranged get across part boundary")

    # Abort.
    uid2 = s3.create_multipart_upload(Bucket=bucket, Key="aborted")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="aborted", UploadId=uid2, PartNumber=1, Body=b"x" * 100)
    s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=uid2)
    ups = s3.list_multipart_uploads(Bucket=bucket)
    check(not any(u["UploadId"] == uid2 for u in ups.get("Uploads", [])), "abort_multipart_upload")

    # Copy with metadata replace (how s3fuse does chmod/utime/rename).
    s3.copy_object(Bucket=bucket, Key="hello-copy.txt", CopySource={"Bucket": bucket, "Key": "hello.txt"},
                   MetadataDirective="REPLACE", Metadata={"mode": "0600", "mtime": "123"},
                   ContentType="application/x-test")
    h = s3.head_object(Bucket=bucket, Key="hello-copy.txt")
    check(h["Metadata"] == {"mode": "0600", "mtime": "123"} and h["ContentType"] == "application/x-test",
          "copy_object REPLACE metadata %r" % h["Metadata"])
    # Self-copy with REPLACE (metadata update in place).
    s3.copy_object(Bucket=bucket, Key="hello.txt", CopySource={"Bucket": bucket, "Key": "hello.txt"},
                   MetadataDirective="REPLACE", Metadata={"mode": "0755"})
    h = s3.head_object(Bucket=bucket, Key="hello.txt")
    check(h["Metadata"] == {"mode": "0755"}, "self copy_object REPLACE")
    check(s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"hello world", "self copy keeps data")
    s3.copy_object(Bucket=bucket, Key="mp-copy.bin", CopySource={"Bucket": bucket, "Key": "mp.bin"})
    check(s3.head_object(Bucket=bucket, Key="mp-copy.bin")["ContentLength"] == 10 * MiB + 5,
          "copy_object of multipart object")

    # Errors.
    try:
        s3.head_object(Bucket=bucket, Key="nope")
        check(False, "head of missing key raises")
    except s3.exceptions.ClientError as e:
        check(e.response["ResponseMetadata"]["HTTPStatusCode"] == 404, "head of missing key is 404")
    try:
        s3.get_object(Bucket=bucket, Key="nope")
        check(False, "get of missing key raises")
    except s3.exceptions.NoSuchKey:
        check(True, "get of missing key is NoSuchKey")

    # delete_objects.
    all_keys = [c["Key"] for c in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in all_keys] + [{"Key": "missing"}]})
    check(not r.get("Errors") and len(r["Deleted"]) == len(all_keys) + 1, "delete_objects")
    check(s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0, "bucket empty after delete_objects")
    s3.delete_bucket(Bucket=bucket)
    check(True, "delete_bucket")


def big(s3, bucket):
    s3.create_bucket(Bucket=bucket)
    # 256 MiB object as multipart with 8 MiB parts (as a benchmark would).
    size, part = 256 * MiB, 8 * MiB
    block = os.urandom(part)
    t = time.time()
    uid = s3.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]

    def up(n):
        return {"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="big", UploadId=uid,
                                                        PartNumber=n, Body=block)["ETag"]}
    with ThreadPoolExecutor(8) as ex:
        parts = list(ex.map(up, range(1, size // part + 1)))
    s3.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=uid, MultipartUpload={"Parts": parts})
    dt = time.time() - t
    print("256 MiB multipart upload: %.1f s (%.0f MiB/s)" % (dt, 256 / dt))
    t = time.time()
    h = hashlib.md5()
    body = s3.get_object(Bucket=bucket, Key="big")["Body"]
    for chunk in iter(lambda: body.read(MiB), b""):
        h.update(chunk)
    dt = time.time() - t
    exp = hashlib.md5(block * (size // part)).hexdigest()
    check(h.hexdigest() == exp, "256 MiB read back (%.1f s, %.0f MiB/s)" % (dt, 256 / dt))
    # Single 256 MiB PUT too.
    t = time.time()
    s3.put_object(Bucket=bucket, Key="big-single", Body=block * (size // part))
    dt = time.time() - t
    check(s3.head_object(Bucket=bucket, Key="big-single")["ContentLength"] == size,
          "256 MiB single PUT (%.1f s)" % dt)

    # 5,000 small objects.
    t = time.time()
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: s3.put_object(Bucket=bucket, Key="small/%05d" % i, Body=b"x" * 4096),
                    range(5000)))
    dt = time.time() - t
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="small/"):
        n += page["KeyCount"]
    check(n == 5000, "5,000 small objects put (%.1f s, %.0f/s) and listed" % (dt, 5000 / dt))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the big bucket's data")
    a = ap.parse_args()
    s3 = client()
    basic(s3, "smoke-" + uuid.uuid4().hex[:8])
    if a.big:
        b = "big-" + uuid.uuid4().hex[:8]
        big(s3, b)
        if not a.keep:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b):
                keys = [{"Key": c["Key"]} for c in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=b, Delete={"Objects": keys})
            s3.delete_bucket(Bucket=b)
    print("all checks passed")


if __name__ == "__main__":
    main()
