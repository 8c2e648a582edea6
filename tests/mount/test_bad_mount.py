"""Mounts that cannot work: each exits non-zero within seconds, says why in one readable
line on stderr (never a traceback), and leaves neither a mount nor a daemon behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import boto3
import pytest
from botocore.config import Config

from ..support.mounts import MOUNT_HELPER, Mount, is_mounted
from ..support.servers import KINDS, MotoServer, free_port

LIMIT = 15.0   # seconds a failing mount may take

# Most failures here are found before any S3 request (options, mountpoints) or need moto's
# switchable authentication: one server is enough.  Those that depend on the server's own
# answers (a missing bucket, refused keys) run on every server.
pytestmark = pytest.mark.servers("moto")
EVERY_SERVER = pytest.mark.servers(*KINDS)


def daemons_for(path: str) -> list:
    """PIDs of mount.s3fuse processes whose command line names ``path``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"mount.s3fuse") for a in argv) and path.encode() in argv:
            pids.append(int(pid))
    return pids


def run_mount(args, env, timeout=60):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, MOUNT_HELPER] + list(args), env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def assert_fails(proc, elapsed, mountpoint, *words):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"mount succeeded: {out}"
    assert elapsed < LIMIT, f"failing mount took {elapsed:.1f}s"
    assert "Traceback" not in out, out
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {proc.stderr!r}"
    line = lines[0]
    assert line.startswith("s3fuse: ") and len(line) < 400, line
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    assert not is_mounted(mountpoint), f"{mountpoint} left mounted"
    deadline = time.monotonic() + 3
    while daemons_for(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemons_for(mountpoint) == [], "a daemon process was left running"
    return line


@pytest.fixture
def env(s3_server):
    e = dict(os.environ)
    e.update(s3_server.env())
    return e


@pytest.fixture
def mp(tmp_path):
    path = tmp_path / "mnt"
    path.mkdir()
    return str(path)


def base_opts(server_endpoint, tmp_path, extra=()):
    return ",".join([f"endpoint={server_endpoint}", f"cache_dir={tmp_path / 'cache'}",
                     f"log_file={tmp_path / 'mount.log'}"] + list(extra))


# ---------------------------------------------------------------------------------------
# S3-side failures (checked by the daemon before it mounts)
# ---------------------------------------------------------------------------------------
@EVERY_SERVER
def test_no_such_bucket(s3_server, env, mp, tmp_path):
    missing = "no-such-" + uuid.uuid4().hex[:10]
    proc, elapsed = run_mount([missing, mp, "-o", base_opts(s3_server.endpoint, tmp_path)], env)
    assert_fails(proc, elapsed, mp, missing, "does not exist")


def test_endpoint_unreachable(env, mp, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"      # nothing listens there
    proc, elapsed = run_mount(["somebucket", mp, "-o", base_opts(closed, tmp_path)], env)
    assert_fails(proc, elapsed, mp, "cannot reach", closed)


def test_endpoint_that_never_answers(env, mp, tmp_path):
    """A server that accepts connections but never responds (a hung proxy): the probe's
    short timeouts fail the mount within seconds, with default options."""
    import socket
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc, elapsed = run_mount(["somebucket", mp, "-o", base_opts(url, tmp_path)], env)
    assert_fails(proc, elapsed, mp, "cannot reach")


def test_no_credentials(s3_server, bucket, mp, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", HOME=str(tmp_path))
    proc, elapsed = run_mount([bucket, mp, "-o", base_opts(s3_server.endpoint, tmp_path)], env)
    assert_fails(proc, elapsed, mp, "credentials")


# moto accepts any keys by default.  A server of our own, with IAM authentication switched
# on (moto's /moto-api/reset-auth, the server-mode twin of INITIAL_NO_AUTH_ACTION_COUNT=0)
# after creating a user whose key is allowed s3:*, rejects unknown keys
# (InvalidAccessKeyId) and wrong secrets (SignatureDoesNotMatch) with 403 - as AWS does.
@pytest.fixture(scope="module")
def auth_server():
    server = MotoServer().start()
    try:
        def client(service, access=server.access_key, secret=server.secret_key):
            return boto3.client(service, endpoint_url=server.endpoint, region_name="us-east-1",
                                aws_access_key_id=access, aws_secret_access_key=secret,
                                config=Config(s3={"addressing_style": "path"},
                                              request_checksum_calculation="when_required",
                                              response_checksum_validation="when_required"))
        iam = client("iam")
        iam.create_user(UserName="mounter")
        key = iam.create_access_key(UserName="mounter")["AccessKey"]
        iam.put_user_policy(UserName="mounter", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        s3 = client("s3")
        s3.create_bucket(Bucket="authed")
        s3.put_object(Bucket="authed", Key="hello.txt", Body=b"hello")
        req = urllib.request.Request(server.endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()
        server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        # authentication is really on now: the default test keys are refused
        with pytest.raises(Exception) as info:
            client("s3", "testing-access", "testing-secret").list_objects_v2(Bucket="authed")
        assert "InvalidAccessKeyId" in str(info.value)
        yield server
    finally:
        server.stop()


def test_good_credentials_mount_on_auth_server(auth_server, tmp_path):
    """Control for the next test: the same server accepts the right key (from a passwd_file)."""
    passwd = tmp_path / "passwd"
    passwd.write_text(f"authed:{auth_server.access_key}:{auth_server.secret_key}\n")
    passwd.chmod(0o600)
    m = Mount(auth_server, "authed", str(tmp_path), options=[f"passwd_file={passwd}"], name="good")
    env_without_keys = {k: v for k, v in m.env().items() if not k.startswith("AWS_ACCESS_KEY_ID")
                        and not k.startswith("AWS_SECRET_ACCESS_KEY")}
    proc = subprocess.run(m.args(), env=env_without_keys, capture_output=True, text=True, timeout=60)
    try:
        assert proc.returncode == 0, proc.stderr
        assert is_mounted(m.path)
        # Browsing is not checked here: moto's SigV4 check rejects any request with a '/'
        # in a query value (Prefix=a/, Delimiter=/) as SignatureDoesNotMatch, a moto bug;
        # the mount-time probe (ListObjectsV2 MaxKeys=1) has none, so it shows the key works.
        assert os.stat(m.path).st_mode & 0o040000
    finally:
        m.unmount()
    assert not is_mounted(m.path)


@pytest.mark.parametrize("which", ["unknown-key", "wrong-secret"])
def test_bad_credentials(auth_server, which, mp, tmp_path):
    env = dict(os.environ)
    env.update(auth_server.env())
    if which == "unknown-key":
        env["AWS_ACCESS_KEY_ID"] = "AKIAIOSFODNN7NOTREAL"
    else:
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    proc, elapsed = run_mount(["authed", mp, "-o", base_opts(auth_server.endpoint, tmp_path)], env)
    line = assert_fails(proc, elapsed, mp, "denied", "credentials")
    assert "not-the-secret" not in line and "not-the-secret" not in (tmp_path / "mount.log").read_text()


@pytest.mark.servers("rgw")
@pytest.mark.parametrize("which", ["unknown-key", "wrong-secret"])
def test_bad_credentials_real_server(s3_server, bucket, which, mp, tmp_path):
    """RGW checks signatures (moto only with the auth switch above): a refused key is one
    readable line naming the credentials, and the secret never shows."""
    env = dict(os.environ)
    env.update(s3_server.env())
    if which == "unknown-key":
        env["AWS_ACCESS_KEY_ID"] = "AKIAIOSFODNN7NOTREAL"
    else:
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    proc, elapsed = run_mount([bucket, mp, "-o", base_opts(s3_server.endpoint, tmp_path)], env)
    line = assert_fails(proc, elapsed, mp, "denied", "credentials")
    assert "not-the-secret" not in line and "not-the-secret" not in (tmp_path / "mount.log").read_text()


# ---------------------------------------------------------------------------------------
# local failures (checked before the daemon starts)
# ---------------------------------------------------------------------------------------
def test_mountpoint_missing(s3_server, env, bucket, tmp_path):
    missing = str(tmp_path / "does-not-exist")
    proc, elapsed = run_mount([bucket, missing, "-o", base_opts(s3_server.endpoint, tmp_path)], env)
    assert_fails(proc, elapsed, missing, "does not exist")
    assert not os.path.exists(missing)


def test_mountpoint_is_a_file(s3_server, env, bucket, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    proc, elapsed = run_mount([bucket, str(target), "-o", base_opts(s3_server.endpoint, tmp_path)], env)
    assert_fails(proc, elapsed, str(target), "not a directory")


def test_mountpoint_already_mounted(s3, s3_server, env, bucket, mounter, tmp_path):
    s3.put_object(Bucket=bucket, Key="present", Body=b"p")
    m = mounter(bucket)
    pid = m.daemon_pid()
    proc, elapsed = run_mount([bucket, m.path, "-o", base_opts(s3_server.endpoint, tmp_path)], env)
    assert proc.returncode != 0 and elapsed < LIMIT
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "already mounted" in lines[0] and "Traceback" not in proc.stderr
    # the first mount is untouched: still one mount there, same daemon, still serving
    with open("/proc/mounts") as f:
        assert sum(1 for line in f if line.split()[1] == m.path) == 1
    assert daemons_for(m.path) == [pid]
    assert os.listdir(m.path) == ["present"]


def test_unknown_option(s3_server, env, bucket, mp, tmp_path):
    proc, elapsed = run_mount([bucket, mp, "-o", base_opts(s3_server.endpoint, tmp_path, ["bogus_option=1"])], env)
    assert_fails(proc, elapsed, mp, "unknown option", "bogus_option")


@pytest.mark.parametrize("option, word", [
    ("block_size=huge", "block_size"),
    ("umask=999", "umask"),
    ("meta=fancy", "meta"),
    ("read_threads=0", "read_threads"),
    ("endpoint=ftp://example.com", "endpoint"),
    ("uid", "uid"),
])
def test_bad_option_value(s3_server, env, bucket, mp, tmp_path, option, word):
    proc, elapsed = run_mount([bucket, mp, "-o", base_opts(s3_server.endpoint, tmp_path, [option])], env)
    assert_fails(proc, elapsed, mp, word)


@pytest.mark.parametrize("args, word", [
    (["-x"], "unknown argument"),
    (["-o"], "-o needs"),
    ([], "expected"),
])
def test_bad_command_line(env, mp, args, word):
    proc, elapsed = run_mount(["somebucket", mp] + args if args else [mp], env)
    assert_fails(proc, elapsed, mp, word)


def test_bad_bucket_name(s3_server, env, mp, tmp_path):
    proc, elapsed = run_mount(["Bad Bucket!", mp, "-o", base_opts(s3_server.endpoint, tmp_path)], env)
    assert_fails(proc, elapsed, mp, "bucket")


def test_passwd_file_readable_by_others(s3_server, env, bucket, mp, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("AKIAEXAMPLE:secret-value\n")
    passwd.chmod(0o644)
    proc, elapsed = run_mount([bucket, mp, "-o", base_opts(s3_server.endpoint, tmp_path,
                                                           [f"passwd_file={passwd}"])], env)
    line = assert_fails(proc, elapsed, mp, "passwd_file", "chmod 600")
    assert "secret-value" not in line
