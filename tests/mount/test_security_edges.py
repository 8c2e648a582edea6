"""Security at the edges (#22), on real mounts: a user's status file with /tmp/s3fuse-UID
made first by another user, the metrics endpoint under 200 idle connections, a cache_dir
given that exists (its mode is the owner's business), TLS to an https:// proxy."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

from s3fuse.app import statusfile as status

from ..support.mounts import REPO, Mount, is_mounted, unmount
from ..support.servers.tls import make_ca
from ..support.tlsproxy import TLSFront, TLSProxy
from ..support.probes import daemon_stats, wait_for

pytestmark = pytest.mark.servers("moto")

NOBODY = 65534
USER = "s3fuse-edgesec"                 # this file's own user: its /tmp/s3fuse-UID is ours to plant
VENV = "/opt/s3fuse-user-venv"          # tests/test_user_mount.py's venv (Debian's python + dependencies)


def run(*cmd, timeout=120, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def user():
    """A user other than root that runs this checkout (PYTHONPATH) with the venv's
    dependencies (made as tests/test_user_mount.py makes it when missing)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create the test user")
    for tool in ("useradd", "runuser", "fusermount3"):
        assert shutil.which(tool), f"{tool} missing"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        proc = run("useradd", "--create-home", "--shell", "/bin/sh", USER)
        assert proc.returncode == 0, proc.stderr
    if os.stat("/dev/fuse").st_mode & 0o006 != 0o006:
        os.chmod("/dev/fuse", 0o666)
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        assert run("/usr/bin/python3", "-m", "venv", VENV).returncode == 0
        proc = run(os.path.join(VENV, "bin", "pip"), "install", "-q", "--disable-pip-version-check", "-e", REPO,
                   timeout=900)
        assert proc.returncode == 0, proc.stderr
    entry = pwd.getpwnam(USER)
    probe = as_user(entry, {}, python, "-c", "import s3fuse, boto3, mfusepy; print(s3fuse.__file__)")
    assert probe.returncode == 0 and probe.stdout.strip() == os.path.join(REPO, "s3fuse", "__init__.py"), \
        f"{USER} cannot run this checkout: {probe.stdout} {probe.stderr}"
    return entry


def as_user(entry, env: dict, *cmd):
    full = {"HOME": entry.pw_dir, "PATH": "/usr/bin:/bin", "USER": entry.pw_name, "PYTHONPATH": REPO}
    full.update(env)
    return run("runuser", "-u", entry.pw_name, "--", "env", *[f"{k}={v}" for k, v in full.items()], *cmd)


