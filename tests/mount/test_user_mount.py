"""A mount by a user other than root: libfuse's fusermount3 does the mount, the cache is
in the user's ~/.cache/s3fuse, and allow_other without user_allow_other in
/etc/fuse.conf fails with a line that says so.  The user runs s3fuse from a venv of
Debian's python3 (installed here), as a user on a server would."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from ..support.mounts import REPO, is_mounted, kill_and_wait_for_heal, mount_pids, unmount

# one worker: one test user and one venv for it (created by the module's first test)
pytestmark = [pytest.mark.servers("moto"), pytest.mark.xdist_group("user-mount")]

USER = "s3fuse-tester"
VENV = "/opt/s3fuse-user-venv"


def run(*cmd, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)


@pytest.fixture(scope="module")
def user():
    if os.geteuid() != 0:
        pytest.skip("needs root to create the test user")
    for tool in ("useradd", "runuser", "fusermount3"):
        assert shutil.which(tool), f"{tool} missing"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        proc = run("useradd", "--create-home", "--shell", "/bin/sh", USER)
        assert proc.returncode == 0, proc.stderr
    entry = pwd.getpwnam(USER)
    # Debian's udev rule makes /dev/fuse 0666 (fusermount3 does the privileged part); a
    # container's devtmpfs may leave it 0600, and then no user can mount anything.
    if os.stat("/dev/fuse").st_mode & 0o006 != 0o006:
        os.chmod("/dev/fuse", 0o666)
    # s3fuse for that user: a venv of the system python with the repository installed
    # (editable, so it runs this checkout's code); the repository must be readable by it.
    if not os.path.exists(os.path.join(VENV, "bin", "python")):
        proc = run("/usr/bin/python3", "-m", "venv", VENV)
        assert proc.returncode == 0, proc.stderr
    proc = run(os.path.join(VENV, "bin", "pip"), "install", "-q", "--disable-pip-version-check", "-e", REPO,
               timeout=900)
    assert proc.returncode == 0, proc.stderr
    probe = run("runuser", "-u", USER, "--", os.path.join(VENV, "bin", "python"), "-c", "import s3fuse.app.main")
    assert probe.returncode == 0, f"{USER} cannot run this checkout ({REPO} not readable?): {probe.stderr}"
    return entry


def user_env(entry, server) -> dict:
    env = {"HOME": entry.pw_dir, "PATH": "/usr/bin:/bin", "USER": USER}
    env.update(server.env())
    return env


def as_user(entry, server, *cmd):
    env = user_env(entry, server)
    return run("runuser", "-u", USER, "--", "env", *[f"{k}={v}" for k, v in env.items()], *cmd)


def test_a_user_mounts_writes_and_unmounts(s3_server, s3, bucket, user):
    top = tempfile.mkdtemp(prefix="s3fuse-user-")
    os.chmod(top, 0o755)
    mp = os.path.join(top, "mnt")
    os.mkdir(mp)
    os.chown(mp, user.pw_uid, user.pw_gid)
    cache_root = os.path.join(user.pw_dir, ".cache", "s3fuse")
    helper = [os.path.join(VENV, "bin", "python"), os.path.join(REPO, "mount.s3fuse")]
    try:
        proc = as_user(user, s3_server, *helper, bucket, mp, "-o", f"endpoint={s3_server.endpoint}")
        assert proc.returncode == 0, proc.stderr
        assert is_mounted(mp)
        w = as_user(user, s3_server, "sh", "-c", f"echo from-a-user > {mp}/hello && mkdir {mp}/d && ls -ln {mp}")
        assert w.returncode == 0, w.stderr
        assert f" {user.pw_uid} {user.pw_gid} " in w.stdout, w.stdout
        got = s3.get_object(Bucket=bucket, Key="hello")
        assert got["Body"].read() == b"from-a-user\n" and got["Metadata"]["uid"] == str(user.pw_uid)
        caches = glob.glob(os.path.join(cache_root, f"{bucket}-*"))
        assert len(caches) == 1 and os.stat(caches[0]).st_uid == user.pw_uid, "the cache is the user's"
        assert os.stat(caches[0]).st_mode & 0o077 == 0
        # root may not enter a user's mount without allow_other
        with pytest.raises(PermissionError):
            os.listdir(mp)
        # #23: SIGKILL of the serving process: the user's mount serves again by itself
        kill_and_wait_for_heal(mp, lambda: as_user(user, s3_server, "cat", f"{mp}/hello").stdout == "from-a-user\n")
        w = as_user(user, s3_server, "sh", "-c", f"echo after-the-heal > {mp}/healed")
        assert w.returncode == 0, w.stderr
        assert s3.get_object(Bucket=bucket, Key="healed")["Body"].read() == b"after-the-heal\n"
        u = as_user(user, s3_server, "fusermount3", "-u", mp)
        assert u.returncode == 0, u.stderr
        assert not is_mounted(mp)
        for _ in range(100):
            if not mount_pids(mp):
                break
            time.sleep(0.1)
        assert not mount_pids(mp), "fusermount3 -u must end the supervisor too"
    finally:
        if is_mounted(mp):
            unmount(mp)
        shutil.rmtree(top, ignore_errors=True)
        for d in glob.glob(os.path.join(cache_root, f"{bucket}-*")):
            shutil.rmtree(d, ignore_errors=True)


def test_allow_other_without_user_allow_other_says_what_to_do(s3_server, bucket, user):
    with open("/etc/fuse.conf", errors="replace") if os.path.exists("/etc/fuse.conf") else open(os.devnull) as f:
        if any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f):
            pytest.skip("this machine has user_allow_other in /etc/fuse.conf")
    top = tempfile.mkdtemp(prefix="s3fuse-user-")
    os.chmod(top, 0o755)
    os.chown(top, user.pw_uid, user.pw_gid)
    try:
        proc = as_user(user, s3_server, os.path.join(VENV, "bin", "python"), os.path.join(REPO, "mount.s3fuse"),
                       bucket, top, "-o", f"endpoint={s3_server.endpoint},allow_other")
        assert proc.returncode != 0 and not is_mounted(top)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "user_allow_other" in lines[0] and "/etc/fuse.conf" in lines[0], proc.stderr
    finally:
        shutil.rmtree(top, ignore_errors=True)
