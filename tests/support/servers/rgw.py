"""Start/stop the single-node Ceph RGW of tests/support/servers/rgw.sh from Python.

Stdlib only (importable as ``tests.support.servers.rgw`` or, with tests/support/servers on
sys.path, as ``rgw``). Two levels:

- ``RGWServer``: the test-server object (same interface as ``MotoServer``:
  endpoint, access_key, secret_key, env(), start(), stop()). Each instance
  has its own run directory (/tmp/s3fuse-test-rgw-<pid>[-n]) and a free port,
  so parallel test sessions do not collide; run directories left by a session
  that died (its pid is gone) are stopped and removed by the next start.
- ``start_rgw``/``stop_rgw``: thin wrappers of rgw.sh start/stop.

The shell script takes the run directory from S3FUSE_RGW_DIR (default
/tmp/s3fuse-rgw); pass run_dir= to use another one. Packages must be
installed first: tests/support/servers/install-rgw.sh (or install=True here).
"""

import atexit
import glob
import itertools
import os
import shutil
import socket
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
RGW_SH = os.path.join(HERE, "rgw.sh")
INSTALL_SH = os.path.join(HERE, "install-rgw.sh")

ACCESS_KEY = "s3fuseaccess"
SECRET_KEY = "s3fusesecret"

# What rgw.sh needs on PATH (the packages of install-rgw.sh, plus curl and python3).
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool", "ceph-authtool",
            "curl", "python3")
RUN_DIR_PATTERN = "/tmp/s3fuse-test-rgw-"


class RGWError(RuntimeError):
    pass


def _env(run_dir, extra=None):
    env = dict(os.environ)
    env.update(extra or {})
    if run_dir:
        env["S3FUSE_RGW_DIR"] = str(run_dir)
    return env


def _run(args, run_dir=None, timeout=180, extra_env=None):
    try:
        p = subprocess.run(
            ["bash", RGW_SH] + list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(run_dir, extra_env),
            timeout=timeout,
            universal_newlines=True,
        )
    except subprocess.TimeoutExpired as e:
        raise RGWError("rgw.sh %s timed out after %ss" % (" ".join(args), timeout)) from e
    return p


def _parse_exports(text):
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            env[k.strip()] = v.strip().strip("'\"")
    return env


def install_rgw():
    """Install the Debian packages if missing (idempotent)."""
    p = subprocess.run(["bash", INSTALL_SH], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    if p.returncode != 0:
        raise RGWError("install-rgw.sh failed:\n" + p.stdout[-4000:])


def start_rgw(port=7480, run_dir=None, install=False, timeout=180):
    """Start a fresh RGW on 127.0.0.1:port (stopping any previous one of the
    same run dir). Returns dict(endpoint, access_key, secret_key)."""
    if install:
        install_rgw()
    p = _run(["start", str(port)], run_dir=run_dir, timeout=timeout)
    if p.returncode != 0:
        raise RGWError("rgw.sh start failed (exit %d):\n%s" % (p.returncode, p.stderr[-6000:]))
    env = _parse_exports(p.stdout)
    try:
        return {
            "endpoint": env["S3FUSE_TEST_ENDPOINT"],
            "access_key": env["AWS_ACCESS_KEY_ID"],
            "secret_key": env["AWS_SECRET_ACCESS_KEY"],
        }
    except KeyError as e:
        raise RGWError("rgw.sh start printed no %s:\n%s" % (e, p.stdout)) from None


def stop_rgw(run_dir=None, timeout=60):
    """Stop the daemons of the run dir and remove it. Safe if not running."""
    p = _run(["stop"], run_dir=run_dir, timeout=timeout)
    if p.returncode != 0:
        raise RGWError("rgw.sh stop failed (exit %d):\n%s" % (p.returncode, p.stderr[-4000:]))


def rgw_running(run_dir=None):
    """True if all daemons are alive and S3 answers."""
    return _run(["status"], run_dir=run_dir, timeout=30).returncode == 0


def rgw_missing_binaries():
    """The binaries rgw.sh needs that are not installed ([] when it can run)."""
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale_run_dirs():
    """Stop the daemons of, and remove, run directories that RGWServer made in a test
    session that no longer exists (killed before its teardown): the owner's pid is in the
    directory name. rgw.sh stop kills only processes naming that directory's ceph.conf."""
    for run_dir in glob.glob(RUN_DIR_PATTERN + "*"):
        owner = os.path.basename(run_dir)[len(os.path.basename(RUN_DIR_PATTERN)):].split("-")[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            _run(["stop"], run_dir=run_dir, timeout=60)


class RGWServer:
    """A private single-node Ceph RGW on a free loopback port, for one test session."""

    kind = "rgw"
    _serial = itertools.count()

    def __init__(self, port=0, run_dir=None, extra_env=None):
        """``extra_env``: rgw.sh settings (S3FUSE_RGW_SSL_PORT, S3FUSE_RGW_DNS_NAME, ...)."""
        self.extra_env = dict(extra_env or {})
        self.port = port or _free_port()
        n = next(self._serial)
        self.run_dir = run_dir or "%s%d%s" % (RUN_DIR_PATTERN, os.getpid(), "-%d" % n if n else "")
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        self.running = False

    def start(self, attempts=3):
        missing = rgw_missing_binaries()
        if missing:
            raise RGWError("Ceph RGW binaries not installed (%s): run %s" % (" ".join(missing), INSTALL_SH))
        cleanup_stale_run_dirs()
        for attempt in range(attempts):
            try:
                p = _run(["start", str(self.port)], run_dir=self.run_dir, timeout=240, extra_env=self.extra_env)
            except RGWError:
                _run(["stop"], run_dir=self.run_dir, timeout=60)   # a timed-out start leaves daemons
                raise
            if p.returncode == 0:
                break
            # A fresh start is idempotent (rgw.sh throws the run dir away first): retry a
            # failed one, on a new port if another process took ours meanwhile.
            if attempt + 1 < attempts:
                if "already in use" in p.stderr:
                    self.port = _free_port()
                    self.endpoint = "http://127.0.0.1:%d" % self.port
                continue
            _run(["stop"], run_dir=self.run_dir, timeout=60)
            raise RGWError("rgw.sh start failed (exit %d):\n%s" % (p.returncode, p.stderr[-6000:]))
        env = _parse_exports(p.stdout)
        if env.get("S3FUSE_TEST_ENDPOINT") != self.endpoint:
            raise RGWError("rgw.sh start printed %r, expected %s" % (p.stdout, self.endpoint))
        self.running = True
        atexit.register(self.stop)       # also when the session ends without its teardown
        return self

    def stop(self):
        if self.running or os.path.isdir(self.run_dir):
            self.running = False
            stop_rgw(run_dir=self.run_dir)

    def env(self):
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}


if __name__ == "__main__":
    import sys

    cmd = sys.argv[1] if len(sys.argv) > 1 else "start"
    if cmd == "start":
        print(start_rgw(int(sys.argv[2]) if len(sys.argv) > 2 else 7480))
    elif cmd == "stop":
        stop_rgw()
    elif cmd == "status":
        sys.exit(0 if rgw_running() else 1)
    else:
        sys.exit("usage: rgw.py start [PORT] | stop | status")
