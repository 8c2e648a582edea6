"""Credentials that stay fresh (issue #23 item 2), through real mounts of RGW, a server
that checks every signature.

Keys are issued and removed on the server with radosgw-admin (on the fixture's user) while
the mount is busy; the mount gets its keys from botocore's chain only:

- a profile's ``credential_process`` (a shell script printing the JSON of a file the test
  rewrites), with an ``Expiration`` 13 minutes ahead: inside botocore's advisory window
  (15 minutes), so every request asks the process again and a rotation is seen at once;
- the container credentials endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI`` on
  127.0.0.1, with ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``), as ECS and EKS Pod
  Identity serve them, from a tiny HTTP server in the test (keys and token rotated).

A rotation (issue key B, hand out B, remove key A) under reads, writes, listings and a
multipart upload in flight loses nothing (bytes compared, no failed operation); keys
revoked on the server, or a source that fails while the keys are in botocore's mandatory
window, give EACCES at once and one log line each, and work again once the source does.
"""
from __future__ import annotations

import datetime
import errno
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
import uuid

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from ..support.mounts import Mount
from ..support.probes import bucket_md5, daemon_stats, delta, requests, wait_for

pytestmark = pytest.mark.servers("rgw")

USER = "s3fuse"        # the fixture's RGW user (tests/support/servers/rgw.sh)
FRESH = ["attr_ttl=0", "dir_ttl=0", "negative_ttl=0"]     # objects the test puts are seen at once


# -- keys on the server ---------------------------------------------------------------------
def admin(server, *args):
    conf = os.path.join(server.run_dir, "ceph.conf")
    proc = subprocess.run(["radosgw-admin", "-c", conf, "-n", "client.admin", *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"radosgw-admin {' '.join(args)}: {proc.stderr[-2000:]}"


def key_client(server, key):
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=key[0],
                        aws_secret_access_key=key[1], config=Config(s3={"addressing_style": "path"},
                                                                    retries={"max_attempts": 1}))


def works(server, key, bucket) -> bool:
    try:
        key_client(server, key).head_bucket(Bucket=bucket)
        return True
    except botocore.exceptions.ClientError:
        return False


def issue_key(server, bucket):
    key = ("CR" + uuid.uuid4().hex[:18].upper(), uuid.uuid4().hex + uuid.uuid4().hex[:8])
    admin(server, "key", "create", f"--uid={USER}", "--key-type=s3", f"--access-key={key[0]}",
          f"--secret-key={key[1]}")
    wait_for(lambda: works(server, key, bucket), 20, f"key {key[0]} to work")
    return key


def remove_key(server, key, bucket):
    admin(server, "key", "rm", f"--uid={USER}", "--key-type=s3", f"--access-key={key[0]}")
    wait_for(lambda: not works(server, key, bucket), 20, f"key {key[0]} to be refused")


@pytest.fixture
def keys(s3_server):
    """issue(bucket) -> a new key of the fixture's user; removed again at teardown."""
    made = []

    def issue(bucket):
        made.append(issue_key(s3_server, bucket))
        return made[-1]
    yield issue
    for key in made:
        subprocess.run(["radosgw-admin", "-c", os.path.join(s3_server.run_dir, "ceph.conf"), "-n", "client.admin",
                        "key", "rm", f"--uid={USER}", "--key-type=s3", f"--access-key={key[0]}"],
                       capture_output=True, timeout=60)


# -- credential sources -------------------------------------------------------------------
def expiration(minutes: float) -> str:
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


class ProcessSource:
    """A profile whose credential_process prints ``current.json`` (and counts its runs);
    ``fail`` makes it exit 1 with a message on stderr."""

    def __init__(self, root):
        self.root = root
        self.json = os.path.join(root, "current.json")
        self.runs = os.path.join(root, "runs")
        self.failing = os.path.join(root, "fail")
        script = os.path.join(root, "creds.sh")
        with open(script, "w") as f:
            f.write(f"#!/bin/sh\necho >> {self.runs}\n"
                    f"if [ -e {self.failing} ]; then echo 'token service unreachable' >&2; exit 1; fi\n"
                    f"cat {self.json}\n")
        os.chmod(script, 0o755)
        self.config = os.path.join(root, "aws-config")
        with open(self.config, "w") as f:
            f.write(f"[profile rotating]\ncredential_process = {script}\nregion = us-east-1\n")

    def hand_out(self, key, minutes=13.0):
        tmp = self.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"Version": 1, "AccessKeyId": key[0], "SecretAccessKey": key[1],
                       "Expiration": expiration(minutes)}, f)
        os.replace(tmp, self.json)

    def fail(self, failing=True):
        if failing:
            open(self.failing, "w").close()
        elif os.path.exists(self.failing):
            os.unlink(self.failing)

    def run_count(self) -> int:
        try:
            with open(self.runs) as f:
                return len(f.read().splitlines())
        except FileNotFoundError:
            return 0

    def env(self):
        return {"AWS_CONFIG_FILE": self.config}


