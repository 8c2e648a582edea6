"""Security: secrets never leak (logs at debug level, status output, error messages, cache
files, the daemon's command line); passwd_file permissions are enforced; everything under
cache_dir is private while a write is in progress; with allow_other the kernel checks
permissions against the stored mode/uid/gid (a forked child that setuid()s to nobody);
object keys that cannot be paths are never exposed under a wrong name; over-long keys
fail with ENAMETOOLONG; the staging area cannot be reached through the mount (cache_dir
or log_file inside the mountpoint are refused).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

from s3fuse.app import statusfile as status

from ..support.mounts import MOUNT_HELPER, Mount, is_mounted, unmount
from ..support.ops import finish_op, release, start_op, wait_ready
from ..support.probes import bucket_md5, wait_for

NOBODY = 65534


class SecretServer:
    """The session's server, presented with a distinctive secret key (moto accepts any)."""

    def __init__(self, server, secret: str, via_env: bool = True):
        self.server = server
        self.endpoint = server.endpoint
        self.access_key = "AKIDSECURITYTEST"
        self.secret_key = secret
        self.via_env = via_env
        self.kind = getattr(server, "kind", "s3")

    def env(self) -> dict:
        env = {k: v for k, v in self.server.env().items() if not k.startswith("AWS_")}
        env["AWS_DEFAULT_REGION"] = "us-east-1"
        if self.via_env:
            env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        return env


def grep_tree(root: str, needle: bytes) -> list:
    hits = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                with open(p, "rb") as f:
                    if needle in f.read():
                        hits.append(p)
            except OSError:
                pass
    return hits


def run_helper(args, env, timeout=60):
    return subprocess.run([sys.executable, MOUNT_HELPER] + list(args), env=env, capture_output=True, text=True,
                          timeout=timeout)


def clean_env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------
@pytest.mark.servers("moto")          # it signs with a key of its own: moto accepts any
@pytest.mark.parametrize("via", ["env", "passwd_file"])
def test_secret_never_leaks(s3_server, s3, bucket, tmp_path, via):
    secret = "S3CR3T-" + uuid.uuid4().hex
    srv = SecretServer(s3_server, secret, via_env=(via == "env"))
    options = ["log_level=debug", "part_size=5M", "metrics=0"]
    if via == "passwd_file":
        pw = tmp_path / "passwd"
        pw.write_text(f"{bucket}:{srv.access_key}:{secret}\n")
        pw.chmod(0o600)
        options.append(f"passwd_file={pw}")
    s3.put_object(Bucket=bucket, Key="dir/existing.txt", Body=b"hello")
    m = Mount(srv, bucket, str(tmp_path), options=options, name="sec")
    m.mount()
    try:
        pid = m.daemon_pid()
        code = r"""
write_all(os.path.join(args[0], "small.txt"), b"x" * 1000)
write_all(os.path.join(args[0], "big.bin"), os.urandom(6 << 20))
read_all(os.path.join(args[0], "dir", "existing.txt"))
os.listdir(args[0])
os.rename(os.path.join(args[0], "small.txt"), os.path.join(args[0], "moved.txt"))
os.chmod(os.path.join(args[0], "moved.txt"), 0o600)
os.setxattr(os.path.join(args[0], "moved.txt"), "user.k", b"v")
for bad in (lambda: os.stat(os.path.join(args[0], "missing")), lambda: os.rmdir(os.path.join(args[0], "dir")),
            lambda: os.setxattr(os.path.join(args[0], "moved.txt"), "trusted.x", b"v")):
    try:
        bad()
    except OSError:
        pass
result = True
"""
        r = finish_op(start_op(code, [m.path]), 120, "operations")
        assert r["ok"], r
        st = subprocess.run([sys.executable, "-m", "s3fuse", "status", m.path, "--json"], capture_output=True,
                            text=True, timeout=30)
        st_text = subprocess.run([sys.executable, "-m", "s3fuse", "status"], capture_output=True, text=True,
                                 timeout=30)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        status_file = status.status_path(m.path)
        with open(status_file) as f:
            status_json = f.read()
        with urllib.request.urlopen(json.loads(status_json)["metrics"], timeout=10) as resp:
            metrics_text = resp.read().decode()
    finally:
        m.unmount()
    log = m.log()
    assert "DEBUG" in log, "the log ran at debug level"
    for what, text in (("log", log), ("status --json", st.stdout + st.stderr),
                       ("status", st_text.stdout + st_text.stderr), ("status file", status_json),
                       ("metrics", metrics_text)):
        assert secret not in text, f"the secret appears in the {what}"
    assert secret.encode() not in cmdline, "the secret is on the daemon's command line"
    hits = [h for h in grep_tree(m.cache_dir, secret.encode())]
    assert not hits, f"the secret is stored in the cache: {hits}"
    # error messages: an unreachable endpoint, a broken passwd file, a resume that fails
    dead = f"http://127.0.0.1:{_free_port()}"
    mp2 = tmp_path / "mp2"
    mp2.mkdir()
    env = clean_env({"AWS_ACCESS_KEY_ID": "AKIDX", "AWS_SECRET_ACCESS_KEY": secret})
    for args in ([bucket, str(mp2), "-o", f"endpoint={dead},cache_dir={tmp_path / 'c2'}"],):
        proc = run_helper(args, env)
        assert proc.returncode != 0 and secret not in proc.stdout + proc.stderr
    bad_pw = tmp_path / "badpw"
    bad_pw.write_text(f"{bucket}:AKID:{secret}:trailing\n")
    bad_pw.chmod(0o600)
    proc = run_helper([bucket, str(mp2), "-o", f"endpoint={s3_server.endpoint},passwd_file={bad_pw},"
                                                f"cache_dir={tmp_path / 'c3'}"], clean_env())
    assert proc.returncode != 0 and "line 1" in proc.stderr and secret not in proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "s3fuse", "resume", bucket, "-o",
                           f"endpoint={dead},cache_dir={tmp_path / 'c4'}"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and secret not in proc.stdout + proc.stderr
    assert not is_mounted(str(mp2))


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_passwd_file_permissions_enforced(s3_server, bucket, tmp_path):
    pw = tmp_path / "passwd"
    pw.write_text(f"{s3_server.access_key}:{s3_server.secret_key}\n")
    mp = tmp_path / "mp"
    mp.mkdir()
    args = [bucket, str(mp), "-o", f"endpoint={s3_server.endpoint},passwd_file={pw},cache_dir={tmp_path / 'c'}"]
    for mode in (0o644, 0o640, 0o604, 0o660):
        pw.chmod(mode)
        t0 = time.monotonic()
        proc = run_helper(args, clean_env())
        assert proc.returncode != 0, f"mode {mode:o} accepted"
        assert "chmod 600" in proc.stderr and time.monotonic() - t0 < 15
        assert s3_server.secret_key not in proc.stderr
        assert not is_mounted(str(mp))
    pw.chmod(0o600)
    proc = run_helper(args, clean_env())
    assert proc.returncode == 0, proc.stderr
    try:
        assert is_mounted(str(mp))
        assert os.listdir(mp) == []
    finally:
        unmount(str(mp))