# ---------------------------------------------------------------------------------------
# 10. The status file of a user without XDG_RUNTIME_DIR
# ---------------------------------------------------------------------------------------
@pytest.mark.xdist_group("user-mount")     # shares tests/mount/test_user_mount.py's venv
def test_users_mount_ignores_a_status_dir_another_user_made(s3_server, bucket, user):
    """/tmp/s3fuse-UID made first by another user (0777), with links at the names the
    daemon's temporary status file would have (HASH.json.PID.tmp for the next pids) to a
    file of the user: the mount works, writes nothing there, says so in its log, and
    ``s3fuse status`` shows nothing from that directory."""
    python = os.path.join(VENV, "bin", "python")
    top = tempfile.mkdtemp(prefix="s3fuse-edge-")
    os.chmod(top, 0o755)
    os.chown(top, user.pw_uid, user.pw_gid)
    mp, log_file = os.path.join(top, "mnt"), os.path.join(top, "s3fuse.log")
    os.mkdir(mp)
    os.chown(mp, user.pw_uid, user.pw_gid)
    precious = os.path.join(top, "precious")
    with open(precious, "wb") as f:
        f.write(b"the user's own file\n")
    os.chown(precious, user.pw_uid, user.pw_gid)
    rundir = f"/tmp/s3fuse-{user.pw_uid}"
    if os.path.islink(rundir):
        os.unlink(rundir)
    shutil.rmtree(rundir, ignore_errors=True)
    os.mkdir(rundir)
    os.chown(rundir, NOBODY, NOBODY)
    os.chmod(rundir, 0o777)
    name = os.path.basename(status.status_path(mp))
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    for pid in range(last + 1, last + 3000):
        link = os.path.join(rundir, f"{name}.{pid}.tmp")
        os.symlink(precious, link)
        os.lchown(link, NOBODY, NOBODY)
    planted = sorted(os.listdir(rundir))
    env = dict(s3_server.env())
    try:
        proc = as_user(user, env, python, os.path.join(REPO, "mount.s3fuse"), bucket, mp, "-o",
                       f"endpoint={s3_server.endpoint},log_file={log_file},cache_dir={top}/cache")
        assert proc.returncode == 0, proc.stderr
        assert is_mounted(mp)
        w = as_user(user, env, "sh", "-c", f"echo hello > {mp}/f && cat {mp}/f")
        assert w.returncode == 0 and w.stdout == "hello\n", w.stderr
        with open(precious, "rb") as f:
            assert f.read() == b"the user's own file\n", "the status JSON went through a planted link"
        assert sorted(os.listdir(rundir)) == planted, "nothing written in the other user's directory"
        wait_for(lambda: "no status file" in open(log_file).read(), 10, "the warning in the log")
        with open(log_file) as f:
            log = f.read()
        assert f"{rundir} belongs to uid {NOBODY}" in log, log
        st = as_user(user, env, python, "-m", "s3fuse", "status")
        assert st.returncode == 0 and "no s3fuse mounts" in st.stdout, st.stdout + st.stderr
        assert rundir in st.stderr, st.stderr
        assert sorted(os.listdir(rundir)) == planted, "nothing written in the other user's directory"
        with open(precious, "rb") as f:
            assert f.read() == b"the user's own file\n"
        u = as_user(user, env, "fusermount3", "-u", mp)
        assert u.returncode == 0, u.stderr
    finally:
        if is_mounted(mp):
            unmount(mp)
        shutil.rmtree(rundir, ignore_errors=True)
        shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# 15. A cache_dir given keeps its mode; the directories s3fuse makes in it are 0700
# ---------------------------------------------------------------------------------------
SUBDIRS = ("journal", "staging", "recovery", "blocks", "meta")


def mode_of(path: str) -> int:
    return os.lstat(path).st_mode & 0o7777


def test_a_given_cache_dir_keeps_its_mode(s3_server, s3, bucket, tmp_path):
    """cache_dir= an existing 0755 directory (e.g. /var/tmp/x made by hand) was made 0700
    by every mount; now its mode is left alone, and the directories s3fuse keeps in it -
    a staging/ that exists 0755 too - are 0700."""
    given = tmp_path / "given"
    given.mkdir()
    os.chmod(given, 0o755)
    (given / "staging").mkdir()
    os.chmod(given / "staging", 0o755)
    m = Mount(s3_server, bucket, str(tmp_path))
    m.cache_dir = str(given)
    m.mount()
    try:
        with open(m.p("f"), "wb") as f:
            f.write(b"data")
        assert s3.get_object(Bucket=bucket, Key="f")["Body"].read() == b"data"
        assert mode_of(given) == 0o755
        assert {d: mode_of(given / d) for d in SUBDIRS} == {d: 0o700 for d in SUBDIRS}
    finally:
        m.unmount()
    assert mode_of(given) == 0o755


