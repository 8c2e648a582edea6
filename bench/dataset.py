"""The dataset every filesystem reads, uploaded once per run with boto3: big.bin (random
bytes, kept locally for the checks), many/ (small objects), the cp -r tree and the tree
the directory-rename floor moves.  Two of its uploads are also "physical limit" rows."""

from __future__ import annotations

import hashlib
import os
import random
import time

from .common import (CPOUT_PREFIX, FLOOR_MV_PREFIX, MiB, RANDOM_SEED, RAW_PART, RAW_THREADS, log,
                     size_name)
from .context import Ctx


def build_dataset(ctx: Ctx, limits: dict) -> None:
    big, many = ctx.scale["big"], ctx.scale["many"]
    bn = size_name(big)
    ctx.local_big = ctx.workdir / "big.bin"
    log(f"- generating {bn} of random data")
    h = hashlib.md5()
    with open(ctx.local_big, "wb") as f:
        left = big
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    ctx.big_md5 = h.hexdigest()

    # Warm-up: the first PUT / multipart upload into a fresh RGW creates its data
    # pools (seconds); keep that out of the measured PUTs.
    c = ctx.s3.c
    c.put_object(Bucket=ctx.bucket, Key="warmup/small", Body=b"x" * 1024)
    up = c.create_multipart_upload(Bucket=ctx.bucket, Key="warmup/mp")["UploadId"]
    r = c.upload_part(Bucket=ctx.bucket, Key="warmup/mp", UploadId=up, PartNumber=1, Body=os.urandom(5 * MiB))
    c.complete_multipart_upload(Bucket=ctx.bucket, Key="warmup/mp", UploadId=up,
                                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["ETag"]}]})
    c.delete_objects(Bucket=ctx.bucket, Delete={"Objects": [{"Key": "warmup/small"}, {"Key": "warmup/mp"}]})

    # the uploads that are also limit rows go through the proxy (ctx.s3p), the rest straight
    log(f"- PUT many/: {many} objects of ~1 KiB (32 threads)")
    rng = random.Random(RANDOM_SEED)
    items = [(f"many/f{i:05d}.dat", rng.randbytes(rng.randint(768, 1280))) for i in range(many)]
    t0 = time.perf_counter()
    ctx.s3p.put_many(ctx.bucket, items)
    dt = time.perf_counter() - t0
    limits[f"boto3_put_{many}_small"] = {"seconds": dt, "doc": "put_object x N, 32 threads"}

    nw = ctx.scale["nwrite"]
    log(f"- PUT {CPOUT_PREFIX}: {nw} objects of ~1 KiB in 10 dirs (the cp -r tree), {FLOOR_MV_PREFIX}: {nw}")
    rng = random.Random(RANDOM_SEED + 4)
    items = [(f"{CPOUT_PREFIX}d{i % 10:02d}/f{i:04d}.dat", rng.randbytes(rng.randint(512, 1536)))
             for i in range(nw)]
    ctx.s3.put_many(ctx.bucket, items)
    ctx.prepared["cpout"] = (CPOUT_PREFIX, {k[len(CPOUT_PREFIX):]: hashlib.md5(b).hexdigest() for k, b in items})
    ctx.s3.put_many(ctx.bucket, [(f"{FLOOR_MV_PREFIX}f{i:04d}.dat", b"m" * 1024) for i in range(nw)])

    log(f"- PUT big.bin ({RAW_THREADS} threads x {RAW_PART // MiB} MiB parts)")
    t0 = time.perf_counter()
    ctx.s3p.multipart_put(ctx.bucket, "big.bin", ctx.local_big)
    dt = time.perf_counter() - t0
    limits[f"boto3_put_{bn}"] = {"seconds": dt, "MiB_per_s": big / MiB / dt,
                                 "doc": f"multipart PUT, {RAW_THREADS} threads x {RAW_PART // MiB} MiB"}
