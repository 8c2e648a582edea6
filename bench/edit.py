#!/usr/bin/env python3
"""Edit of a large object through each filesystem: append APPEND bytes to an object of
SIZE bytes, and (workloads +patch) patch 4 KiB in its middle (one open, pwrites, close), with every
request going through a counting proxy (tests/support/faultproxy.py) - so the bytes each
filesystem sends and receives are counted the same way.  Prints, per filesystem: seconds
from open to the end of close(), bytes up (requests and their bodies) and down
(answers), requests, and whether the bucket then holds the expected bytes (MD5).

    python3 -m bench.edit --start-rgw                 # a private RGW, 1 GiB object
    python3 -m bench.edit --endpoint http://127.0.0.1:7480 --size 256M --fs s3fuse,s3fs

Credentials for --endpoint: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.  Root (FUSE).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from .common import REPO

MiB = 1 << 20
S3FS_OPTS = ""
S3FUSE_OPTS = ""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required", max_pool_connections=16))


def is_mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def unmount(path: str):
    for cmd in (["fusermount3", "-u", path], ["umount", "-l", path]):
        if not is_mounted(path):
            return
        subprocess.run(cmd, capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while is_mounted(path) and time.monotonic() < deadline:
            time.sleep(0.1)


def mount(fs: str, bucket: str, mnt: str, work: str, endpoint: str) -> list:
    os.makedirs(mnt, exist_ok=True)
    cache = os.path.join(work, f"{fs}-cache")
    if fs == "s3fuse":
        cmd = [sys.executable, str(REPO / "mount.s3fuse"), bucket, mnt, "-o",
               f"endpoint={endpoint},cache_dir={cache},log_file={cache}.log,log_level=info"
               + (f",{S3FUSE_OPTS}" if S3FUSE_OPTS else "")]
    else:
        passwd = os.path.join(work, "s3fs.passwd")
        with open(passwd, "w") as f:
            f.write(f"{os.environ['AWS_ACCESS_KEY_ID']}:{os.environ['AWS_SECRET_ACCESS_KEY']}\n")
        os.chmod(passwd, 0o600)
        cmd = ["s3fs", bucket, mnt, "-o", f"url={endpoint},use_path_request_style,endpoint=us-east-1,"
               f"passwd_file={passwd},use_cache={cache}" + (f",{S3FS_OPTS}" if S3FS_OPTS else "")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 20
    while not is_mounted(mnt) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not is_mounted(mnt):
        raise RuntimeError(f"{fs} did not mount")
    return cmd


EDIT = r"""
import os, sys
path, work, patch_at, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_WRONLY)
if patch_at >= 0:
    os.pwrite(fd, open(os.path.join(work, "patch"), "rb").read(), patch_at)
os.pwrite(fd, open(os.path.join(work, "tail"), "rb").read(), size)
try:
    os.close(fd)
except OSError as exc:
    print(os.strerror(exc.errno))
