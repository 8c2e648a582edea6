"""A small threaded TCP proxy that injects network faults between s3fuse and an S3 server,
plus the helpers the fault, crash, concurrency and security tests share (filesystem
operations run in a subprocess with a deadline, polling, MD5s, dead-mount cleanup).

``FaultProxy(upstream_endpoint)`` listens on 127.0.0.1 (loopback only, and only towards a
loopback upstream) and is controlled at run time with ``set(mode, arg, count)``:

- ``pass``                    forward everything
- ``delay``     arg = ms      hold each new request ``arg`` ms before forwarding it
- ``reset``                   answer each new request with a TCP reset (RST, nothing forwarded)
- ``blackhole``               swallow each new request and never answer (the connection
                              stays open until the client gives up)
- ``truncate``  arg = bytes   forward the request, then only the first ``arg`` bytes of
                              its response, then close the connection (FIN)

A fault applies per HTTP request (a request starts when a connection that is idle or has
received response bytes sends data beginning with an HTTP method), so connections kept
alive in a client pool see mode changes at their next request.  ``count`` limits the
fault to the next ``count`` requests, after which the proxy passes again (a one-shot
fault that client retries must overcome); ``methods`` (e.g. ``{"PUT", "POST"}``: uploads,
copies and completes) limits it to requests of those HTTP methods, the others pass.  ``reset_all()`` cuts every open connection
now.  ``stats`` counts connections, requests, injected faults per mode, and the bytes
forwarded each way (``bytes_up``: requests with their bodies, ``bytes_down``: answers).

Bounded: every socket operation has a timeout, threads poll a stop flag, and the proxy
stops by itself after ``lifetime`` seconds; ``close()`` (fixture teardown) stops it at once.
"""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import Optional

