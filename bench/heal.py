#!/usr/bin/env python3
"""Time from SIGKILL of the process serving a mount to a serving mountpoint (self-healing
mounts, s3fuse/app/supervisor.py): ``--runs`` times, a fresh healing mount of a bucket
with a few objects is made, its serving process SIGKILLed, and the time until the
mountpoint is a live mount again (a listing shows the file, and a stat of it gives
another device than the directory's: the dead mount answers ENOTCONN) is taken; prints each figure and the median.  Each run is a fresh mount, so no restart waits
for the backoff of an earlier death.

    python3 -m bench.heal                     # a private moto server, 10 runs
    python3 -m bench.heal --runs 20

Root (FUSE).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.mounts import Mount, make_boto, unmount  # noqa: E402
from tests.support.probes import pid_alive  # noqa: E402
from tests.support.servers.moto import MotoServer  # noqa: E402


def one_run(server, bucket: str, root: str, n: int) -> float:
    m = Mount(server, bucket, root, options=["heal"], name=f"m{n}")
    m.mount()
    try:
        probe = m.p("probe.txt")
        os.stat(probe)
        bare = os.stat(root).st_dev
        pid = m.daemon_pid()
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        while pid_alive(pid):          # until its death (a zombie): the connection is aborted then
            time.sleep(0.001)
        while True:
            try:     # a listing reaches the daemon; a stat may come from the kernel's cache
                if "probe.txt" in os.listdir(m.path) and os.stat(probe).st_dev != bare:
                    return time.monotonic() - t0
            except OSError:
                pass
            if time.monotonic() - t0 > 60:
                raise RuntimeError(f"run {n}: not serving 60 s after the SIGKILL:\n{m.log()[-2000:]}")
            time.sleep(0.005)
    finally:
        unmount(m.path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)
    server = MotoServer().start()
    root = tempfile.mkdtemp(prefix="s3fuse-bench-heal-")
    try:
        s3 = make_boto(server)
        bucket = "heal-" + uuid.uuid4().hex[:10]
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="probe.txt", Body=b"probe")
        figures = []
        for n in range(args.runs):
            figures.append(one_run(server, bucket, root, n))
            print(f"run {n + 1}: {figures[-1]:.3f} s from SIGKILL to a serving mountpoint", flush=True)
        print(f"median of {len(figures)}: {statistics.median(figures):.3f} s "
              f"(min {min(figures):.3f}, max {max(figures):.3f})")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
