"""The I/O against the mountpoint runs in a child process (``python3 -m bench.child OP
...``), so that a hung FUSE daemon cannot wedge the harness: the child is SIGKILLed on
timeout (a task blocked in a FUSE request is killable).  It prints one JSON line."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time

from .common import MiB, StepFailed
from .system import python_module


def child_main(argv: list[str]) -> None:
    op = argv[0]
    if op == "read":
        path, size = argv[1], int(argv[2])
        buf = bytearray(size + MiB)  # pre-touched (zero-filled) before timing
        mv = memoryview(buf)
        t0 = time.perf_counter()
        n = 0
        with open(path, "rb", buffering=0) as f:
            while True:
                r = f.readinto(mv[n:n + MiB])
                if not r:
                    break
                n += r
                if n > size:
                    break
        dt = time.perf_counter() - t0
        md5 = hashlib.md5(mv[:n]).hexdigest()
        print(json.dumps({"seconds": dt, "bytes": n, "md5": md5}))
    elif op == "pread":
        path, local, seed, count, rsize = argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5])
        fsize = os.path.getsize(local)
        rng = random.Random(seed)
        offs = [rng.randrange(0, fsize - rsize) for _ in range(count)]
        got = []
        t0 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in offs:
                got.append(os.pread(fd, rsize, off))
        finally:
            os.close(fd)
        dt = time.perf_counter() - t0
        bad = 0
        with open(local, "rb") as f:
            for off, data in zip(offs, got):
                f.seek(off)
                if f.read(rsize) != data:
                    bad += 1
        print(json.dumps({"seconds": dt, "reads": count, "mismatches": bad}))
    else:
        raise SystemExit(f"unknown child op {op}")


def run_child(args: list[str], timeout: float) -> dict:
    cmd, env = python_module("bench.child", *args)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"timed out after {timeout:.0f}s: {' '.join(args[:2])}")
    if p.returncode != 0:
        raise StepFailed(f"{args[0]} {args[1]} failed rc={p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1][:300]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    child_main(sys.argv[1:])
