"""The floor row of ``python3 -m bench.fio``: each fio job's requests straight to the server
(through the same latency proxy as the mounts), no FUSE, with the lean client of
bench/floors.py (hand-signed requests on keep-alive connections, one per thread):

- read jobs: ``numjobs`` threads, each a ranged GET of ``bs`` at a time (sequential from
  offset 0 and wrapping, or at random bs-aligned offsets) for the job's runtime: MiB/s;
- seq_write: PutObject of 8 MiB bodies in series on one connection for the runtime: MiB/s;
- ttfb_small: the mean of 10 GETs of byte 0 of the small file on one connection: ms;
- create_files: create_jobs threads x create_files empty PutObjects: files/s.

A filesystem can beat a floor (read-ahead asks for more than bs at a time, write-back
returns before the upload); one that does the same requests one after another stays above."""

from __future__ import annotations

import concurrent.futures as cf
import random
import time

from .fiojobs import MiB, Job
from .floors import RawS3

WRITE_PART = 8 * MiB


def _bs(job: Job) -> int:
    t = job.bs.lower()
    mult = {"k": 1 << 10, "m": MiB}.get(t[-1], 1)
    return int(t.rstrip("km")) * mult


def _reads(raw: RawS3, key: str, size: int, job: Job, runtime: float) -> dict:
    bs = _bs(job)
    nblocks = max(1, size // bs)
    stop_at = time.perf_counter() + runtime
    counts = [0] * job.numjobs
    t0 = time.perf_counter()

    def one(i: int):
        conn = raw.connect()
        rng = random.Random(i)
        blk = 0
        try:
            while time.perf_counter() < stop_at:
                b = rng.randrange(nblocks) if job.rw == "randread" else blk % nblocks
                blk += 1
                off = b * bs
                end = min(off + bs, size) - 1
                _, data = raw.request(conn, "GET", key, headers={"range": f"bytes={off}-{end}"}, ok=(206, 200))
                if len(data) != end - off + 1:
                    raise RuntimeError(f"short ranged GET at {off}: {len(data)} bytes")
                counts[i] += len(data)
        finally:
            conn.close()

    with cf.ThreadPoolExecutor(job.numjobs) as ex:
        list(ex.map(one, range(job.numjobs)))
    dt = time.perf_counter() - t0
    return {"value": sum(counts) / MiB / dt, "doc": f"{job.numjobs} thread(s) x ranged GETs of {job.bs}"
            + (" at random offsets" if job.rw == "randread" else " in order")}


def _writes(raw: RawS3, prefix: str, runtime: float) -> dict:
    body = random.Random(1).randbytes(WRITE_PART)
    conn = raw.connect()
    keys, t0 = [], time.perf_counter()
    try:
        while time.perf_counter() - t0 < runtime:
            k = f"{prefix}w{len(keys):04d}"
            raw.request(conn, "PUT", k, body=body)
            keys.append(k)
        dt = time.perf_counter() - t0
        raw.delete_many(conn, keys)
    finally:
        conn.close()
    return {"value": len(keys) * WRITE_PART / MiB / dt, "doc": "PutObject of 8 MiB in series, one connection"}


def _ttfb(raw: RawS3, key: str) -> dict:
    conn = raw.connect()
    ts = []
    try:
        for _ in range(10):
            t0 = time.perf_counter()
            raw.request(conn, "GET", key, headers={"range": "bytes=0-0"}, ok=(206, 200))
            ts.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return {"value": sum(ts) / len(ts) * 1000, "max_ms": max(ts) * 1000,
            "doc": "10 GETs of byte 0 on one keep-alive connection (mean)"}


def _creates(raw: RawS3, prefix: str, threads: int, per: int) -> dict:
    keys = [[f"{prefix}t{i}.0.{j}" for j in range(per)] for i in range(threads)]
    t0 = time.perf_counter()

    def one(ks: list[str]):
        conn = raw.connect()
        try:
            for k in ks:
                raw.request(conn, "PUT", k, body=b"")
        finally:
            conn.close()

    with cf.ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, keys))
    dt = time.perf_counter() - t0
    conn = raw.connect()
    try:
        raw.delete_many(conn, [k for ks in keys for k in ks])
    finally:
        conn.close()
    return {"value": threads * per / dt, "doc": f"{threads} threads x {per} empty PutObjects"}


def job_floor(raw: RawS3, job: Job, scale: dict, keys: dict, prefix: str) -> dict:
    """The floor of one job; ``keys``: {"big": key, "small": key}, ``prefix``: scratch keys."""
    if job.rw == "filecreate":
        return _creates(raw, prefix, scale["create_jobs"], scale["create_files"])
    if job.rw == "write":
        return _writes(raw, prefix, scale["runtime"])
    if job.metric == "ms":
        return _ttfb(raw, keys[job.file])
    return _reads(raw, keys[job.file], scale[job.file], job, scale["runtime"])
