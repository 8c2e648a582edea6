"""``rm -rf`` of N small files on s3fuse, plain and ``-o writeback``, through the latency
proxy (issue #24 item 4: deletes in writeback batched into DeleteObjects).

    python3 -m bench.deletes --endpoint http://127.0.0.1:7480 --rtt 20 --files 500
    python3 -m bench.deletes ... --s3fuse-bin /tmp/old/mount.s3fuse   # another checkout

For each mode: PUT N objects of 1 KiB under a fresh prefix (boto3, straight), mount
(through the proxy), ``ls`` the directory once (a warm listing, as after ``find``), time
``rm -rf`` (the command) and the moment the prefix lists empty (boto3, straight), the
DeleteObject(s) requests the daemon counted, unmount.  Credentials from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.  Not a test: prints figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .latency_proxy import LatencyProxy
from .s3 import S3

REPO = Path(__file__).resolve().parent.parent


def _requests(mnt: str, repo: Path) -> dict:
    """The daemon's request counts (its status file, as ``s3fuse status --json``)."""
    out = subprocess.run([sys.executable, "-m", "s3fuse", "status", mnt, "--json"], capture_output=True,
                         text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(repo)))
    try:
        return json.loads(out.stdout).get("requests", {})
    except ValueError:
        return {}


def one(args, s3: S3, proxy: LatencyProxy, mode: str, work: Path) -> dict:
    prefix = f"rm-{mode}-{uuid.uuid4().hex[:6]}/"
    s3.put_many(args.bucket, [(f"{prefix}f{i:04d}", b"x" * 1024) for i in range(args.files)])
    mnt, cache = work / f"mnt-{mode}", work / f"cache-{mode}"
    mnt.mkdir(exist_ok=True)
    opts = f"endpoint={proxy.endpoint},cache_dir={cache},log_file={work}/{mode}.log"
    if mode == "writeback":
        opts += ",writeback"
    binary = Path(args.s3fuse_bin)
    env = dict(os.environ, PYTHONPATH=str(binary.parent))
    subprocess.run([sys.executable, str(binary), args.bucket, str(mnt), "-o", opts], check=True, env=env,
                   timeout=60)
    try:
        os.listdir(mnt / prefix.rstrip("/"))
        before = _requests(str(mnt), binary.parent)
        t0 = time.perf_counter()
        subprocess.run(["rm", "-rf", str(mnt / prefix.rstrip("/"))], check=True, timeout=600)
        t_cmd = time.perf_counter() - t0
        while s3.c.list_objects_v2(Bucket=args.bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"):
            time.sleep(0.05)
        t_gone = time.perf_counter() - t0
        time.sleep(1.2)                      # the status file is rewritten every 0.5 s
        after = _requests(str(mnt), binary.parent)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], timeout=120)
    sent = {op: after.get(op, 0) - before.get(op, 0) for op in sorted(set(after) | set(before))}
    sent = {op: n for op, n in sent.items() if n or op in ("delete_object", "delete_objects")}
    return {"mode": mode, "files": args.files, "rtt_ms": args.rtt, "rm_seconds": round(t_cmd, 3),
            "until_gone_seconds": round(t_gone, 3), **sent}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--rtt", type=float, default=20.0, help="ms per request (latency proxy)")
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--modes", default="plain,writeback")
    ap.add_argument("--s3fuse-bin", default=str(REPO / "mount.s3fuse"))
    ap.add_argument("--bucket", default=f"bench-rm-{uuid.uuid4().hex[:8]}")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    s3 = S3(args.endpoint, args.region)
    s3.c.create_bucket(Bucket=args.bucket)
    rows = []
    with LatencyProxy(args.endpoint, rtt=args.rtt / 1000.0) as proxy, \
            tempfile.TemporaryDirectory(prefix="bench-rm-") as work:
        for mode in args.modes.split(","):
            row = one(args, s3, proxy, mode, Path(work))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