MODES = ("pass", "delay", "reset", "blackhole", "truncate")
_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _hard_close(sock: socket.socket):
    """Close with SO_LINGER 0: the peer gets a TCP RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Fault:
    __slots__ = ("mode", "arg", "methods")

    def __init__(self, mode="pass", arg=None, methods=None):
        self.mode, self.arg = mode, arg
        self.methods = None if methods is None else {m.encode() if isinstance(m, str) else m for m in methods}


class FaultProxy:
    def __init__(self, upstream: str, lifetime: float = 900.0):
        u = urllib.parse.urlparse(upstream)
        host, port = u.hostname, u.port or 80
        if not _is_loopback(host):
            raise ValueError(f"FaultProxy only forwards to loopback, not {host!r}")
        self.upstream = (host, port)
        self._lock = threading.Lock()
        self._fault = _Fault()
        self._count: Optional[int] = None
        self._stop = threading.Event()
        self._conns: set = set()
        self._threads: list = []
        self.stats = {"connections": 0, "requests": 0, "faults": {m: 0 for m in MODES if m != "pass"},
                      "bytes_up": 0, "bytes_down": 0}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._deadline = time.monotonic() + lifetime
        t = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True)
        t.start()
        self._threads.append(t)

    # -- control ----------------------------------------------------------------------------
    def set(self, mode: str, arg=None, count: Optional[int] = None, methods=None):
        if mode not in MODES:
            raise ValueError(mode)
        if mode in ("delay", "truncate") and not isinstance(arg, int):
            raise ValueError(f"{mode} needs an int argument")
        with self._lock:
            self._fault = _Fault(mode, arg, methods)
            self._count = count

    def clear(self):
        self.set("pass")

    @property
    def mode(self) -> str:
        with self._lock:
            return self._fault.mode

    def injected(self) -> int:
        with self._lock:
            return sum(self.stats["faults"].values())

    def reset_all(self):
        """Cut every open connection now (RST to both sides)."""
        with self._lock:
            conns = list(self._conns)
        for client, upstream in conns:
            _hard_close(client)
            if upstream is not None:
                _hard_close(upstream)

    def close(self):
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        self.reset_all()
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _stopped(self) -> bool:
        return self._stop.is_set() or time.monotonic() > self._deadline

    def _take_fault(self, method: bytes = b"") -> _Fault:
        """The fault for a request of ``method`` starting now (consumes one of ``count``)."""
        with self._lock:
            self.stats["requests"] += 1
            fault = self._fault
            if fault.mode == "pass":
                return fault
            if fault.methods is not None and method not in fault.methods:
                return _Fault()
            self.stats["faults"][fault.mode] += 1
            if self._count is not None:
                self._count -= 1
                if self._count <= 0:
                    self._fault, self._count = _Fault(), None
            return fault

    def _count_bytes(self, name: str, n: int):
        with self._lock:
            self.stats[name] += n

    def _accept_loop(self):
        while not self._stopped():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                self.stats["connections"] += 1
                self._threads = [t for t in self._threads if t.is_alive()]
            t = threading.Thread(target=self._serve, args=(client,), name=f"faultproxy-conn-{self.port}", daemon=True)
            t.start()
            self._threads.append(t)
        # lifetime over or closed: cut whatever is still open
        self._stop.set()
        self.reset_all()

    def _serve(self, client: socket.socket):
        upstream = None
        entry = (client, None)
        try:
            client.settimeout(5)
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _hard_close(client)
                return
            entry = (client, upstream)
            with self._lock:
                self._conns.add(entry)
            fault = _Fault()
            awaiting = True          # the next client bytes start a request
            blackholed = False
            response_bytes = 0
            while not self._stopped():
                try:
                    ready, _, _ = select.select([client, upstream], [], [], 0.2)
                except (OSError, ValueError):
                    break
                if client in ready:
                    data = client.recv(1 << 16)
                    if not data:
                        break
                    if blackholed:
                        continue
                    if awaiting and data.startswith(_METHODS):
                        awaiting = False
                        fault = self._take_fault(data.split(b" ", 1)[0])
                        response_bytes = 0
                        if fault.mode == "reset":
                            _hard_close(client)
                            _hard_close(upstream)
                            return
                        if fault.mode == "blackhole":
                            blackholed = True
                            continue
                        if fault.mode == "delay":
                            if self._stop.wait(fault.arg / 1000.0):
                                break
                    upstream.sendall(data)
                    self._count_bytes("bytes_up", len(data))
                if upstream in ready:
                    data = upstream.recv(1 << 16)
                    if not data:
                        break
                    awaiting = True
                    if fault.mode == "truncate":
                        room = fault.arg - response_bytes
                        if len(data) >= room:
                            if room > 0:
                                client.sendall(data[:room])
                            try:
                                client.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass
                            break
                        response_bytes += len(data)
                    client.sendall(data)
                    self._count_bytes("bytes_down", len(data))
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(entry)
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass


class ProxiedServer:
    """A server-like object (endpoint, keys, env()) for ``conftest.Mount`` that sends
    s3fuse through ``proxy`` to ``server``."""

    def __init__(self, server, proxy: FaultProxy):
        self.server, self.proxy = server, proxy
        self.endpoint = proxy.endpoint
        self.access_key, self.secret_key = server.access_key, server.secret_key
        self.kind = getattr(server, "kind", "s3")

    def env(self) -> dict:
        return self.server.env()


# ---------------------------------------------------------------------------------------
# helpers shared by the robustness tests
# ---------------------------------------------------------------------------------------
MiB = 1 << 20

try:                                   # conftest is being reorganised: fall back if it moves
    from .conftest import Mount, is_mounted, make_boto, unmount   # noqa: F401
except ImportError:                    # pragma: no cover
    from tests.conftest import Mount, is_mounted, make_boto, unmount   # type: ignore  # noqa: F401


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def bucket_md5(s3, bucket: str, key: str) -> Optional[tuple]:
    """(md5, size, metadata) of the object as the bucket has it now, or None if absent."""
    try:
        r = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return None
    h, n = hashlib.md5(), 0
    for chunk in r["Body"].iter_chunks(8 * MiB):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n, r["Metadata"]


def bucket_keys(s3, bucket: str, prefix: str = "") -> list:
    keys, token = [], None
    while True:
        kw = dict(Bucket=bucket, Prefix=prefix)
        if token:
            kw["ContinuationToken"] = token
        r = s3.list_objects_v2(**kw)
        keys += [o["Key"] for o in r.get("Contents", [])]
        if not r.get("IsTruncated"):
            return keys
        token = r["NextContinuationToken"]


def journal_records(cache_dir: str) -> list:
    out = []
    jdir = os.path.join(cache_dir, "journal")
    for name in (os.listdir(jdir) if os.path.isdir(jdir) else []):
        if name.endswith(".json"):
            try:
                with open(os.path.join(jdir, name)) as f:
                    out.append(json.load(f))
            except (OSError, ValueError):
                pass
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def cleanup_dead_mount(path: str, timeout: float = 20.0):
    """A mount whose daemon died: fusermount3 -u, then umount -l if still there."""
    for cmd in (["fusermount3", "-u", path], ["fusermount", "-u", path], ["umount", path]):
        if not is_mounted(path):
            break
        try:
            subprocess.run(cmd, capture_output=True, timeout=timeout)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            continue
    if is_mounted(path):
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=timeout)
    wait_for(lambda: not is_mounted(path), timeout, f"{path} to be unmounted")


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


def report(config, line: str):
    """Print a figures line in the test report (visible without -s)."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:      # pragma: no cover
        print(line)
        return
    with capman.global_and_fixture_disabled():     # past pytest's output capture
        tr.write_line("")
        tr.write_line(line)
