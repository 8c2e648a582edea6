"""Issue 2: mount a bucket, browse it and read it - through a real FUSE mount of a moto
server bucket.  Every test compares bytes, errno values or the daemon's own request
counts (its status JSON), never only "it did not crash"."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

from s3fuse.fuse.binding import READ_BUF

from ..support.mounts import MOUNT_HELPER
from ..support.probes import daemon_stats, delta, put_many, requests, s3fs_meta, wait_for

N_MANY = 2300
BIG = 24 << 20
MIB = 1 << 20


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def expect_errno(code, fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, f"{fn.__name__}{args}: {info.value!r}, wanted {errno.errorcode[code]}"


def many_name(i: int) -> str:
    return f"f{i:04d}"


def many_size(i: int) -> int:
    return i % 13


# Objects of the big listing that carry s3fs metadata (one on each listing page).
MANY_META = {0: 1201, 1000: 1202, 2299: 1203}


@pytest.fixture(scope="module")
def many_bucket(s3):
    name = "many-" + uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=name)
    items = []
    for i in range(N_MANY):
        meta = s3fs_meta(stat.S_IFREG | 0o600, MANY_META[i], 77, 1600000000) if i in MANY_META else None
        items.append((f"many/{many_name(i)}", b"m" * many_size(i), meta))
    put_many(s3, name, items)
    return name


@pytest.fixture(scope="module")
def big_object(s3):
    name = "big-" + uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=name)
    data = random.Random(2024).randbytes(BIG)
    s3.put_object(Bucket=name, Key="big.bin", Body=data)
    return name, data


def ls_ln(path) -> dict:
    """`ls -ln` of a directory -> {name: (mode string, uid, gid, size)}, checking the tool's exit."""
    proc = subprocess.run(["ls", "-ln", "--time-style=+%s", path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("total ")
    out = {}
    for line in lines[1:]:
        mode, _links, uid, gid, size, _mtime, name = line.split(None, 6)
        out[name] = (mode, int(uid), int(gid), int(size))
    return out


# ---------------------------------------------------------------------------------------
# big listings
# ---------------------------------------------------------------------------------------
@pytest.mark.server_group("many-objects")
def test_listing_2300_objects_three_pages_meta_list(many_bucket, mounter):
    m = mounter(many_bucket, options=["meta=list", "uid=3001", "gid=3002"])
    assert stat.S_ISDIR(os.stat(m.p("many")).st_mode)
    before = requests(m)
    names = os.listdir(m.p("many"))
    after = requests(m)
    assert sorted(names) == [many_name(i) for i in range(N_MANY)]
    d = delta(after, before)
    assert d["list_objects_v2"] == 3, f"2,300 keys are 3 ListObjectsV2 pages, daemon made {d}"
    assert d["head_object"] == 0 and d["get_object"] == 0, d

    # `ls -l` stats every entry: all answered from the listing, no request at all.
    listed = ls_ln(m.p("many"))
    after_ls = requests(m)
    assert len(listed) == N_MANY
    for i in range(N_MANY):
        mode, uid, gid, size = listed[many_name(i)]
        # meta=list: listing attributes only, so even the objects with s3fs headers show defaults
        assert (mode, uid, gid, size) == ("-rw-r--r--", 3001, 3002, many_size(i)), many_name(i)
    assert delta(after_ls, after) == {op: 0 for op in after_ls}, "ls -l after a listing costs no request"


@pytest.mark.server_group("many-objects")
def test_listing_2300_objects_meta_exact(many_bucket, mounter):
    m = mounter(many_bucket, name="exact")
    os.stat(m.p("many"))
    before = requests(m)
    names = os.listdir(m.p("many"))
    assert len(names) == N_MANY and set(names) == {many_name(i) for i in range(N_MANY)}
    listed = requests(m)
    assert delta(listed, before)["list_objects_v2"] == 3

    entries = ls_ln(m.p("many"))
    after = requests(m)
    assert len(entries) == N_MANY
    for i in range(N_MANY):
        mode, uid, gid, size = entries[many_name(i)]
        assert size == many_size(i)
        if i in MANY_META:
            assert (mode, uid, gid) == ("-rw-------", MANY_META[i], 77), many_name(i)
        else:
            assert (mode, uid, gid) == ("-rw-r--r--", 0, 0), many_name(i)
    st = os.stat(m.p("many", many_name(1000)))
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (stat.S_IFREG | 0o600, 1202, 77,
                                                                    1_600_000_000 * 10**9)
    d = delta(after, before)
    assert d["list_objects_v2"] == 3, d
    assert 3 <= d["head_object"] <= N_MANY, f"at most one HEAD per object: {d}"
    assert d["get_object"] == 0, d

    # A remount with the same cache dir knows every (key, ETag): exact attributes, no HEAD.
    m.unmount()
    m2 = mounter(many_bucket, name="exact")
    os.stat(m2.p("many"))
    before = requests(m2)
    again = ls_ln(m2.p("many"))
    d = delta(requests(m2), before)
    assert again == entries
    assert d["list_objects_v2"] == 3 and d["head_object"] == 0, d


# ---------------------------------------------------------------------------------------
# directories, POSIX metadata, defaults
# ---------------------------------------------------------------------------------------
def test_implied_dirs_and_markers(s3, bucket, mounter):
    put_many(s3, bucket, [
        ("a/b/c", b"deep", None),
        ("marked/", b"", s3fs_meta(stat.S_IFDIR | 0o750, 1001, 1002, 1600000000)),
        ("marked/inside", b"in", None),
        ("permonly/", b"", s3fs_meta(0o711, 1003, 1004, "1600000000.5")),  # mode without type bits
        ("emptydir/", b"", None),
        ("both", b"a file hidden by the directory of the same name", None),
        ("both/x", b"x", None),
    ])
    m = mounter(bucket)
    assert sorted(os.listdir(m.path)) == ["a", "both", "emptydir", "marked", "permonly"]
    assert os.listdir(m.p("a")) == ["b"]
    assert os.listdir(m.p("a", "b")) == ["c"]
    assert os.listdir(m.p("emptydir")) == []
    assert os.listdir(m.p("both")) == ["x"]
    for d in ("a", "a/b", "emptydir", "both"):
        st = os.stat(m.p(d))
        assert st.st_mode == stat.S_IFDIR | 0o755 and (st.st_uid, st.st_gid) == (0, 0), d
    with open(m.p("a", "b", "c"), "rb") as f:
        assert f.read() == b"deep"

    st = os.stat(m.p("marked"))
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (stat.S_IFDIR | 0o750, 1001, 1002,
                                                                    1_600_000_000 * 10**9)
    assert os.listdir(m.p("marked")) == ["inside"]
    st = os.stat(m.p("permonly"))
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (stat.S_IFDIR | 0o711, 1003, 1004,
                                                                    1_600_000_000_500_000_000)


def test_file_metadata_exact(s3, bucket, mounter):
    meta = s3fs_meta(stat.S_IFREG | 0o751, 1001, 1002, 1600000000)
    frac = s3fs_meta(stat.S_IFREG | 0o751, 1001, 1002, "1600000000.5")
    put_many(s3, bucket, [
        ("cold/whole", b"w" * 10, meta), ("cold/frac", b"f" * 11, frac),
        ("listed/whole", b"w" * 10, meta), ("listed/frac", b"f" * 11, frac),
        ("cold/rclone", b"r", {"mtime": "1600000000.123456789"}),   # rclone: mtime only
    ])
    m = mounter(bucket)
    # 'cold/...' are stat'ed without a listing (lookup + HEAD), 'listed/...' after readdir.
    assert sorted(os.listdir(m.p("listed"))) == ["frac", "whole"]
    for d in ("cold", "listed"):
        for name, mtime_ns, size in (("whole", 1_600_000_000 * 10**9, 10),
                                     ("frac", 1_600_000_000_500_000_000, 11)):
            st = os.stat(m.p(d, name))
            assert (st.st_mode, st.st_uid, st.st_gid, st.st_size) == (stat.S_IFREG | 0o751, 1001, 1002, size)
            assert st.st_mtime_ns == mtime_ns, (d, name, st.st_mtime_ns)
            assert st.st_atime_ns == mtime_ns and st.st_ctime_ns == mtime_ns
    st = os.stat(m.p("cold", "rclone"))
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert st.st_mode == stat.S_IFREG | 0o644 and st.st_uid == 0
    with open(m.p("cold", "frac"), "rb") as f:
        assert f.read() == b"f" * 11


def test_defaults_from_mount_options(s3, bucket, mounter):
    t0 = time.time()
    put_many(s3, bucket, [("plain", b"p" * 5, None), ("dir/plain2", b"q", None),
                          ("own", b"o", s3fs_meta(stat.S_IFREG | 0o604, 10, 20, 1600000000))])
    m = mounter(bucket, options=["uid=4321", "gid=8765", "umask=027"])
    for path, mode in (("plain", stat.S_IFREG | 0o640), ("dir/plain2", stat.S_IFREG | 0o640),
                       ("dir", stat.S_IFDIR | 0o750), ("", stat.S_IFDIR | 0o750)):
        st = os.stat(m.p(path))
        assert (st.st_mode, st.st_uid, st.st_gid) == (mode, 4321, 8765), path
    st = os.stat(m.p("plain"))
    assert abs(st.st_mtime - t0) < 10, "objects without metadata show their LastModified"
    st = os.stat(m.p("own"))
    assert (st.st_mode, st.st_uid, st.st_gid) == (stat.S_IFREG | 0o604, 10, 20), "own headers beat defaults"

    m2 = mounter(bucket, options=["file_mode=0600", "dir_mode=0701"])
    assert os.stat(m2.p("plain")).st_mode == stat.S_IFREG | 0o600
    assert os.stat(m2.p("dir")).st_mode == stat.S_IFDIR | 0o701
    assert os.stat(m2.p("plain")).st_uid == os.getuid()


# ---------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------
ODD_NAMES = ["ünïcødé.txt", "日本語.bin", "with space.txt", "plus+sign", "per%20cent", "emoji 😀",
             "q?m&a=1", "back\\slash", "tab\tname", "-dash", ".hidden", "~tilde", "a" * 255]


def test_unicode_and_special_names(s3, bucket, mounter):
    put_many(s3, bucket, [(f"odd/{n}", n.encode(), None) for n in ODD_NAMES]
             + [("odd/dír ü/inner file", b"inner", None)])
    m = mounter(bucket)
    assert sorted(os.listdir(m.p("odd"))) == sorted(ODD_NAMES + ["dír ü"])
    for n in ODD_NAMES:
        assert os.stat(m.p("odd", n)).st_size == len(n.encode()), n
        with open(m.p("odd", n), "rb") as f:
            assert f.read() == n.encode(), n
    with open(m.p("odd", "dír ü", "inner file"), "rb") as f:
        assert f.read() == b"inner"
    # a cold lookup of an odd name (no listing first) works too
    m2 = mounter(bucket)
    with open(m2.p("odd", "per%20cent"), "rb") as f:
        assert f.read() == b"per%20cent"
    expect_errno(errno.ENOENT, os.stat, m2.p("odd", "per cent"))


def test_keys_that_cannot_be_paths_are_skipped(s3, bucket, mounter):
    long_name = "n" * 256
    put_many(s3, bucket, [("bad/x//y", b"1", None), ("bad/./z", b"2", None), ("bad/../w", b"3", None),
                          ("bad/" + long_name, b"4", None), ("bad/" + "é" * 128, b"5", None),
                          ("bad/ok", b"fine", None)])
    m = mounter(bucket)
    assert sorted(os.listdir(m.p("bad"))) == ["ok", "x"]
    assert os.listdir(m.p("bad", "x")) == []
    with open(m.p("bad", "ok"), "rb") as f:
        assert f.read() == b"fine"
    with pytest.raises(OSError) as info:
        os.stat(m.p("bad", long_name))
    assert info.value.errno in (errno.ENOENT, errno.ENAMETOOLONG)
    proc = subprocess.run(["find", m.path], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split("\n")[:-1]) == sorted([m.path, m.p("bad"), m.p("bad", "ok"), m.p("bad", "x")])
    assert sorted(os.listdir(m.path)) == ["bad"]   # still alive
    log = m.log()
    for key in ("bad/x//", "bad/./", "bad/../", "bad/" + long_name, "bad/" + "é" * 128):
        assert f"skipping key {key!r}" in log, key


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
@pytest.mark.server_group("big-object")
def test_big_object_random_reads(big_object, mounter):
    name, data = big_object
    m = mounter(name, name="rand")
    assert os.stat(m.p("big.bin")).st_size == BIG
    fd = os.open(m.p("big.bin"), os.O_RDONLY)
    try:
        # Three far-apart small reads fetch only the blocks around them, not the object.
        for off in (3 * MIB + 5, 12 * MIB + 77, 20 * MIB + 1000):
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
        s = daemon_stats(m)
        assert s["bytes_fetched"] <= 3 * (128 << 10), f"3 random reads fetched {s['bytes_fetched']} bytes"
        rng = random.Random(42)
        for i in range(300):
            off = rng.randrange(BIG)
            size = rng.randint(1, 200_000)
            assert os.pread(fd, size, off) == data[off:off + size], f"read {i}: {size} bytes at {off}"
        assert os.pread(fd, 100, BIG - 10) == data[-10:]
        assert os.pread(fd, 100, BIG) == b""
        assert os.pread(fd, 100, BIG + 12345) == b""
    finally:
        os.close(fd)
    s = daemon_stats(m)
    # a block is fetched whole at most once; before that, at most one small piece
    # (<= 128 KiB: the first random touch of a block GETs only what it needs)
    blocks = BIG // MIB
    assert s["bytes_fetched"] <= BIG + blocks * (128 << 10), "no block is fetched twice"
    assert s["requests"]["get_object"] <= 2 * blocks


@pytest.mark.server_group("big-object")
def test_big_object_sequential_read(big_object, mounter):
    name, data = big_object
    m = mounter(name, name="seq")
    md5 = hashlib.md5()
    with open(m.p("big.bin"), "rb") as f:
        while True:
            chunk = f.read(MIB)
            if not chunk:
                break
            md5.update(chunk)
    assert md5.hexdigest() == hashlib.md5(data).hexdigest()
    s = daemon_stats(m)
    assert s["bytes_fetched"] == BIG, "each byte fetched exactly once"
    assert s["requests"]["get_object"] < BIG // MIB, f"read-ahead fetches multi-block spans: {s['requests']}"
    # A second read is served from the cache (kernel page cache or block cache): no GET.
    before = s["requests"]["get_object"]
    with open(m.p("big.bin"), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == md5.hexdigest()
    assert daemon_stats(m)["requests"]["get_object"] == before


def _value_files_open(pid: int) -> int:
    """How many of the daemon's descriptors are block cache value files."""
    fds = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(fds):
        try:
            count += os.readlink(os.path.join(fds, fd)).endswith(".val")
        except OSError:
            pass
    return count


@pytest.mark.server_group("big-object")
@pytest.mark.skipif(not READ_BUF, reason="read_buf needs libfuse 3.0-3.16")
def test_reads_from_the_disk_cache_go_to_libfuse_as_files_and_close_them(big_object, mounter):
    """Blocks on the cache disk are handed to libfuse as fd buffers of their value files
    (read_buf), read by four threads at once after the page cache was dropped: the bytes
    are right, the daemon does hold value files open while handles read (the path was
    taken), and the descriptors are closed again (bounded by libfuse's worker threads)."""
    name, data = big_object
    m = mounter(name, name="fdbufs", options=("max_memory=16M",))   # 4 MiB of blocks in memory
    with open(m.p("big.bin"), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == hashlib.md5(data).hexdigest()
    pid = m.daemon_pid()
    wait_for(lambda: daemon_stats(m)["cache"]["bytes"] >= BIG - MIB, 30, "the blocks written to the cache disk")
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")
    fetched = daemon_stats(m)["bytes_fetched"]
    errors_seen, held_while_open = [], []

    def reader(seed):
        rng = random.Random(seed)
        fd = os.open(m.p("big.bin"), os.O_RDONLY)
        try:
            for i in range(150):
                off = rng.randrange(BIG)
                size = rng.choice([4096, 200_000, MIB, 3 * MIB])
                if os.pread(fd, size, off) != data[off:off + size]:
                    errors_seen.append((seed, off, size))
            held_while_open.append(_value_files_open(pid))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors_seen == [], f"wrong bytes: {errors_seen[:5]}"
    assert max(held_while_open) >= 1, "no value file open: the reads did not take the fd path"
    assert daemon_stats(m)["bytes_fetched"] == fetched, "all from the cache disk, no GET"
    for i in range(40):                         # many more reads on fresh handles
        with open(m.p("big.bin"), "rb") as f:
            f.seek(i * 512 * 1024)
            f.read(MIB)
    assert _value_files_open(pid) <= 24, "value files left open: at most one read's per worker thread"


def test_prefix_mount(s3, bucket, mounter):
    put_many(s3, bucket, [
        ("top.txt", b"top", None), ("some/other", b"o", None), ("some/prefixed", b"sibling", None),
        ("some/prefix/", b"", s3fs_meta(stat.S_IFDIR | 0o701, 1500, 1501)),
        ("some/prefix/x.txt", b"xx", None), ("some/prefix/sub/y", b"why", None),
    ])
    m = mounter(bucket, prefix="some/prefix")
    assert sorted(os.listdir(m.path)) == ["sub", "x.txt"]
    assert os.listdir(m.p("sub")) == ["y"]
    with open(m.p("sub", "y"), "rb") as f:
        assert f.read() == b"why"
    assert os.stat(m.p("x.txt")).st_size == 2
    st = os.stat(m.path)
    assert (st.st_mode, st.st_uid, st.st_gid) == (stat.S_IFDIR | 0o701, 1500, 1501)
    for outside in ("top.txt", "some", "prefixed", "other", "prefix"):
        expect_errno(errno.ENOENT, os.stat, m.p(outside))
    # `s3fuse status MOUNTPOINT --json` reports this mount (once its first snapshot is out)
    daemon_stats(m)
    proc = subprocess.run([sys.executable, MOUNT_HELPER, "status", m.path, "--json"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)
    assert (entry["bucket"], entry["prefix"], entry["mountpoint"]) == (bucket, "some/prefix/", m.path)
    assert entry["requests"]["list_objects_v2"] >= 2 and entry["pid"] == m.daemon_pid()
    # an implied prefix (no marker) mounts too
    m2 = mounter(bucket, prefix="some/prefix/sub")
    assert os.listdir(m2.path) == ["y"]


# ---------------------------------------------------------------------------------------
# errors, statfs and the everyday tools
# ---------------------------------------------------------------------------------------
TREE = {"t/a.txt": 100, "t/sub/b.bin": 5000, "t/sub/deep/c": 12345, "t/sub2/d": 1, "t/empty/": 0}


def test_errors_and_tools(s3, bucket, mounter):
    put_many(s3, bucket, [(k, b"z" * n, None) for k, n in TREE.items()])
    m = mounter(bucket)
    t = m.p("t")
    expect_errno(errno.ENOENT, os.stat, m.p("missing"))
    expect_errno(errno.ENOENT, os.stat, m.p("t", "missing"))
    expect_errno(errno.ENOENT, open, m.p("t", "missing"), "rb")
    expect_errno(errno.ENOENT, os.listdir, m.p("nodir"))
    expect_errno(errno.ENOENT, os.stat, m.p("nodir", "x"))
    expect_errno(errno.ENOTDIR, os.listdir, m.p("t", "a.txt"))
    expect_errno(errno.ENOTDIR, os.stat, m.p("t", "a.txt", "x"))
    expect_errno(errno.ENOTDIR, open, m.p("t", "a.txt", "x"), "rb")
    expect_errno(errno.EISDIR, open, m.p("t", "sub"), "rb")
    expect_errno(errno.EISDIR, os.open, m.p("t", "sub"), os.O_WRONLY)
    fd = os.open(m.p("t", "sub"), os.O_RDONLY)
    try:
        expect_errno(errno.EISDIR, os.read, fd, 10)
    finally:
        os.close(fd)
    expect_errno(errno.EINVAL, os.readlink, m.p("t", "a.txt"))

    vfs = os.statvfs(m.path)
    assert vfs.f_frsize * vfs.f_blocks >= 1 << 40 and vfs.f_frsize * vfs.f_bavail >= 1 << 40
    assert vfs.f_files >= 1 << 20 and vfs.f_namemax == 255
    df = subprocess.run(["df", "-P", m.path], capture_output=True, text=True, timeout=30)
    assert df.returncode == 0, df.stderr
    fields = df.stdout.splitlines()[-1].split()
    assert fields[0] == bucket and fields[-1] == m.path and int(fields[1]) >= 1 << 30   # 1K blocks
    with open("/proc/mounts") as f:
        types = [line.split()[2] for line in f if line.split()[1] == m.path]
    assert types == ["fuse.s3fuse"]

    def run(*cmd):
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    files = sorted(run("find", t, "-type", "f").split())
    assert files == sorted(m.p(k) for k in TREE if not k.endswith("/"))
    dirs = sorted(run("find", t, "-type", "d").split())
    assert dirs == sorted([t, m.p("t/sub"), m.p("t/sub/deep"), m.p("t/sub2"), m.p("t/empty")])
    # du -b sums apparent sizes: the files' bytes plus whatever st_size the directories show
    dir_size = os.stat(t).st_size
    assert all(os.stat(d).st_size == dir_size for d in dirs)
    assert run("du", "-sb", t).split()[0] == str(sum(TREE.values()) + 5 * dir_size)
    assert run("du", "-sb", m.p("t/sub")).split()[0] == str(5000 + 12345 + 2 * dir_size)
    sizes = run("find", t, "-type", "f", "-printf", "%s %P\n").splitlines()
    assert sorted(sizes) == sorted(f"{n} {k[2:]}" for k, n in TREE.items() if not k.endswith("/"))
    assert run("cat", m.p("t/sub/deep/c")) == "z" * 12345
