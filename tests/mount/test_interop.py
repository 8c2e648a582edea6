"""Living with other writers of the same bucket: their metadata changes are seen, their
headers survive what the mount does, new objects are found by name, other tools'
directory markers are understood - with the real tools as the other writers (boto3,
the aws CLI, s3fs-fuse mounted on the same bucket)."""
from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import time

import pytest

from ..support.mounts import Mount, unmount

AWS = "/opt/s3fuse-awscli/bin/aws"      # tests/support/servers/install-tools.sh (a venv of its own)
WEB = dict(ContentType="text/html; charset=utf-8", CacheControl="max-age=3600, public",
           ContentDisposition='inline; filename="index.html"', ContentLanguage="en",
           Expires="Thu, 01 Jan 2037 00:00:00 GMT", Metadata={"owner": "cms", "revision": "42"})


def head(s3, bucket, key) -> dict:
    return s3.head_object(Bucket=bucket, Key=key)


def settle(check, limit: float, what: str):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {limit} s")


def assert_web_headers_kept(h: dict, what: str):
    for name in ("ContentType", "CacheControl", "ContentDisposition", "ContentLanguage"):
        assert h.get(name) == WEB[name], f"{what}: {name} {h.get(name)!r}"
    assert h.get("ExpiresString", h.get("Expires")) and "2037" in str(h.get("ExpiresString", h.get("Expires"))), what
    assert h["Metadata"].get("owner") == "cms" and h["Metadata"].get("revision") == "42", f"{what}: {h['Metadata']}"


# -- another client's metadata change ------------------------------------------------------
def test_metadata_change_by_another_client_is_seen_live_and_after_remount(s3, bucket, mounter):
    """A chmod by another host is a CopyObject onto the same key: same content and ETag,
    new LastModified.  The mount shows the new mode once its attributes expire, and a
    remount with the same cache_dir never shows the old one."""
    s3.put_object(Bucket=bucket, Key="f", Body=b"same bytes", Metadata={"mode": str(stat.S_IFREG | 0o644)})
    m = mounter(bucket, options=["attr_ttl=1", "dir_ttl=1"])
    assert stat.S_IMODE(os.stat(m.p("f")).st_mode) == 0o644
    assert os.listdir(m.p()) == ["f"]
    etag = head(s3, bucket, "f")["ETag"]
    time.sleep(1.1)                  # LastModified has whole seconds
    s3.copy_object(Bucket=bucket, Key="f", CopySource={"Bucket": bucket, "Key": "f"},
                   Metadata={"mode": str(stat.S_IFREG | 0o600), "uid": "4242"}, MetadataDirective="REPLACE")
    assert head(s3, bucket, "f")["ETag"] == etag, "the content, hence the ETag, did not change"
    settle(lambda: os.listdir(m.p()) == ["f"] and stat.S_IMODE(os.stat(m.p("f")).st_mode) == 0o600,
           5, "the new mode on the live mount")
    assert os.stat(m.p("f")).st_uid == 4242
    m.unmount()
    again = Mount(m.server, bucket, os.path.dirname(m.path), name=os.path.basename(m.path))
    again.mount()
    try:
        os.listdir(again.p())
        st = os.stat(again.p("f"))
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 4242, "the store does not answer for the new version"
    finally:
        again.unmount()


def test_new_object_is_found_by_name_after_negative_ttl(s3, bucket, mounter):
    """After `ls dir`, another client PUTs dir/new.txt: a lookup of the name asks S3 once
    the listing is older than negative_ttl (the listing itself is shown for dir_ttl)."""
    s3.put_object(Bucket=bucket, Key="dir/old.txt", Body=b"old")
    m = mounter(bucket, options=["negative_ttl=1", "dir_ttl=60"])
    assert os.listdir(m.p("dir")) == ["old.txt"]
    s3.put_object(Bucket=bucket, Key="dir/new.txt", Body=b"produced elsewhere")
    time.sleep(1.2)
    with open(m.p("dir", "new.txt"), "rb") as f:         # the consumer of a pipeline
        assert f.read() == b"produced elsewhere"
    assert os.stat(m.p("dir", "new.txt")).st_size == 18