# ---------------------------------------------------------------------------------------
# private cache files
# ---------------------------------------------------------------------------------------
def test_cache_files_private_during_write(s3, bucket, mounter):
    m = mounter(bucket, options=["part_size=5M"])
    code = r"""
fd = os.open(os.path.join(args[0], "inprogress.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, os.urandom(6 << 20))       # a full part streams: a journal record exists
hold()
os.close(fd)
result = True
"""
    proc = start_op(code, [m.path], hold=True)
    try:
        wait_ready(proc, 60, "writer")
        wait_for(lambda: os.listdir(os.path.join(m.cache_dir, "journal")), 30, "a journal record")
        staging = os.listdir(os.path.join(m.cache_dir, "staging"))
        assert staging, "a staging file exists while the file is open"
        checked = _assert_private(m.cache_dir)
        assert checked >= 5
        log_mode = stat.S_IMODE(os.stat(m.log_file).st_mode)
        assert log_mode & 0o077 == 0, f"log file mode {log_mode:o}"
        sp = status.status_path(m.path)
        assert stat.S_IMODE(os.stat(sp).st_mode) & 0o077 == 0
        assert stat.S_IMODE(os.stat(os.path.dirname(sp)).st_mode) & 0o077 == 0
        # the staging area is not reachable through the mount
        names = {n for _, dirs, files in os.walk(m.path) for n in dirs + files}
        assert not names & (set(staging) | {"staging", "journal", "lock"})
    finally:
        release(proc)
        r = finish_op(proc, 60, "writer")
    assert r["ok"], r
    _assert_private(m.cache_dir)


def _assert_private(root: str) -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [None] + filenames:
            p = dirpath if name is None else os.path.join(dirpath, name)
            try:
                mode = stat.S_IMODE(os.lstat(p).st_mode)
            except FileNotFoundError:
                continue
            assert mode & 0o077 == 0, f"{p} has mode {mode:o}: readable by others"
            n += 1
    return n