def test_a_cache_dir_others_may_write_is_refused(s3_server, bucket, tmp_path):
    """cache_dir=/var/tmp (1777) as root became 0700 - for every user of the host - and the
    mount then kept its journal and staging files where anyone could have made those
    names first.  Now the mount is refused with a line saying why, and /var/tmp's mode
    is what it was."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    m = Mount(s3_server, bucket, str(tmp_path))
    m.cache_dir = str(shared)
    try:
        proc = subprocess.run(m.args(), env=m.env(), capture_output=True, text=True, timeout=60)
    finally:
        m.unmount()
    assert proc.returncode != 0
    assert f"cache_dir {shared} is writable by group and others" in proc.stderr, proc.stderr
    assert mode_of(shared) == 0o1777 and os.listdir(shared) == []


# ---------------------------------------------------------------------------------------
# 12. The metrics endpoint under 200 idle connections
# ---------------------------------------------------------------------------------------
def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_idle_metrics_connections_pin_no_threads(mounter, bucket):
    """200 idle TCP connections to -o metrics= pinned 200 threads in the daemon (one each,
    no timeout).  Now: at most 16 connection threads, a scrape is answered while they
    are open, and the daemon exits at unmount with them still open."""
    m = mounter(bucket, options=["metrics=127.0.0.1:0"])
    entry = daemon_stats(m)
    pid, url = entry["pid"], entry["metrics"]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with open(m.p("f"), "wb") as f:
        f.write(b"x")
    baseline = threads_of(pid)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    try:
        wait_for(lambda: threads_of(pid) >= baseline + 8, 10, "connection threads")
        time.sleep(0.5)
        assert threads_of(pid) <= baseline + 16 + 2, threads_of(pid)
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200 and b"s3fuse_info{" in resp.read()
        assert threads_of(pid) <= baseline + 16 + 2
        m.unmount()
        assert not is_mounted(m.path)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "the daemon to exit")
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------------------
# 11. An https:// proxy: TLS to it, for both request paths (transport and botocore)
# ---------------------------------------------------------------------------------------
class EnvMount(Mount):
    def __init__(self, server, bucket, root, options, env):
        super().__init__(server, bucket, root, options=options)
        self._extra_env = env

    def env(self):
        env = {k: v for k, v in super().env().items() if "proxy" not in k.lower() and k != "AWS_CA_BUNDLE"}
        env.update(self._extra_env)
        return env


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_mount_through_an_https_proxy(s3_server, s3, bucket, tmp_path, scheme):
    """HTTPS_PROXY/HTTP_PROXY=https://user:password@proxy: the transport spoke plain TCP
    to the proxy (the mount failed, and the Proxy-Authorization went in clear).  Now
    every request - the transport's and botocore's (multipart create/complete) - goes
    inside TLS to the proxy, with the credentials: a CONNECT there for an HTTPS endpoint
    (the endpoint's TLS inside it), absolute URLs for an HTTP one."""
    tls = make_ca(str(tmp_path / "tls"), ["localhost", "127.0.0.1"])
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    front = TLSFront(tls, port)
    proxy = TLSProxy(tls, auth=("s3user", "pr0xy"))
    endpoint = f"https://localhost:{front.port}" if scheme == "https" else s3_server.endpoint
    m = EnvMount(s3_server, bucket, str(tmp_path), [f"endpoint={endpoint}", "part_size=5M"],
                 {f"{scheme.upper()}_PROXY": proxy.url, "AWS_CA_BUNDLE": tls["ca"]})
    big = os.urandom(6 << 20)
    try:
        m.mount()
        with open(m.p("big.bin"), "wb") as f:
            f.write(big)
        for i in range(3):
            with open(m.p(f"small{i}"), "wb") as f:
                f.write(b"small %d" % i)
        assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == big
        requests = daemon_stats(m)["requests"]
        seen = len(proxy.requests)
        m.unmount()
        m.mount()
        assert sorted(os.listdir(m.path)) == ["big.bin", "small0", "small1", "small2"]
        assert [os.stat(m.p(f"small{i}")).st_size for i in range(3)] == [7, 7, 7]
        with open(m.p("big.bin"), "rb") as f:
            assert f.read() == big
    finally:
        m.unmount()
        proxy.close()
        front.close()
    log = m.log()
    assert "through botocore (" not in log and "failed unexpectedly" not in log, log[-3000:]
    assert requests.get("create_multipart_upload", 0) >= 1, requests     # a botocore request
    assert proxy.plain == 0 and all(auth == proxy.auth for _, _, auth in proxy.requests)
    if scheme == "https":
        assert {target for _, target, _ in proxy.requests} == {f"localhost:{front.port}"} and proxy.tunnels >= 2
        assert front.accepted == proxy.tunnels, "every connection to the endpoint came through the proxy"
    else:
        assert seen >= sum(requests.values()), (seen, requests)
        assert {meth for meth, _, _ in proxy.requests} >= {"PUT", "POST", "GET"}
        assert all(target.startswith(s3_server.endpoint + "/") for _, target, _ in proxy.requests)