class ContainerSource:
    """The container credentials endpoint of ECS / EKS Pod Identity: GET with a valid
    authorization token (read by botocore from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE at
    each fetch, as the Pod Identity agent's projected token is) answers the current keys."""

    def __init__(self, root):
        self.body = b"{}"
        self.served = self.refused = 0
        self.served_to: dict = {}                # token -> requests answered with it
        self.token_file = os.path.join(root, "pod-identity-token")
        self.tokens: set = set()
        self.new_token()
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/v1/credentials" or self.headers.get("Authorization") not in source.tokens:
                    source.refused += 1
                    self.send_response(403)
                    self.end_headers()
                    return
                source.served += 1
                token = self.headers.get("Authorization")
                source.served_to[token] = source.served_to.get(token, 0) + 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(source.body)))
                self.end_headers()
                self.wfile.write(source.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def hand_out(self, key, minutes=13.0):
        # Token "": RGW has no STS session for these keys (an empty one is not sent)
        self.body = json.dumps({"AccessKeyId": key[0], "SecretAccessKey": key[1], "Token": "",
                                "Expiration": expiration(minutes)}).encode()

    def new_token(self) -> str:
        """A new token in the file (the old one stays valid until ``tokens`` is changed)."""
        token = "pod-identity-token-" + uuid.uuid4().hex
        self.tokens.add(token)
        with open(self.token_file + ".tmp", "w") as f:
            f.write(token)
        os.replace(self.token_file + ".tmp", self.token_file)
        return token

    def env(self):
        return {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{self.httpd.server_port}/v1/credentials",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": self.token_file}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class ChainMount(Mount):
    """A mount whose only credentials are those of ``source`` (no keys in the environment,
    no ~/.aws files)."""

    def __init__(self, server, bucket, root, source, options=()):
        super().__init__(server, bucket, root, options=options)
        self.source, self.root = source, root

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_CONFIG_FILE": os.path.join(self.root, "no-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.root, "no-credentials")})
        env.update(self.source.env())
        return env


@pytest.fixture
def chain_mount(s3_server, tmp_path):
    mounts = []

    def make(bucket, source, options=()):
        m = ChainMount(s3_server, bucket, str(tmp_path), source, options)
        mounts.append(m)
        return m.mount()
    yield make
    for m in mounts:
        m.unmount()
    for m in mounts:
        log = m.log()
        assert "failed unexpectedly" not in log, log[-4000:]
        assert "through botocore (" not in log, log[-4000:]
        assert "Traceback" not in log, f"a traceback in {m.log_file}:\n{log[-4000:]}"


# -- a busy mount ------------------------------------------------------------------------
class Workload:
    """Threads that keep a mount busy until ``stop()``: new files written (and later
    compared with the bucket), files the test put in the bucket read back, listings, and
    one large file written slowly (a multipart upload in flight all along)."""

    def __init__(self, m, s3, bucket, big_chunks=0, big_pause=0.4):
        self.big_pause, self.big_closed = big_pause, None
        self.m, self.s3, self.bucket = m, s3, bucket
        self.written: dict = {}
        self.failures: list = []
        self.ops = 0
        self.done = threading.Event()
        self.big = b"".join(os.urandom(1 << 20) for _ in range(big_chunks))
        self.threads = [threading.Thread(target=self._guard, args=(f,)) for f in (self._writes, self._reads)]
        if big_chunks:
            self.threads.append(threading.Thread(target=self._guard, args=(self._big,)))

    def start(self):
        os.makedirs(self.m.p("w"), exist_ok=True)
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads), "a workload thread hangs"

    def _guard(self, work):
        try:
            work()
        except Exception as exc:       # reported by the test
            self.failures.append(f"{work.__name__}: {exc!r}")

    def _writes(self):
        n = 0
        while not self.done.is_set():
            data = os.urandom(20_000 + n * 97)
            name = f"w/f{n:04d}"
            with open(self.m.p(name), "wb") as f:
                f.write(data)
            self.written[name] = data
            self.ops += 1
            if n % 5 == 0:                    # a metadata rewrite: CopyObject, through botocore
                os.chmod(self.m.p(name), 0o640)
                self.ops += 1
            n += 1

    def _reads(self):
        n = 0
        while not self.done.is_set():
            data = os.urandom(50_000)
            key = f"r/g{n:04d}"
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
            with open(self.m.p(key), "rb") as f:
                if f.read() != data:
                    raise AssertionError(f"{key}: other bytes read")
            os.listdir(self.m.p("r"))
            self.ops += 2
            n += 1

    def _big(self):
        with open(self.m.p("big.bin"), "wb") as f:
            for i in range(0, len(self.big), 1 << 20):
                f.write(self.big[i:i + (1 << 20)])
                time.sleep(self.big_pause)
        self.big_closed = time.monotonic()
        self.written["big.bin"] = self.big

    def check_bucket(self):
        for name, data in self.written.items():
            body = self.s3.get_object(Bucket=self.bucket, Key=name)["Body"].read()
            assert hashlib.md5(body).hexdigest() == hashlib.md5(data).hexdigest(), f"{name}: other bytes in the bucket"


