"""Filesystem operations run in a child process with a deadline: a hung FUSE request then
costs a kill, never a hung test.  ``start_op``/``finish_op``/``run_op`` run one snippet
per child; ``OpServer`` keeps one child that answers many calls."""
from __future__ import annotations

import errno
import json
import select
import subprocess
import sys
import time


# Filesystem operations run in a child process: a hung FUSE request then costs a kill,
# never a hung test.  The child runs ``code`` with ``args`` (a list) in scope and prints
# one JSON line: {"ok": true, "result": ...} or {"ok": false, "errno": N, "error": "..."}.
_PRELUDE = r"""
import errno, hashlib, json, os, sys, time
args = json.loads(sys.argv[1])
def md5(b): return hashlib.md5(b).hexdigest()
def hold():
    print("ready", flush=True)
    sys.stdin.readline()
def read_all(p):
    with open(p, "rb") as f:
        return f.read()
def write_all(p, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(p, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:1 << 20]):]
    finally:
        os.close(fd)
t0 = time.monotonic()
try:
    result = None
"""
_EPILOGUE = r"""
    out = {"ok": True, "result": result}
except OSError as exc:
    out = {"ok": False, "errno": exc.errno, "error": repr(exc)}
out["elapsed"] = time.monotonic() - t0
print(json.dumps(out), flush=True)
"""


class OpHung(AssertionError):
    pass


def _script(code: str) -> str:
    body = "\n".join("    " + line for line in code.strip("\n").splitlines())
    return _PRELUDE + body + "\n" + _EPILOGUE


def start_op(code: str, args=(), env=None, hold: bool = False) -> subprocess.Popen:
    """Start ``code`` (which sets ``result``) in a child; see ``finish_op``.  With ``hold``
    the code may call ``hold()``: it prints "ready" and waits for ``release(proc)``."""
    return subprocess.Popen([sys.executable, "-c", _script(code), json.dumps(list(args))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.PIPE if hold else subprocess.DEVNULL)


def wait_ready(proc: subprocess.Popen, timeout: float, what: str = "operation"):
    """Wait until a held child printed "ready" (it reached ``hold()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line:
                break
            if line.startswith("{"):
                raise AssertionError(f"{what} ended before it was ready: {line}")
    proc.kill()
    proc.communicate(timeout=10)
    raise OpHung(f"{what} not ready within {timeout}s")


def release(proc: subprocess.Popen):
    proc.stdin.write("go\n")
    proc.stdin.flush()


def finish_op(proc: subprocess.Popen, timeout: float, what: str = "operation") -> dict:
    """Wait at most ``timeout`` s; a child still running is killed and OpHung raised."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        raise OpHung(f"{what} did not finish within {timeout}s (hung mount?)") from None
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise AssertionError(f"{what}: child failed (rc {proc.returncode}): {err[-2000:]}")
    return json.loads(lines[-1])


def run_op(code: str, args=(), timeout: float = 60.0, what: str = "operation") -> dict:
    return finish_op(start_op(code, args), timeout, what)


def errname(code) -> str:
    return errno.errorcode.get(code, str(code)) if code is not None else "ok"


class OpServer:
    """A child process that runs filesystem calls for the test, one JSON request per line,
    so a hung FUSE request costs a kill instead of a hung test (cheaper than a child per
    call).  ``source`` defines functions ``op_NAME(*args)``; ``call(name, *args)`` returns
    ``(None, result)`` or ``(errno, None)``."""

    _LOOP = r"""
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    try:
        out = {"ok": True, "result": globals()["op_" + req["op"]](*req["args"])}
    except OSError as exc:
        out = {"ok": False, "errno": exc.errno}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""

    def __init__(self, source: str, env=None):
        self.proc = subprocess.Popen([sys.executable, "-c", source + "\n" + self._LOOP], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.calls = 0
        self.busy = 0.0           # seconds spent waiting for answers

    def call(self, op: str, *args, timeout: float = 60.0):
        self.calls += 1
        t0 = time.monotonic()
        try:
            return self._call(op, args, timeout)
        finally:
            self.busy += time.monotonic() - t0

    def _call(self, op: str, args, timeout: float):
        self.proc.stdin.write(json.dumps({"op": op, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise OpHung(f"{op}{tuple(args)!r} did not answer within {timeout}s (hung mount?)"
                         if not ready else f"{op}{tuple(args)!r}: the op server died")
        out = json.loads(line)
        return (None, out["result"]) if out["ok"] else (out["errno"], None)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            pass