# ---------------------------------------------------------------------------------------
# allow_other: the kernel checks the stored mode/uid/gid
# ---------------------------------------------------------------------------------------
def as_user(uid: int, gid: int, calls: list, timeout: float = 30.0) -> list:
    """Run ``calls`` [(name, path)] in a forked child that setuid()s to uid/gid; returns
    [errno or None, ...].  name: read | write | list | stat | create."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:     # the child: os calls only, then _exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out = []
            for name, path in calls:
                try:
                    if name == "read":
                        with open(path, "rb") as f:
                            f.read()
                    elif name == "write":
                        os.close(os.open(path, os.O_WRONLY))
                    elif name == "list":
                        os.listdir(path)
                    elif name == "stat":
                        os.stat(path)
                    elif name == "create":
                        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                    out.append(None)
                except OSError as exc:
                    out.append(exc.errno)
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(r)
            raise AssertionError(f"child as uid {uid} hung")
        time.sleep(0.02)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    return json.loads(data)


@pytest.fixture
def open_root():
    """A world-traversable directory (pytest's tmp_path is 0700) for mounts others use."""
    root = tempfile.mkdtemp(prefix="s3fuse-sec-", dir="/tmp")
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_allow_other_checks_stored_permissions(s3_server, s3, bucket, open_root):
    if os.geteuid() != 0:
        pytest.skip("needs root (setuid to another user)")
    s3.put_object(Bucket=bucket, Key="nobody600.txt", Body=b"nobody's",
                  Metadata={"mode": str(stat.S_IFREG | 0o600), "uid": str(NOBODY), "gid": str(NOBODY)})
    s3.put_object(Bucket=bucket, Key="group640.txt", Body=b"group's",
                  Metadata={"mode": str(stat.S_IFREG | 0o640), "uid": "12345", "gid": str(NOBODY)})
    s3.put_object(Bucket=bucket, Key="other640.txt", Body=b"other's",
                  Metadata={"mode": str(stat.S_IFREG | 0o640), "uid": "12345", "gid": "12345"})
    m = Mount(s3_server, bucket, open_root, options=["allow_other"], name="shared")
    m.mount()
    try:
        with open(m.p("private.txt"), "wb") as f:
            f.write(b"root only")
        os.chmod(m.p("private.txt"), 0o600)
        with open(m.p("public.txt"), "wb") as f:
            f.write(b"everyone")
        os.chmod(m.p("public.txt"), 0o644)
        os.mkdir(m.p("closed"), 0o700)
        with open(m.p("closed", "inside.txt"), "wb") as f:
            f.write(b"inside")
        os.chmod(m.p("closed", "inside.txt"), 0o644)
        calls = [("read", m.p("private.txt")), ("read", m.p("public.txt")), ("write", m.p("public.txt")),
                 ("create", m.p("new-by-nobody.txt")), ("list", m.p("closed")), ("read", m.p("closed", "inside.txt")),
                 ("read", m.p("nobody600.txt")), ("write", m.p("nobody600.txt")), ("read", m.p("group640.txt")),
                 ("read", m.p("other640.txt")), ("list", m.path)]
        got = as_user(NOBODY, NOBODY, calls)
        want = [errno.EACCES, None, errno.EACCES, errno.EACCES, errno.EACCES, errno.EACCES, None, None, None,
                errno.EACCES, None]
        assert dict(zip([f"{n} {os.path.relpath(p, m.path)}" for n, p in calls], got)) == \
            dict(zip([f"{n} {os.path.relpath(p, m.path)}" for n, p in calls], want))
        # stored in the bucket as they are checked
        meta = s3.head_object(Bucket=bucket, Key="private.txt")["Metadata"]
        assert int(meta["mode"]) & 0o777 == 0o600 and meta["uid"] == "0"
        assert bucket_md5(s3, bucket, "new-by-nobody.txt") is None
    finally:
        m.unmount()
    # without allow_other another user cannot even look
    m2 = Mount(s3_server, bucket, open_root, name="own")
    m2.mount()
    try:
        assert as_user(NOBODY, NOBODY, [("stat", m2.p("public.txt")), ("list", m2.path)]) == [errno.EACCES] * 2
    finally:
        m2.unmount()


# ---------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------
BAD_KEYS = {
    "sec/../escape.txt": b"ESCAPE-1", "sec/./dot.txt": b"ESCAPE-2", "sec//double.txt": b"ESCAPE-3",
    "sec/" + "n" * 300 + ".txt": b"ESCAPE-4", "sec/" + "d" * 300 + "/x.txt": b"ESCAPE-5",
    "../outside.txt": b"ESCAPE-6", "./here.txt": b"ESCAPE-7", "/leading.txt": b"ESCAPE-8",
    "sec/..": b"ESCAPE-9", "sec/.": b"ESCAPE-10", "sec/a/../../b.txt": b"ESCAPE-11", "..": b"ESCAPE-12",
}


def test_keys_that_cannot_be_paths(s3, bucket, mounter):
    for key, body in BAD_KEYS.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.put_object(Bucket=bucket, Key="sec/ok.txt", Body=b"fine")
    m = mounter(bucket, options=["meta=exact"])
    # "sec/a/../../b.txt" implies a directory "a" (a valid name) that lists empty
    assert sorted(os.listdir(m.p("sec"))) == ["a", "ok.txt"]
    assert os.listdir(m.p("sec", "a")) == []
    assert sorted(os.listdir(m.path)) == ["sec"]
    # walk everything reachable: no entry is one of the bad keys, no file holds their bytes
    seen = []
    for dirpath, dirnames, filenames in os.walk(m.path):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                seen.append((os.path.relpath(os.path.join(dirpath, name), m.path), f.read()))
    assert seen == [("sec/ok.txt", b"fine")]
    # paths that spell the bad keys resolve (in the kernel) to other names, which do not exist
    for rel in ("sec/../escape.txt", "sec/./dot.txt", "sec//double.txt", "outside.txt", "here.txt", "leading.txt",
                "b.txt", "sec/a/../../b.txt", "escape.txt"):
        with pytest.raises(FileNotFoundError):
            open(os.path.join(m.path, rel), "rb").read()
    with pytest.raises(OSError) as info:
        os.stat(m.p("sec", "n" * 300 + ".txt"))
    assert info.value.errno in (errno.ENOENT, errno.ENAMETOOLONG)     # never the object
    assert "skipping key" in m.log()
    # the bad objects are untouched
    for key, body in BAD_KEYS.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body


def test_long_keys_fail_with_enametoolong(s3, bucket, mounter):
    m = mounter(bucket)
    comps = ["c" * 250, "d" * 250, "e" * 250, "f" * 250]          # "c../d../e../f.." = 1003 bytes
    path = m.path
    for c in comps:
        path = os.path.join(path, c)
        os.mkdir(path)
    assert os.path.isdir(path)

    def err(fn, *args):
        try:
            fn(*args)
        except OSError as exc:
            return exc.errno
        return None

    def create(p):
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644))
    assert err(create, os.path.join(path, "x" * 20)) is None                 # key of 1024 bytes
    assert err(create, os.path.join(path, "y" * 21)) == errno.ENAMETOOLONG   # 1025
    assert err(os.mkdir, os.path.join(path, "z" * 20)) == errno.ENAMETOOLONG  # marker "z.../" 1025
    assert err(os.symlink, "t", os.path.join(path, "s" * 30)) == errno.ENAMETOOLONG
    assert err(os.rename, os.path.join(path, "x" * 20), os.path.join(path, "w" * 40)) == errno.ENAMETOOLONG
    assert err(create, m.p("n" * 256)) == errno.ENAMETOOLONG
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert max(len(k.encode()) for k in keys) <= 1024
    assert "/".join(comps) + "/" + "x" * 20 in keys


