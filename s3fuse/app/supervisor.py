"""Self-healing mounts (``-o heal``, default on for a daemonized mount).

The daemonized process does not serve the mount itself: it forks the process that does
(``daemon.serve``) and waits for it.  When that process dies without a clean unmount (a
signal: SIGKILL, an OOM kill, SIGSEGV in native code; or a non-zero exit), the
supervisor logs one line with the cause and forks a new one with the same options and
cache_dir; the new one checks the bucket, builds the filesystem (journal recovery: the
uploads that close() had started are resumed), then detaches the dead connection (a
lazy unmount; its open files keep failing with ENOTCONN) and mounts on the same
mountpoint.  Deaths back off (0, 1, 2, 4 ... s) and more than ``heal_limit`` of them
within 60 s leave the mount down (the dead mount stays, so nothing writes into the bare
directory) with one line saying so.  A clean unmount (umount, fusermount3 -u, SIGTERM)
makes the serving process exit 0, and the supervisor exits with it.  SIGTERM, SIGINT and
SIGHUP sent to the supervisor are passed on to the serving process.

The supervisor is one thread that never talks to S3 and never holds /dev/fuse, so the
death of the serving process closes the last descriptor of the connection (the kernel
aborts it: every request on it fails at once).
"""
from __future__ import annotations

import collections
import logging
import os
import select
import signal
import subprocess
import time

from .. import logs
from ..config import MountConfig
from . import daemon

log = logging.getLogger("s3fuse")

WINDOW = 60.0             # deaths counted within this many seconds
MAX_DELAY = 30.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def backoff(deaths: int) -> float:
    """Seconds to wait before the restart after the ``deaths``-th death in the window."""
    return 0.0 if deaths <= 1 else min(MAX_DELAY, float(2 ** (deaths - 2)))


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}" + (" (core dumped)" if os.WCOREDUMP(status) else "")
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def top_mount(path: str):
    """(device "MAJOR:MINOR", fstype) of the mount on top at ``path``, or None."""
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 7 or _unescape(fields[4]) != path:
                    continue
                rest = fields[fields.index("-") + 1:] if "-" in fields else []
                found = (fields[2], rest[0] if rest else "")
    except OSError:
        pass
    return found


def detach(path: str, device: str):
    """Abort the dead connection (if fusectl is mounted: a connection still held by a
    stray descriptor) and lazily unmount it: open files on it keep failing, new lookups
    of ``path`` reach whatever is mounted next."""
    minor = device.split(":")[-1]
    try:
        with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
            f.write("1")
    except OSError:
        pass
    for cmd in (["fusermount3", "-u", "-z", path], ["fusermount", "-u", "-z", path], ["umount", "-l", path]):
        if top_mount(path) is None or top_mount(path)[0] != device:
            return
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
    if top_mount(path) and top_mount(path)[0] == device:
        log.error("could not detach the dead mount on %s", path)


