"""Start/stop the single-node Ceph RGW of tests/servers/rgw.sh from Python.

Stdlib only. Typical pytest use::

    from tests.servers import rgw     # or: sys.path.insert(0, "tests/servers"); import rgw

    @pytest.fixture(scope="session")
    def s3_server():
        info = rgw.start_rgw()        # {'endpoint', 'access_key', 'secret_key'}
        yield info
        rgw.stop_rgw()

The run directory is taken from S3FUSE_RGW_DIR (default /tmp/s3fuse-rgw) by
the shell script; pass run_dir= to use another one (e.g. per test session).
Packages must be installed first: tests/servers/install-rgw.sh (or
install=True here).
"""

import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
RGW_SH = os.path.join(HERE, "rgw.sh")
INSTALL_SH = os.path.join(HERE, "install-rgw.sh")

ACCESS_KEY = "s3fuseaccess"
SECRET_KEY = "s3fusesecret"


class RGWError(RuntimeError):
    pass


def _env(run_dir):
    env = dict(os.environ)
    if run_dir:
        env["S3FUSE_RGW_DIR"] = str(run_dir)
    return env


def _run(args, run_dir=None, timeout=180):
    try:
        p = subprocess.run(
            ["bash", RGW_SH] + list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(run_dir),
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
