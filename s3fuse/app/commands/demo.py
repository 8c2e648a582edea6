"""``s3fuse demo [MOUNTPOINT]``: start a local S3 server (moto), create a demo bucket with a
few objects, mount it, and keep it mounted until Ctrl-C (then unmount and stop)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from ...s3 import ObjectClient
from ..commandline import Parsed

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(parsed: Parsed) -> int:
    mountpoint = os.path.abspath(parsed.positionals[0] if parsed.positionals else "/tmp/s3fuse-demo")
    exe = shutil.which("moto_server")
    if not exe:
        sys.stderr.write("s3fuse demo: moto server not installed (pip install 'moto[server]')\n")
        return 1
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    workdir = tempfile.mkdtemp(prefix="s3fuse-demo-")
    server = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    # kill (SIGTERM) or a closed terminal (SIGHUP) end the demo like Ctrl-C: unmount, stop
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(0))
    env = dict(os.environ, AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION="us-east-1")
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.1)
        s3 = ObjectClient("demo-bucket", endpoint=endpoint, access_key="demo", secret_key="demo")
        s3.create_bucket()
        s3.put("README.txt", b"Hello from s3fuse: this bucket lives in a local S3 server.\n")
        s3.put("photos/2024/cat.txt", b"meow\n")
        s3.put("docs/", b"", {"mode": str(0o40750)})
        s3.put("docs/notes.txt", b"notes\n" * 100, {"mode": str(0o100640), "mtime": "1700000000"})
        os.makedirs(mountpoint, exist_ok=True)
        # the mount command of this very s3fuse, installed or not
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "s3fuse"]
        opts = f"endpoint={endpoint},cache_dir={os.path.join(workdir, 'cache')},log_file={os.path.join(workdir, 's3fuse.log')}"
        proc = subprocess.run(cmd + ["demo-bucket", mountpoint, "-o", opts], env=env)
        if proc.returncode != 0:
            return proc.returncode
        print(f"Bucket 'demo-bucket' on {endpoint} is mounted at {mountpoint}.")
        print(f"Try: ls -lR {mountpoint}; cp /etc/hostname {mountpoint}/; s3fuse status {mountpoint}")
        print(f"Log: {os.path.join(workdir, 's3fuse.log')}.  Press Ctrl-C to unmount and stop.")
        sys.stdout.flush()
        try:
            signal.pause() if sys.stdin is None or not sys.stdin.isatty() else input()
        except (KeyboardInterrupt, EOFError):
            pass
        return 0
    finally:
        for cmd in (["fusermount3", "-u", mountpoint], ["fusermount", "-u", mountpoint], ["umount", mountpoint]):
            try:
                if subprocess.run(cmd, capture_output=True).returncode == 0:
                    break
            except FileNotFoundError:
                continue
        server.terminate()
        server.wait()
        print("demo stopped")