class Supervisor:
    def __init__(self, cfg: MountConfig, ready_fd: int):
        self.cfg = cfg
        self.pid = os.getpid()             # status() runs in the serving process
        self.parent_fd = ready_fd          # the mount command waits on it until the first mount is live
        self.path = os.path.realpath(cfg.mountpoint)
        self.deaths = collections.deque()
        self.restarts: list = []           # {"time", "cause", "pid"}: what s3fuse status shows
        self.child = None
        self.device = None                 # of the live mount, to know it when it is dead
        self.stopping = False
        self._saved = {}

    # -- what the serving process is handed ---------------------------------------------------
    def status(self) -> dict:
        return {"supervisor": self.pid, "restarts": list(self.restarts), "heal_limit": self.cfg.heal_limit}

    def before_mount(self):
        """In the new serving process, right before it mounts: the dead mount goes."""
        top = top_mount(self.path)
        if self.restarts and self._ours(top):
            detach(self.path, top[0])

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        logs.setup(self.cfg.log_file, self.cfg.log_level, foreground=False, debug=self.cfg.debug)
        for sig in _FORWARDED:
            self._saved[sig] = signal.signal(sig, self._on_signal)
        pid, message = self._start()
        if message is not None:            # the first mount failed: its line went to the mount command
            return self._exit_code(pid)
        while True:
            _, status = os.waitpid(pid, 0)
            self.child = None
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                return 0                     # a clean unmount
            cause = describe_exit(status)
            pid = self._restart(pid, cause)
            if pid is None:
                return 0 if self.stopping or top_mount(self.path) is None else 1

    def _restart(self, dead: int, cause: str):
        """After a death: the next serving process (live or failed), or None (down for good)."""
        while True:
            if self.stopping:
                self._leave_dead_mount()
                return None
            top = top_mount(self.path)
            if top is not None and not self._ours(top):
                log.error("%s: mount daemon (pid %d) died (%s), and another filesystem is mounted there now: "
                          "not mounting again", self.path, dead, cause)
                return None
            now = time.monotonic()
            self.deaths.append(now)
            while self.deaths and self.deaths[0] < now - WINDOW:
                self.deaths.popleft()
            if len(self.deaths) > self.cfg.heal_limit:
                log.error("%s: mount daemon (pid %d) died (%s): %d deaths within %.0f s, more than heal_limit=%d; "
                          "the mount stays down (fusermount3 -u %s, then mount again)", self.path, dead, cause,
                          len(self.deaths), WINDOW, self.cfg.heal_limit, self.path)
                return None
            delay = backoff(len(self.deaths))
            self.restarts.append({"time": time.time(), "cause": cause, "pid": dead})
            log.error("%s: mount daemon (pid %d) died (%s); mounting again%s (restart %d)", self.path, dead, cause,
                      f" in {delay:.0f} s" if delay else "", len(self.restarts))
            died = time.monotonic()
            self._sleep(delay)
            if self.stopping:
                continue
            if self._ours(top) and top_mount(self.path) is None:
                log.warning("%s: the dead mount was unmounted meanwhile (umount, fusermount3 -u): not mounting "
                            "again", self.path)
                return None
            pid, message = self._start()
            if message is None:
                log.warning("%s: serving again (pid %d), %.2f s after the death", self.path, pid, time.monotonic() - died)
                return pid
            dead, cause = pid, f"{describe_exit(self._wait(pid))}: {message}"

    def _start(self):
        """Fork a serving process and wait until it is live.  Returns (pid, None) once it
        is, (pid, the line it failed with) if it exited first."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            code = 1
            try:
                for sig, handler in self._saved.items():
                    signal.signal(sig, signal.SIG_DFL if handler is None else handler)
                if self.parent_fd is not None:
                    os.close(self.parent_fd)
                code = daemon.serve(self.cfg, write_fd, supervised=self)
            except BaseException as exc:
                try:
                    os.write(write_fd, f"s3fuse: internal error: {exc.__class__.__name__}: {exc}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        self.child = pid
        os.close(write_fd)
        received = b""
        try:
            while not received.startswith(daemon.READY):
                ready, _, _ = select.select([read_fd], [], [], 0.5)
                if not ready:
                    continue
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                received += chunk
        finally:
            os.close(read_fd)
        live = received.startswith(daemon.READY)
        if self.parent_fd is not None:     # the first mount: what the mount command prints
            try:
                os.write(self.parent_fd, received or b"")
            except OSError:
                pass
            os.close(self.parent_fd)
            self.parent_fd = None
            if live:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.close(devnull)
        if not live:
            lines = received.decode(errors="replace").strip().splitlines()
            return pid, lines[-1] if lines else "it exited before the mount was live"
        top = top_mount(self.path)
        self.device = top[0] if top else None
        return pid, None

    def _wait(self, pid: int) -> int:
        _, status = os.waitpid(pid, 0)
        self.child = None
        return status

    def _exit_code(self, pid: int) -> int:
        status = self._wait(pid)
        return os.WEXITSTATUS(status) if os.WIFEXITED(status) and os.WEXITSTATUS(status) else 1

    def _ours(self, top) -> bool:
        """``top`` (top_mount) is the mount this supervisor's process made."""
        if top is None:
            return False
        return top[0] == self.device if self.device else top[1] == "fuse.s3fuse"

    def _sleep(self, seconds: float):
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def _leave_dead_mount(self):
        """Stopped while no serving process runs: do not leave a dead connection behind."""
        top = top_mount(self.path)
        if self._ours(top):
            detach(self.path, top[0])

    def _on_signal(self, sig, frame):
        if sig == signal.SIGHUP:
            logs.reopen()
        else:
            self.stopping = True
        if self.child is not None:
            try:
                os.kill(self.child, sig)
            except ProcessLookupError:
                pass