def test_long_keys_count_the_mount_prefix(s3, bucket, mounter):
    prefix = "p" * 100
    m = mounter(bucket, prefix=prefix)
    path = m.p("a" * 250, "b" * 250, "c" * 250)
    os.makedirs(path)                                     # marker: 101 + 753 bytes
    with pytest.raises(OSError) as info:
        open(os.path.join(path, "x" * 200), "wb").close()     # 101 + 752 + 201 > 1024
    assert info.value.errno == errno.ENAMETOOLONG
    open(os.path.join(path, "x" * 100), "wb").close()
    assert all(len(o["Key"]) <= 1024 for o in s3.list_objects_v2(Bucket=bucket)["Contents"])


# ---------------------------------------------------------------------------------------
# the staging area stays out of the mount
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("inside", ["cache_dir", "log_file"])
def test_cache_or_log_inside_the_mountpoint_refused(s3_server, bucket, tmp_path, inside):
    mp = tmp_path / "mp"
    mp.mkdir()
    opts = {"endpoint": s3_server.endpoint, "cache_dir": str(tmp_path / "cache"), "log_file": str(tmp_path / "log")}
    opts[inside] = str(mp / ("sub/cache" if inside == "cache_dir" else "s3fuse.log"))
    env = clean_env(s3_server.env())
    t0 = time.monotonic()
    proc = run_helper([bucket, str(mp), "-o", ",".join(f"{k}={v}" for k, v in opts.items())], env)
    try:
        assert proc.returncode != 0, "a mount whose staging/log area is inside itself was accepted"
        assert "inside the mountpoint" in proc.stderr and time.monotonic() - t0 < 15
    finally:
        unmount(str(mp))
    assert not is_mounted(str(mp))