def total_requests(m) -> tuple:
    st = daemon_stats(m)
    return sum(st["requests"].values()), st["errors"]


def log_lines(m, text) -> int:
    return sum(text in line for line in m.log().splitlines())


def rotate(server, source, bucket, old, keys, m):
    """Issue key B, hand it out, wait until the mount signs with it, remove A."""
    new = keys(bucket)
    source.hand_out(new)
    wait_for(lambda: f"new access key ...{new[0][-4:]}" in m.log(), 20, "the mount to take the new key")
    remove_key(server, old, bucket)
    return new


# -- tests ------------------------------------------------------------------------------------
@pytest.mark.long(40)
def test_credential_process_keys_rotated_on_the_server_while_the_mount_is_busy(s3_server, s3, bucket, keys,
                                                                               chain_mount, tmp_path):
    source = ProcessSource(str(tmp_path))
    key_a = keys(bucket)
    source.hand_out(key_a)
    m = chain_mount(bucket, source, ["profile=rotating", "part_size=5M"] + FRESH)
    before = requests(m)
    work = Workload(m, s3, bucket, big_chunks=30).start()      # 30 MiB written over 12 s: 6 parts
    time.sleep(3)
    runs_before = source.run_count()
    key_b = rotate(s3_server, source, bucket, key_a, keys, m)
    a_removed = time.monotonic()
    assert not works(s3_server, key_a, bucket) and works(s3_server, key_b, bucket)
    time.sleep(4)                        # busy on key B alone, A refused by the server
    key_c = rotate(s3_server, source, bucket, key_b, keys, m)
    time.sleep(2)
    work.stop()
    assert work.failures == []
    assert work.big_closed > a_removed, "the multipart upload was in flight across the rotation"
    made = delta(requests(m), before)
    assert made["upload_part"] >= 5 and made["complete_multipart_upload"] >= 1 and made["copy_object"] > 3, made
    with open(m.p("w", "after"), "wb") as f:           # and afterwards, with key C only
        f.write(b"after the rotations")
    work.written["w/after"] = b"after the rotations"
    work.check_bucket()
    assert len(work.written) > 20 and "big.bin" in work.written
    sent, failed = total_requests(m)
    print(f"\nrotation run: {sent} requests ({made}), {work.ops} file operations, {failed} failed; "
          f"{log_lines(m, 'sent again')} requests refused mid-rotation and sent again; credential_process "
          f"ran {source.run_count()} times ({source.run_count() - runs_before} since the first rotation); "
          f"keys A={key_a[0][-4:]} B={key_b[0][-4:]} C={key_c[0][-4:]}")
    assert failed == 0
    log = m.log()
    assert "could not be renewed" not in log and "refuses the credentials" not in log, log[-3000:]