"""


def kill_daemons(mnt: str):
    out = subprocess.run(["pgrep", "-f", f" {mnt}"], capture_output=True, text=True).stdout.split()
    for pid in out:
        if int(pid) != os.getpid():
            subprocess.run(["kill", "-9", pid], capture_output=True)
    subprocess.run(["umount", "-l", mnt], capture_output=True)


def run_one(fs: str, s3, endpoint: str, src: str, size: int, append: int, work: str, patch_at,
            timeout: float = 300.0) -> dict:
    bucket = "edit-" + uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=bucket)
    from tests.support.faultproxy import FaultProxy   # imported here: --help works without tests/
    s3.upload_file(src, bucket, "big.bin", Config=TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=8))
    proxy = FaultProxy(endpoint, lifetime=3600)
    mnt = os.path.join(work, f"{fs}-mnt")
    try:
        mount(fs, bucket, mnt, work, proxy.endpoint)
        os.stat(os.path.join(mnt, "big.bin"))
        before = dict(proxy.stats)
        patch, tail = os.urandom(4096), os.urandom(append)
        middle = size if patch_at is None else patch_at    # no patch: nothing changes below size
        with open(os.path.join(work, "patch"), "wb") as f:
            f.write(patch)
        with open(os.path.join(work, "tail"), "wb") as f:
            f.write(tail)
        # the edit runs in a child with a deadline: a filesystem that hangs cannot hang the run
        t0 = time.monotonic()
        try:
            child = subprocess.run([sys.executable, "-c", EDIT, os.path.join(mnt, "big.bin"), work,
                                    str(-1 if patch_at is None else patch_at), str(size)],
                                   capture_output=True, text=True, timeout=timeout)
            error = child.stdout.strip() or child.stderr.strip()[-200:] or None
        except subprocess.TimeoutExpired:
            error = f"hung (> {timeout:.0f} s)"
            kill_daemons(mnt)
        seconds = time.monotonic() - t0
        unmount(mnt)          # s3fs may still be sending: count until the daemon is gone
        after = dict(proxy.stats)
        h = hashlib.md5()
        with open(src, "rb") as f:
            pos = 0
            while True:
                chunk = f.read(64 * MiB)
                if not chunk:
                    break
                if pos <= middle < pos + len(chunk):
                    chunk = bytearray(chunk)
                    chunk[middle - pos:middle - pos + 4096] = patch
                    chunk = bytes(chunk)
                h.update(chunk)
                pos += len(chunk)
        h.update(tail)
        body = s3.get_object(Bucket=bucket, Key="big.bin")["Body"]
        got = hashlib.md5()
        for chunk in iter(lambda: body.read(8 * MiB), b""):
            got.update(chunk)
        return {"fs": fs, "close_seconds": round(seconds, 3), "close_error": error,
                "bytes_up": after["bytes_up"] - before["bytes_up"],
                "bytes_down": after["bytes_down"] - before["bytes_down"],
                "requests": after["requests"] - before["requests"],
                "md5_ok": got.hexdigest() == h.hexdigest()}
    finally:
        unmount(mnt)
        proxy.close()
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for o in page.get("Contents", ()):
                    s3.delete_object(Bucket=bucket, Key=o["Key"])
            s3.delete_bucket(Bucket=bucket)
        except Exception as exc:          # pragma: no cover - report and go on
            print(f"cleanup of {bucket}: {exc}", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.edit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint")
    ap.add_argument("--start-rgw", action="store_true")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--append", default="1M")
    ap.add_argument("--fs", default="s3fuse,s3fs")
    ap.add_argument("--json")
    ap.add_argument("--workloads", default="append,append+patch,append+aligned-patch",
                    help="append: APPEND bytes at the end; +patch: and 4 KiB at SIZE/2+12345 (or SIZE/2)")
    ap.add_argument("--s3fs-opts", default="", help="extra -o options for s3fs")
    ap.add_argument("--s3fuse-opts", default="", help="extra -o options for s3fuse")
    args = ap.parse_args(argv)
    global S3FS_OPTS, S3FUSE_OPTS
    S3FS_OPTS, S3FUSE_OPTS = args.s3fs_opts, args.s3fuse_opts
    size, append = parse_size(args.size), parse_size(args.append)
    work = tempfile.mkdtemp(prefix="edit-bench-")
    stop = None
    try:
        endpoint = args.endpoint
        if args.start_rgw:
            from tests.support.servers.rgw import RGWServer
            server = RGWServer().start()
            stop, endpoint = server.stop, server.endpoint
            os.environ.update(server.env())
        if not endpoint:
            ap.error("--endpoint or --start-rgw")
        s3 = client(endpoint)
        src = os.path.join(work, "big.bin")
        with open(src, "wb") as f:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
            f.write(os.urandom(size % MiB))
        rows = []
        workloads = {"append": None, "append+patch": size // 2 + 12345, "append+aligned-patch": size // 2}
        for name in args.workloads.split(","):
            for fs in args.fs.split(","):
                if fs == "s3fs" and not shutil.which("s3fs"):
                    print("s3fs not installed: skipped")
                    continue
                r = run_one(fs, s3, endpoint, src, size, append, work, workloads[name])
                r["workload"] = name
                rows.append(r)
                print(f"{name:21} {fs:7} close {r['close_seconds']:7.2f} s {r['close_error'] or 'ok':>6}  "
                      f"up {r['bytes_up'] / MiB:8.1f} MiB  down {r['bytes_down'] / MiB:8.1f} MiB  "
                      f"requests {r['requests']:5d}  bucket {'as expected' if r['md5_ok'] else 'NOT as expected'}",
                      flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"size": size, "append": append, "rows": rows}, f, indent=1)
    finally:
        if stop is not None:
            stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
