"""boto3 straight to the server (or through the latency proxy): the dataset uploads, the
"physical limit" rows, the write steps' durability polls and content checks, clean-up."""

from __future__ import annotations

import concurrent.futures as cf
import os
from pathlib import Path

from .common import MiB, RAW_PART, RAW_THREADS, StepFailed


class S3:
    def __init__(self, endpoint: str, region: str):
        import boto3
        from botocore.config import Config
        cfg = Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=64,
            retries={"max_attempts": 8, "mode": "standard"},
        )
        self.c = boto3.client(
            "s3", endpoint_url=endpoint, region_name=region, config=cfg,
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        )

    def list_prefix(self, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
        out = {}
        for page in self.c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = (o["Size"], o.get("ETag", "").strip('"'))
        return out

    def prefix_empty(self, bucket: str, prefix: str) -> bool:
        r = self.c.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return r.get("KeyCount", len(r.get("Contents", []))) == 0

    def put_many(self, bucket: str, items: list[tuple[str, bytes]], threads: int = 32) -> None:
        ex = cf.ThreadPoolExecutor(threads)
        try:
            for f in [ex.submit(self.c.put_object, Bucket=bucket, Key=k, Body=b) for k, b in items]:
                f.result()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: do not upload the rest

    def multipart_put(self, bucket: str, key: str, path: Path, threads=RAW_THREADS, part=RAW_PART) -> None:
        size = path.stat().st_size
        if size <= part:
            with open(path, "rb") as f:
                self.c.put_object(Bucket=bucket, Key=key, Body=f.read())
            return
        up = self.c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        nparts = (size + part - 1) // part

        def one(i: int):
            with open(path, "rb") as f:
                f.seek(i * part)
                data = f.read(part)
            r = self.c.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=i + 1, Body=data)
            return {"PartNumber": i + 1, "ETag": r["ETag"]}

        try:
            with cf.ThreadPoolExecutor(threads) as ex:
                parts = list(ex.map(one, range(nparts)))
            self.c.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up,
                                             MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up)
            except Exception:
                pass
            raise

    def ranged_get(self, bucket: str, key: str, size: int, threads=RAW_THREADS, part=RAW_PART) -> bytearray:
        buf = bytearray(size)
        mv = memoryview(buf)

        def one(off: int):
            end = min(off + part, size) - 1
            body = self.c.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{end}")["Body"]
            pos = off
            while True:
                chunk = body.read(MiB)
                if not chunk:
                    break
                mv[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
            if pos != end + 1:
                raise StepFailed(f"short ranged GET at {off}: {pos - off} bytes")

        with cf.ThreadPoolExecutor(threads) as ex:
            list(ex.map(one, range(0, size, part)))
        return buf

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        """Delete the objects under ``prefix`` and abort its unfinished multipart uploads."""
        keys = list(self.list_prefix(bucket, prefix))
        for i in range(0, len(keys), 1000):
            self.c.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        try:
            for u in self.c.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
                self.c.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
        except Exception:
            pass

    def delete_bucket(self, bucket: str) -> None:
        self.delete_prefix(bucket, "")
        self.c.delete_bucket(Bucket=bucket)