def test_revoked_keys_give_eacces_and_one_line_then_work_again(s3_server, s3, bucket, keys, chain_mount, tmp_path):
    source = ProcessSource(str(tmp_path))
    key = keys(bucket)
    source.hand_out(key)
    m = chain_mount(bucket, source, ["profile=rotating", "retry_interval=1"])
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"r{i}", Body=b"data %d" % i)
    with open(m.p("r0"), "rb") as f:
        assert f.read() == b"data 0"
    kept = open(m.p("kept.txt"), "wb")               # opened before, closed after the revocation
    remove_key(s3_server, key, bucket)               # revoked; the source still hands it out
    kept.write(b"written while the key was revoked")
    with pytest.raises(PermissionError) as info:
        kept.close()
    assert info.value.errno == errno.EACCES
    started = time.monotonic()
    for attempt in range(5):
        with pytest.raises(PermissionError) as info:
            open(m.p("r1"), "rb").read()
        assert info.value.errno == errno.EACCES
        with pytest.raises(PermissionError):
            with open(m.p(f"new{attempt}"), "wb") as f:
                f.write(b"x")
    assert time.monotonic() - started < 30, "refusals must be quick"
    lines = [line for line in m.log().splitlines() if "s3fuse.s3: the server refuses the credentials" in line]
    assert len(lines) == 1, m.log()[-4000:]
    assert "credential_process" in lines[0] and f"...{key[0][-4:]}" in lines[0] and "EACCES" in lines[0]
    assert key[1] not in m.log()
    fresh = keys(bucket)
    source.hand_out(fresh)                           # a new key: works again without a remount
    time.sleep(5.5)                                  # past chain.RETRY_AFTER
    with open(m.p("r2"), "rb") as f:
        assert f.read() == b"data 2"
    # the upload refused at close was kept in the journal and is sent with the new key
    wait_for(lambda: bucket_md5(s3, bucket, "kept.txt") is not None, 20, "the kept upload in the bucket")
    assert s3.get_object(Bucket=bucket, Key="kept.txt")["Body"].read() == b"written while the key was revoked"
    print("\n" + "\n".join(lines))


def test_a_failing_source_in_the_mandatory_window_gives_eacces_and_one_line(s3_server, s3, bucket, keys,
                                                                           chain_mount, tmp_path):
    source = ProcessSource(str(tmp_path))
    key = keys(bucket)
    source.hand_out(key, minutes=5)                  # inside botocore's mandatory window (10 minutes)
    m = chain_mount(bucket, source, ["profile=rotating"])
    for i in range(4):
        s3.put_object(Bucket=bucket, Key=f"r{i}", Body=b"data %d" % i)
    with open(m.p("r0"), "rb") as f:
        assert f.read() == b"data 0"
    source.fail()
    started = time.monotonic()
    for name in ("r1", "r2", "r3"):
        with pytest.raises(PermissionError) as info:
            open(m.p(name), "rb").read()
        assert info.value.errno == errno.EACCES
    assert time.monotonic() - started < 30, "never a hang"
    lines = [line for line in m.log().splitlines() if "could not be renewed" in line]
    assert len(lines) == 1, m.log()[-4000:]
    assert "credential_process" in lines[0] and "profile 'rotating'" in lines[0] and \
        "token service unreachable" in lines[0] and "run the command by hand" in lines[0]
    source.fail(False)
    time.sleep(5.5)
    with open(m.p("r1"), "rb") as f:
        assert f.read() == b"data 1"
    assert "renewed again" in m.log()
    print("\n" + "\n".join(line for line in m.log().splitlines() if "credentials" in line))


@pytest.mark.long(25)
def test_container_credentials_rotated_while_the_mount_is_busy(s3_server, s3, bucket, keys, chain_mount, tmp_path):
    source = ContainerSource(str(tmp_path))
    try:
        key_a = keys(bucket)
        source.hand_out(key_a)
        m = chain_mount(bucket, source, FRESH)
        work = Workload(m, s3, bucket).start()
        time.sleep(2)
        key_b = rotate(s3_server, source, bucket, key_a, keys, m)
        # The agent's token rotates too.  As the Pod Identity agent does, the old token stays
        # valid for a while: a fetch that read the file just before the change is not refused.
        token = source.new_token()
        wait_for(lambda: source.served_to.get(token, 0) > 0, 10, "a fetch with the new token")
        source.tokens = {token}
        served = source.served_to[token]
        wait_for(lambda: source.served_to[token] > served, 10, "fetches with the new token alone")
        work.stop()
        assert work.failures == []
        work.check_bucket()
        sent, failed = total_requests(m)
        print(f"\ncontainer rotation: {sent} requests, {work.ops} file operations, {failed} failed; "
              f"endpoint served {source.served} times, refused {source.refused}; B={key_b[0][-4:]}")
        assert failed == 0 and source.served > 2 and source.refused == 0
        assert "container credentials endpoint" in m.log()
    finally:
        source.close()
