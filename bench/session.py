"""What the suites beside ``python3 -m bench`` share (bench.fio, bench.bigdir): the flags of
the server, the filesystems and their mounts, and one run's life: start the server (a
private RGW or moto), create the bucket, switch the latency proxy per RTT, and on the way
out (also on Ctrl-C / SIGTERM) unmount everything, delete the bucket, stop what was started."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from .common import REPO, SCALES, log
from .context import Ctx
from .peers import FS_CLASSES, Fs, Mount, do_mount, do_unmount
from .run import close_mount_force
from .s3 import S3
from .servers import ProxyProc, start_moto, start_rgw
from .system import drop_caches, pids_for_mountpoint


def add_common_args(ap: argparse.ArgumentParser, default_fs: str) -> None:
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--start-rgw", action="store_true",
                     help="a private Ceph RGW (tests/support/servers/rgw.sh), stopped at the end (the default)")
    src.add_argument("--start-moto", action="store_true", help="start a moto_server on a free port")
    ap.add_argument("--rgw-script", default=str(REPO / "tests" / "support" / "servers" / "rgw.sh"))
    ap.add_argument("--rgw-attempts", type=int, default=3)
    ap.add_argument("--endpoint", help="S3 endpoint URL (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    ap.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    ap.add_argument("--fs", default=default_fs, help="comma list out of " + ",".join(FS_CLASSES))
    ap.add_argument("--rtt", default="0", metavar="MS[,MS...]",
                    help="added ms per request through bench/latency_proxy.py, one pass per value (e.g. 0,20)")
    ap.add_argument("--via-proxy", action="store_true", help="use the proxy even at 0 ms")
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--workdir", help="parent dir for mounts, caches and local data (default: $TMPDIR)")
    ap.add_argument("--bucket", help="bucket name (default: s3fuse-<suite>-<time>-<rand>)")
    ap.add_argument("--keep-bucket", action="store_true", help="do not delete the bucket at the end")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--no-drop-caches", action="store_true", help="do not drop the kernel page cache")
    ap.add_argument("--mount-timeout", type=float, default=60.0)
    ap.add_argument("--step-timeout", type=float, default=900.0)
    ap.add_argument("--s3fuse-bin", help="default: <repo>/mount.s3fuse")
    ap.add_argument("--s3fuse-opts", help="extra comma-separated -o options for s3fuse")
    ap.add_argument("--s3fs-opts", help="extra comma-separated -o options for s3fs")
    ap.add_argument("--rclone-bin", help="default: rclone on PATH or next to the python executable")
    ap.add_argument("--rclone-opts", help="extra rclone mount arguments (shell-quoted)")


def parse_list(text: str, conv=str) -> list:
    return [conv(x.strip()) for x in text.split(",") if x.strip()]


class Session:
    """``with Session(args, "fio") as s:`` - s.ctx is the run's state (bench/context.py),
    s.set_rtt(ms) routes the mounts (and s.endpoint) through the latency proxy."""

    def __init__(self, args: argparse.Namespace, suite: str):
        self.args, self.suite = args, suite
        self.fss = parse_list(args.fs)
        for f in self.fss:
            if f not in FS_CLASSES:
                raise SystemExit(f"unknown fs {f!r}; choose from {sorted(FS_CLASSES)}")
        self.rtts = parse_list(args.rtt, float)
        self.stoppers: list[Callable[[], None]] = []
        self.proxies: dict[float, ProxyProc] = {}
        self.ctx: Optional[Ctx] = None
        self.workdir = Path()
        self.rtt = 0.0
        self.interrupted = False
        self.created = False

    def __enter__(self) -> "Session":
        def on_signal(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGHUP, on_signal)
        args = self.args
        self.workdir = Path(tempfile.mkdtemp(prefix=f"s3fuse-{self.suite}-", dir=args.workdir))
        try:
            kind = "endpoint"
            if not (args.endpoint or args.start_moto):
                args.start_rgw = True
            if args.start_rgw:
                self.stoppers.append(start_rgw(args, self.workdir))
                kind = "rgw"
            elif args.start_moto:
                self.stoppers.append(start_moto(args, self.workdir))
                kind = "moto"
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                if not os.environ.get(k):
                    raise SystemExit(f"{k} is not set")
            if kind == "endpoint" and "moto" in args.endpoint:
                kind = "moto"
            s3 = S3(args.endpoint, args.region)
            self.ctx = Ctx(args=args, endpoint=args.endpoint, direct_endpoint=args.endpoint, server_kind=kind,
                           workdir=self.workdir, scale=SCALES[args.scale], s3=s3, s3p=s3)
            self.ctx.bucket = args.bucket or f"s3fuse-{self.suite}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
            try:
                s3.c.create_bucket(Bucket=self.ctx.bucket)
                self.created = True
            except s3.c.exceptions.BucketAlreadyOwnedByYou:
                self.created = False       # --bucket of an earlier run: its objects are reused
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def endpoint(self) -> str:
        return self.ctx.endpoint

    def set_rtt(self, rtt: float) -> None:
        ctx, args = self.ctx, self.args
        close_mount_force(ctx)
        if rtt > 0 or args.via_proxy:
            if rtt not in self.proxies:
                self.proxies[rtt] = ProxyProc(args.endpoint, rtt, self.workdir)
            ctx.proxy = self.proxies[rtt]
            ctx.endpoint = ctx.proxy.endpoint
        else:
            ctx.proxy, ctx.endpoint = None, args.endpoint
        (self.workdir / "rclone.conf").unlink(missing_ok=True)   # it names the endpoint
        self.rtt = rtt

    def fs(self, name: str) -> Fs:
        return FS_CLASSES[name](self.ctx)

    def fresh_mount(self, fs: Fs) -> Mount:
        """A fresh mountpoint and an empty cache dir, after the page cache is dropped."""
        drop_caches(not self.args.no_drop_caches)
        m = do_mount(self.ctx, fs)
        # a daemonizing mount command may still be alive beside its daemon: let it exit, so
        # that m.status() (a sum over m.pids) is the daemon's alone
        deadline = time.monotonic() + 10
        while m.proc.poll() is None and len(pids_for_mountpoint(m.mnt)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        m.pids = pids_for_mountpoint(m.mnt) or m.pids
        return m

    def unmount(self, m: Mount) -> dict:
        """Unmount; returns the daemon's last /proc figures (peak RSS in MiB, CPU seconds)."""
        do_unmount(self.ctx, m)
        st = m.info.get("final_status", {})
        return {"peak_rss_mib": st["VmHWM"] / 1024 if "VmHWM" in st else None,
                "rss_mib": st["VmRSS"] / 1024 if "VmRSS" in st else None,
                "cpu_s": st.get("cpu_s"), "log": str(m.logfile)}

    def __exit__(self, et, ev, tb) -> bool:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        ctx = self.ctx
        self.interrupted = et is KeyboardInterrupt
        if self.interrupted:
            log(f"\ninterrupted ({ev or 'SIGINT'}); cleaning up")
        if ctx:
            close_mount_force(ctx)
            left = [str(m.mnt) for m in ctx.active_mounts]
            if left:
                log(f"! still mounted: {left}")
            if ctx.bucket and not self.args.keep_bucket:
                try:
                    ctx.s3.delete_bucket(ctx.bucket)
                except Exception as e:
                    log(f"! could not delete bucket {ctx.bucket}: {e}")
        for p in self.proxies.values():
            p.stop()
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as e:
                log(f"! stopping server: {e}")
        if not self.args.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"- kept {self.workdir}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return et is KeyboardInterrupt
