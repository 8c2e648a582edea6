"""The rows under the table: the raw boto3 "physical limit" rows (no FUSE: what the
endpoint does for a good client) and each step's floor (bench/floors.py: the requests a
step cannot avoid, with a lean client), both through the same proxy as the filesystems."""

from __future__ import annotations

import hashlib
import os
import random
import time

from . import floors
from .common import (FLOOR_MV_PREFIX, RANDOM_READ_SIZE, RANDOM_READS, RANDOM_SEED, RAW_PART, RAW_THREADS, MiB, log,
                     size_name)
from .context import Ctx
from .steps import Step
from .system import drop_caches


def measure_limits(ctx: Ctx, limits: dict) -> None:
    big, many = ctx.scale["big"], ctx.scale["many"]
    bn = size_name(big)
    drop_caches(not ctx.args.no_drop_caches)
    t0 = time.perf_counter()
    data = ctx.s3p.ranged_get(ctx.bucket, "big.bin", big)
    dt = time.perf_counter() - t0
    if hashlib.md5(data).hexdigest() != ctx.big_md5:
        raise RuntimeError("raw GET of big.bin returned wrong data: endpoint is broken")
    del data
    limits[f"boto3_get_{bn}"] = {"seconds": dt, "MiB_per_s": big / MiB / dt,
                                 "doc": f"ranged GETs, {RAW_THREADS} threads x {RAW_PART // MiB} MiB"}

    t0 = time.perf_counter()
    n = len(ctx.s3p.list_prefix(ctx.bucket, "many/"))
    dt = time.perf_counter() - t0
    if n != many:
        raise RuntimeError(f"listing many/ gave {n} objects, want {many}")
    limits[f"boto3_list_{many}"] = {"seconds": dt, "doc": "ListObjectsV2 of many/ (1000 per page)"}

    c = ctx.s3p.c
    rng = random.Random(RANDOM_SEED)
    offs = [rng.randrange(0, big - RANDOM_READ_SIZE) for _ in range(RANDOM_READS)]
    with open(ctx.local_big, "rb") as f:
        want = []
        for off in offs:
            f.seek(off)
            want.append(f.read(RANDOM_READ_SIZE))
    t0 = time.perf_counter()
    got = [c.get_object(Bucket=ctx.bucket, Key="big.bin",
                               Range=f"bytes={o}-{o + RANDOM_READ_SIZE - 1}")["Body"].read()
           for o in offs]
    dt = time.perf_counter() - t0
    if got != want:
        raise RuntimeError("raw ranged GETs returned wrong data")
    limits[f"boto3_get_{size_name(RANDOM_READ_SIZE)}_x{RANDOM_READS}"] = {
        "seconds": dt, "doc": "sequential 4 KiB ranged GETs at the random_read offsets"}

    # Request latency: a HEAD (headers only) vs a GET of a ~1 KiB object.  A
    # GET that is ~40 ms slower than a HEAD is Nagle + delayed ACK on the
    # server (RGW beast without tcp_nodelay=1): it taxes every small response.
    def median_ms(fn, n=15):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1000)
        return sorted(ts)[n // 2]
    head_ms = median_ms(lambda: c.head_object(Bucket=ctx.bucket, Key="many/f00000.dat"))
    get_ms = median_ms(lambda: c.get_object(Bucket=ctx.bucket, Key="many/f00000.dat")["Body"].read())
    limits["head_latency_ms"] = {"seconds": head_ms / 1000, "ms": head_ms, "doc": "median HEAD of a small object"}
    limits["get_1KiB_latency_ms"] = {"seconds": get_ms / 1000, "ms": get_ms,
                                     "doc": "median GET of a ~1 KiB object"}
    if get_ms > head_ms + 25:
        log(f"  ! small GETs take {get_ms:.0f} ms vs {head_ms:.0f} ms for HEAD: the server delays "
            f"small responses (Nagle/delayed ACK; for RGW beast set tcp_nodelay=1). "
            f"Every small read/write pays this.")


def measure_floors(ctx: Ctx, steps: list[Step], limits: dict) -> None:
    """Each step's floor (bench/floors.py), through the same proxy as the filesystems."""
    big, many, nw = ctx.scale["big"], ctx.scale["many"], ctx.scale["nwrite"]
    bn = size_name(big)
    raw = floors.RawS3(ctx.endpoint, ctx.args.region, os.environ["AWS_ACCESS_KEY_ID"],
                       os.environ["AWS_SECRET_ACCESS_KEY"], ctx.bucket)
    many_keys = [f"many/f{i:05d}.dat" for i in range(many)]
    prefix, expect = ctx.prepared["cpout"]
    parts = floors.measure(raw, many_keys, prefix, [prefix + k for k in sorted(expect)],
                           FLOOR_MV_PREFIX, nw)
    ctx.floor_parts = parts
    names = {st.role: st.name for st in steps if st.role}
    ctx.floors = floors.step_floors(parts, names, nw, many, RANDOM_READS,
                                    limits.get(f"boto3_get_{bn}", {}).get("seconds"),
                                    limits.get(f"boto3_put_{bn}", {}).get("seconds"))
