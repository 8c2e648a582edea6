"""Peer benchmark: s3fuse vs s3fs-fuse vs rclone mount, against one S3 endpoint.

One run: create a fresh bucket, upload the dataset with boto3, measure the raw
boto3 "physical limit" rows, then for each filesystem mount the bucket, run the
steps (each on a fresh mount + fresh cache dir + dropped page cache unless it is
a "warm" step), unmount, and print a table (seconds per fs, ratio s3fuse/peer).

See bench/README.md.  Run `python3 -m bench --help`.
"""

from __future__ import annotations

import argparse
import os
import signal
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from .common import ALL_FS, REPO, SCALES, fmt_limit, log
from .context import Ctx
from .dataset import build_dataset
from .limits import measure_floors, measure_limits
from .peers import FS_CLASSES
from .report import print_table, write_json
from .run import close_mount_force, run_fs
from .s3 import S3
from .servers import ProxyProc, start_moto, start_rgw
from .steps import make_steps


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--start-rgw", action="store_true",
                     help="run 'bash tests/support/servers/rgw.sh start', use its exports, stop it at the end")
    src.add_argument("--start-moto", action="store_true", help="start a moto_server on a free port")
    ap.add_argument("--rgw-script", default=str(REPO / "tests" / "support" / "servers" / "rgw.sh"),
                    help="script for --start-rgw (start [PORT] / stop, S3FUSE_RGW_DIR honoured)")
    ap.add_argument("--rgw-attempts", type=int, default=3, help="tries of 'rgw.sh start'")
    ap.add_argument("--endpoint", help="S3 endpoint URL (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    ap.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    ap.add_argument("--fs", default=",".join(ALL_FS), help="comma list out of " + ",".join(ALL_FS))
    ap.add_argument("--steps", help="comma list of step names (or name prefixes) to run; default all")
    ap.add_argument("--list-steps", action="store_true")
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                    help="add MS ms per request (and one more per new connection) with "
                         "bench/latency_proxy.py between every client and the server; 0: straight")
    ap.add_argument("--via-proxy", action="store_true", help="use the proxy even with --rtt 0")
    ap.add_argument("--json", help="write results as JSON to this file")
    ap.add_argument("--workdir", help="parent dir for mounts, caches and local data (default: $TMPDIR)")
    ap.add_argument("--bucket", help="bucket name to create (default: s3fuse-bench-<time>-<rand>)")
    ap.add_argument("--keep-bucket", action="store_true", help="do not delete the bucket at the end")
    ap.add_argument("--keep-workdir", action="store_true", help="keep logs/local data at the end")
    ap.add_argument("--no-drop-caches", action="store_true", help="do not drop the kernel page cache")
    ap.add_argument("--mount-timeout", type=float, default=60.0)
    ap.add_argument("--step-timeout", type=float, default=1800.0)
    ap.add_argument("--poll-interval", type=float, default=0.1,
                    help="seconds between bucket polls in write steps")
    ap.add_argument("--s3fuse-bin", help="default: <repo>/mount.s3fuse")
    ap.add_argument("--s3fuse-opts", help="extra comma-separated -o options for s3fuse")
    ap.add_argument("--s3fs-opts", help="extra comma-separated -o options for s3fs")
    ap.add_argument("--rclone-bin", help="default: rclone on PATH or next to the python executable")
    ap.add_argument("--rclone-opts", help="extra rclone mount arguments (shell-quoted)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    fss = [f.strip() for f in args.fs.split(",") if f.strip()]
    for f in fss:
        if f not in FS_CLASSES:
            raise SystemExit(f"unknown fs {f!r}; choose from {sorted(FS_CLASSES)}")
    scale = SCALES[args.scale]
    steps = make_steps(scale)
    if args.list_steps:
        for s in steps:
            log(f"{s.name:28s} {s.kind:5s} {'fresh mount' if s.fresh_mount else 'same mount':11s} {s.doc}")
        return 0
    if args.steps:
        want = [w.strip() for w in args.steps.split(",") if w.strip()]
        steps = [s for s in steps if any(s.name == w or s.name.startswith(w) for w in want)]
        if not steps:
            raise SystemExit("--steps matched nothing; see --list-steps")

    # Ctrl-C / SIGTERM / SIGHUP all unwind through the finally blocks below
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    stoppers: list[Callable[[], None]] = []
    ctx: Optional[Ctx] = None
    results: dict = {}
    limits: dict = {}
    rc = 0
    workdir = Path(tempfile.mkdtemp(prefix="s3fuse-bench-", dir=args.workdir))
    t_run = time.perf_counter()
    try:
        server_kind = "endpoint"
        if not (args.endpoint or args.start_moto):
            args.start_rgw = True          # the default: a private Ceph RGW (tests/support/servers/rgw.sh)
        if args.start_rgw:
            stoppers.append(start_rgw(args, workdir))
            server_kind = "rgw"
        elif args.start_moto:
            stoppers.append(start_moto(args, workdir))
            server_kind = "moto"
        if not args.endpoint:
            raise SystemExit("need --endpoint URL, --start-rgw or --start-moto")
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if not os.environ.get(k):
                raise SystemExit(f"{k} is not set")
        if server_kind == "endpoint":
            server_kind = "moto" if "moto" in args.endpoint else "endpoint"

        proxy = None
        if args.rtt > 0 or args.via_proxy:
            proxy = ProxyProc(args.endpoint, args.rtt, workdir)
            stoppers.append(proxy.stop)      # stopped after the mounts, before the server
        endpoint = proxy.endpoint if proxy else args.endpoint
        ctx = Ctx(args=args, endpoint=endpoint, direct_endpoint=args.endpoint, server_kind=server_kind,
                  workdir=workdir, scale=scale, s3=S3(args.endpoint, args.region),
                  s3p=S3(endpoint, args.region) if proxy else None, proxy=proxy)
        ctx.s3p = ctx.s3p or ctx.s3
        ctx.bucket = args.bucket or f"s3fuse-bench-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
        log(f"s3fuse peer benchmark: endpoint {ctx.endpoint}"
            + (f" (+{args.rtt:g} ms RTT via proxy to {args.endpoint})" if proxy else "")
            + f", bucket {ctx.bucket}, scale {args.scale}, fs {','.join(fss)}, workdir {workdir}")
        ctx.s3.c.create_bucket(Bucket=ctx.bucket)
        t0 = time.perf_counter()
        build_dataset(ctx, limits)
        log(f"- dataset uploaded in {time.perf_counter() - t0:.1f}s; measuring raw boto3 limits")
        measure_limits(ctx, limits)
        for k, v in limits.items():
            log(f"  {k:28s} {fmt_limit(v)}")
        t0 = time.perf_counter()
        try:
            measure_floors(ctx, steps, limits)
            log(f"- floors measured in {time.perf_counter() - t0:.1f}s: "
                + ", ".join(f"{k} {v:.3g}" for k, v in ctx.floor_parts.items()))
        except Exception as e:   # e.g. a server that does not pipeline: the run goes on
            log(f"  ! floors not measured: {type(e).__name__}: {e}")

        for f in fss:
            log(f"== {f}")
            results[f] = run_fs(ctx, FS_CLASSES[f](ctx), steps)
        print_table(ctx, steps, fss, results, limits)
    except KeyboardInterrupt as e:
        log(f"\ninterrupted ({e or 'SIGINT'}); cleaning up")
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        proxy_stats = None
        if ctx:
            close_mount_force(ctx)
            proxy_stats = ctx.proxy.stats() if ctx.proxy else None
            left = [str(m.mnt) for m in ctx.active_mounts]
            if left:
                log(f"! still mounted: {left}")
                rc = rc or 2
            if ctx.bucket and not args.keep_bucket:
                try:
                    ctx.s3.delete_bucket(ctx.bucket)
                except Exception as e:
                    log(f"! could not delete bucket {ctx.bucket}: {e}")
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception as e:
                log(f"! stopping server: {e}")
        if ctx and args.json:
            write_json(args.json, ctx, fss, results, limits, proxy_stats, interrupted=rc == 130,
                       wall_seconds=time.perf_counter() - t_run)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"- kept {workdir}")
    return rc