# -- headers survive -------------------------------------------------------------------------
def test_metadata_changes_keep_every_header(s3, bucket, mounter):
    s3.put_object(Bucket=bucket, Key="site/index.html", Body=b"<html>hi</html>", **WEB)
    m = mounter(bucket)
    p = m.p("site", "index.html")
    steps = [("chmod", lambda: os.chmod(p, 0o640)), ("chown", lambda: os.chown(p, 1234, 5678)),
             ("touch -d", lambda: os.utime(p, (1_600_000_000, 1_600_000_000))),
             ("setxattr", lambda: os.setxattr(p, "user.note", b"kept"))]
    for what, step in steps:
        step()
        h = head(s3, bucket, "site/index.html")
        assert_web_headers_kept(h, what)
    assert h["Metadata"]["mode"] == str(stat.S_IFREG | 0o640) and h["Metadata"]["uid"] == "1234"
    assert h["Metadata"]["mtime"] == "1600000000"
    md5 = h["Metadata"].get("s3fuse-md5")
    os.rename(p, m.p("site", "moved.html"))
    h = head(s3, bucket, "site/moved.html")
    assert_web_headers_kept(h, "mv")
    assert h["Metadata"].get("s3fuse-md5") == md5
    os.link(m.p("site", "moved.html"), m.p("site", "linked.html"))
    assert_web_headers_kept(head(s3, bucket, "site/linked.html"), "ln")
    with open(m.p("site", "moved.html"), "wb") as f:          # overwrite in place
        f.write(b"<html>new</html>")
    h = head(s3, bucket, "site/moved.html")
    assert_web_headers_kept(h, "overwrite")
    assert s3.get_object(Bucket=bucket, Key="site/moved.html")["Body"].read() == b"<html>new</html>"


def test_new_files_get_a_content_type_from_their_name(s3, bucket, mounter, tmp_path):
    m = mounter(bucket)
    for name, kind in (("a.html", "text/html"), ("b.json", "application/json"), ("c.png", "image/png"),
                       ("d.tar.gz", "application/gzip"), ("noext", "application/octet-stream")):
        src = tmp_path / name
        src.write_bytes(os.urandom(100))
        shutil.copy(src, m.p(name))
        assert head(s3, bucket, name)["ContentType"] == kind, name
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(12 << 20))         # a multipart upload
    shutil.copy(big, m.p("big.mp4"))
    assert head(s3, bucket, "big.mp4")["ContentType"] == "video/mp4"


# -- cache directories -----------------------------------------------------------------------
def test_two_mounts_with_default_options(s3_server, s3, tmp_path):
    """Two fstab lines, no cache_dir: each mount gets its own cache under the cache root."""
    buckets = []
    for n in range(2):
        b = f"deflt-{n}-{os.getpid()}"
        s3.create_bucket(Bucket=b)
        buckets.append(b)
    mounts = [Mount(s3_server, b, str(tmp_path), name=f"m{n}") for n, b in enumerate(buckets)]
    for m in mounts:
        m.cache_dir = None                       # the default
    before = set(glob.glob("/var/cache/s3fuse/*"))
    try:
        for m in mounts:
            m.mount()
        for n, m in enumerate(mounts):
            with open(m.p("x"), "wb") as f:
                f.write(b"%d" % n)
        made = set(glob.glob("/var/cache/s3fuse/*")) - before
        assert len(made) == 2 and all(os.path.basename(d).startswith("deflt-") for d in made), made
    finally:
        for m in mounts:
            m.unmount()
        for d in set(glob.glob("/var/cache/s3fuse/deflt-*")) - before:
            shutil.rmtree(d, ignore_errors=True)


