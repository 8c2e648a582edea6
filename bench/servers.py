"""The servers a run starts and stops: a private Ceph RGW (tests/support/servers/rgw.sh),
a moto_server, and bench/latency_proxy.py in its own process (--rtt / --via-proxy)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from .common import REPO, log
from .system import free_port, python_module, short_err, wait_port


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
    # Benchmarks write GiBs (bench.fio's seq_write: 2 GiB per file system), and deleted
    # objects wait for RGW's garbage collection: a 6 GiB memstore (rgw.sh's default, about
    # 3 GiB of objects) filled and hung the server.  RAM is only used for what is stored.
    rgw_env.setdefault("S3FUSE_RGW_MEMSTORE_BYTES", str(16 << 30))
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

class ProxyProc:
    """bench/latency_proxy.py in its own process (``python3 -m bench.latency_proxy``: its
    threads then do not share our GIL)."""

    def __init__(self, upstream: str, rtt_ms: float, workdir: Path):
        self.logf = open(workdir / "latency-proxy.log", "wb")
        cmd, env = python_module("bench.latency_proxy", "--upstream", upstream, "--rtt-ms", str(rtt_ms))
        # own session: a Ctrl-C must not stop it before the mounts have flushed through it
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logf,
                                     text=True, start_new_session=True, env=env)
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
