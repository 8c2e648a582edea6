"""The host side of the benchmark: commands with a deadline, this package's modules
as processes, the kernel's mount table and page cache, /proc, and ports."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, StepFailed, log


def short_err(text: str, nlines: int = 2) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    out = " | ".join(l[:300] for l in lines[:nlines])
    if len(lines) > nlines:
        out += f" (+{len(lines) - nlines} more lines)"
    return out


def run_cmd(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"timed out after {timeout:.0f}s: {shlex.join(cmd)}")
    if p.returncode != 0:
        raise StepFailed(f"{cmd[0]} rc={p.returncode}: {short_err(p.stderr)}")
    return p


def python_module(module: str, *args: str) -> tuple[list[str], dict]:
    """argv and environment of ``python3 -m MODULE ARGS`` with this repository first on
    sys.path, from any working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return [sys.executable, "-m", module, *args], env


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