def test_a_shared_cache_dir_names_the_mount_holding_it(s3_server, bucket, tmp_path):
    first = Mount(s3_server, bucket, str(tmp_path), name="first").mount()
    try:
        second = Mount(s3_server, bucket, str(tmp_path), name="second")
        second.cache_dir = first.cache_dir
        proc = subprocess.run(second.args(), env=second.env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert "in use" in proc.stderr and first.path in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    finally:
        first.unmount()


# -- other tools' directory markers --------------------------------------------------------
def test_folder_markers_of_other_tools_are_directories(s3, bucket, mounter):
    s3.put_object(Bucket=bucket, Key="emr_$folder$", Body=b"")
    s3.put_object(Bucket=bucket, Key="full_$folder$", Body=b"")
    s3.put_object(Bucket=bucket, Key="full/part-0000", Body=b"data")
    m = mounter(bucket)
    assert sorted(os.listdir(m.p())) == ["emr", "full"]
    assert os.path.isdir(m.p("emr")) and os.listdir(m.p("emr")) == []
    assert os.listdir(m.p("full")) == ["part-0000"]
    os.rmdir(m.p("emr"))
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert "emr_$folder$" not in keys and not os.path.exists(m.p("emr"))
    os.mkdir(m.p("mine"))
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert "mine/" in keys and not any(k.startswith("mine_") for k in keys), "we write dir/ markers only"


# -- special files ---------------------------------------------------------------------------
def test_fifos_sockets_and_device_nodes(s3, bucket, mounter):
    m = mounter(bucket)
    os.mkfifo(m.p("fifo"), 0o640)
    os.mknod(m.p("chr"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    import socket
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(m.p("sock"))
    finally:
        sock.close()
    h = head(s3, bucket, "fifo")
    assert h["ContentLength"] == 0 and int(h["Metadata"]["mode"]) == stat.S_IFIFO | 0o640
    assert int(head(s3, bucket, "chr")["Metadata"]["rdev"]) == os.makedev(1, 3)
    assert stat.S_ISSOCK(int(head(s3, bucket, "sock")["Metadata"]["mode"]))
    m.unmount()
    again = Mount(m.server, bucket, os.path.dirname(m.path), name=os.path.basename(m.path)).mount()
    try:
        assert stat.S_ISFIFO(os.stat(again.p("fifo")).st_mode)
        st = os.stat(again.p("chr"))
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        assert stat.S_ISSOCK(os.stat(again.p("sock")).st_mode)
        with pytest.raises(PermissionError):
            open(again.p("chr"), "rb")           # nodev: a device node from the bucket is inert
    finally:
        again.unmount()


# -- POSIX times -----------------------------------------------------------------------------
def test_ctime_and_directory_times_follow_changes(s3, bucket, mounter):
    m = mounter(bucket)
    os.mkdir(m.p("d"))
    with open(m.p("d", "f"), "wb") as f:
        f.write(b"x")
    for what, change, name in (("chmod", lambda: os.chmod(m.p("d", "f"), 0o600), "f"),
                               ("chown", lambda: os.chown(m.p("d", "f"), 7, 7), "f"),
                               ("rename", lambda: os.rename(m.p("d", "f"), m.p("d", "g")), "g")):
        before = os.stat(m.p("d", "f"))
        time.sleep(0.05)
        change()
        assert os.stat(m.p("d", name)).st_ctime_ns > before.st_ctime_ns, what
    d0 = os.stat(m.p("d"))
    time.sleep(0.05)
    with open(m.p("d", "new"), "wb"):
        pass
    d1 = os.stat(m.p("d"))
    assert d1.st_mtime_ns > d0.st_mtime_ns and d1.st_ctime_ns > d0.st_ctime_ns
    time.sleep(0.05)
    os.unlink(m.p("d", "new"))
    assert os.stat(m.p("d")).st_mtime_ns > d1.st_mtime_ns


def test_xattr_names_without_a_namespace_are_stored(s3, bucket, mounter):
    m = mounter(bucket)
    with open(m.p("f"), "wb") as f:
        f.write(b"x")
    os.setxattr(m.p("f"), "key1", b"macos style")
    os.setxattr(m.p("f"), "user.k", b"v")
    assert os.getxattr(m.p("f"), "key1") == b"macos style"
    assert sorted(os.listxattr(m.p("f"))) == ["key1", "user.k"]
    with pytest.raises(OSError) as info:
        os.setxattr(m.p("f"), "trusted.x", b"v")
    assert info.value.errno in (95,)      # ENOTSUP


# -- the aws CLI as the other writer -----------------------------------------------------------
@pytest.fixture
def aws(s3_server, tmp_path):
    if not os.path.exists(AWS):
        pytest.skip("aws CLI not installed (tests/support/servers/install-tools.sh)")
    env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(tmp_path / "none"))
    env.update(s3_server.env())

    def run(*args):
        proc = subprocess.run([AWS, "--endpoint-url", s3_server.endpoint, "s3", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    return run


def test_aws_cli_writes_are_seen_and_mount_writes_are_read(s3, bucket, mounter, aws, tmp_path):
    m = mounter(bucket, options=["attr_ttl=1", "dir_ttl=1", "negative_ttl=1"])
    src = tmp_path / "report.csv"
    src.write_bytes(b"a,b\n1,2\n")
    assert os.listdir(m.p()) == []
    aws("cp", str(src), f"s3://{bucket}/in/report.csv")
    settle(lambda: os.path.exists(m.p("in", "report.csv")), 5, "the CLI's upload by name")
    assert open(m.p("in", "report.csv"), "rb").read() == b"a,b\n1,2\n"
    aws("mv", f"s3://{bucket}/in/report.csv", f"s3://{bucket}/done/report.csv")
    settle(lambda: not os.path.exists(m.p("in", "report.csv")) and os.path.exists(m.p("done", "report.csv")),
           5, "the CLI's mv")
    # a metadata-only change by the CLI (same key, same content)
    with open(m.p("done", "report.csv"), "rb") as f:
        assert f.read() == b"a,b\n1,2\n"
    time.sleep(1.1)
    aws("cp", f"s3://{bucket}/done/report.csv", f"s3://{bucket}/done/report.csv", "--metadata-directive",
        "REPLACE", "--metadata", f"mode={stat.S_IFREG | 0o604},uid=99")
    settle(lambda: stat.S_IMODE(os.stat(m.p("done", "report.csv")).st_mode) == 0o604, 5, "the CLI's chmod")
    # the mount writes, the CLI reads
    with open(m.p("out.txt"), "wb") as f:
        f.write(b"from the mount")
    aws("cp", f"s3://{bucket}/out.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_bytes() == b"from the mount"


# -- s3fs-fuse on the same bucket --------------------------------------------------------------
@pytest.fixture
def s3fs(s3_server, bucket, tmp_path):
    if not shutil.which("s3fs"):
        pytest.skip("s3fs not installed")
    passwd = tmp_path / "s3fs.passwd"
    passwd.write_text(f"{s3_server.access_key}:{s3_server.secret_key}\n")
    passwd.chmod(0o600)
    path = tmp_path / "s3fs"
    path.mkdir()
    opts = [f"url={s3_server.endpoint}", "use_path_request_style", "endpoint=us-east-1", f"passwd_file={passwd}",
            "stat_cache_expire=1", "enable_noobj_cache", "max_stat_cache_size=0"]
    proc = subprocess.run(["s3fs", bucket, str(path), "-o", ",".join(opts)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    settle(lambda: os.path.ismount(path), 10, "s3fs mounted")
    yield str(path)
    unmount(str(path))


def test_s3fs_fuse_and_s3fuse_on_one_bucket(s3, bucket, mounter, s3fs):
    m = mounter(bucket, options=["attr_ttl=1", "dir_ttl=1", "negative_ttl=1"])
    # s3fuse writes: s3fs-fuse sees content, mode, owner and mtime
    with open(m.p("ours.txt"), "wb") as f:
        f.write(b"written by s3fuse")
    os.chmod(m.p("ours.txt"), 0o640)
    os.chown(m.p("ours.txt"), 1001, 1002)
    os.utime(m.p("ours.txt"), (1_600_000_000, 1_600_000_000))
    settle(lambda: os.path.exists(os.path.join(s3fs, "ours.txt")), 5, "s3fs sees the file")
    st = os.stat(os.path.join(s3fs, "ours.txt"))
    assert open(os.path.join(s3fs, "ours.txt"), "rb").read() == b"written by s3fuse"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (0o640, 1001, 1002, 1_600_000_000)
    # s3fs-fuse writes and changes metadata: s3fuse sees it
    with open(os.path.join(s3fs, "theirs.txt"), "wb") as f:
        f.write(b"written by s3fs")
    settle(lambda: os.path.exists(m.p("theirs.txt")), 5, "s3fuse sees the file")
    assert open(m.p("theirs.txt"), "rb").read() == b"written by s3fs"
    time.sleep(1.1)
    os.chmod(os.path.join(s3fs, "ours.txt"), 0o604)        # a metadata-only copy by s3fs-fuse
    settle(lambda: stat.S_IMODE(os.stat(m.p("ours.txt")).st_mode) == 0o604, 6, "s3fs-fuse's chmod")
    os.mkdir(os.path.join(s3fs, "sdir"))
    os.mkfifo(os.path.join(s3fs, "sfifo"))
    settle(lambda: os.path.isdir(m.p("sdir")) and os.path.exists(m.p("sfifo")), 5, "s3fs-fuse's mkdir, mkfifo")
    assert stat.S_ISFIFO(os.stat(m.p("sfifo")).st_mode)
    os.mkfifo(m.p("ourfifo"))
    settle(lambda: os.path.exists(os.path.join(s3fs, "ourfifo")), 5, "s3fs sees our fifo")
    assert stat.S_ISFIFO(os.stat(os.path.join(s3fs, "ourfifo")).st_mode)
