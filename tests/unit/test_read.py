"""Unit tests of the read path below the FUSE adapter: option parsing, POSIX metadata
headers, path names, directory listings (Namespace) and block-cached reads (Reader /
BlockFetcher), each against a fake S3 client that counts what it is asked."""
from __future__ import annotations

import errno
import logging
import random
import os
import stat
import threading

import pytest

from s3fuse.fuse.operations import stat_dict
from s3fuse import errors
from s3fuse.app.commandline import parse
from s3fuse.app.connect import mount_config
from s3fuse.app.usage import MOUNT
from s3fuse.config import (MountConfig, apply_option, parse_bool, parse_octal, parse_size, parse_source,
                           parse_url)
from s3fuse.data.blockcache import BlockCache
from s3fuse.data.reader import BlockFetcher, PinnedObject, Reader
from s3fuse.errors import ConfigError
from s3fuse.meta.attrs import (NS, Attr, Defaults, apply_metadata, default_attr, format_time_ns,
                               parse_time_ns, to_metadata)
from s3fuse.meta.cache import MetaCache
from s3fuse.meta.known import KnownMetadata
from s3fuse.meta.namespace import Namespace
from s3fuse.paths import KeyMapper, join, split, valid_name

from ..support.fakes import FakeS3 as FakeClient


# ---------------------------------------------------------------------------------------
# Configuration and option parsing
# ---------------------------------------------------------------------------------------
class TestConfig:
    @pytest.mark.parametrize("text, value", [
        ("512", 512), ("512K", 512 << 10), ("8M", 8 << 20), ("8m", 8 << 20), ("10G", 10 << 30),
        ("1.5M", 3 << 19), ("8MB", 8 << 20), ("8MiB", 8 << 20), ("1T", 1 << 40), (" 4k ", 4096),
    ])
    def test_parse_size(self, text, value):
        assert parse_size(text) == value

    @pytest.mark.parametrize("text", ["", "abc", "8X", "-1M", "1.2.3", "M"])
    def test_parse_size_rejects(self, text):
        with pytest.raises(ValueError):
            parse_size(text)

    def test_parse_octal_bool_url(self):
        assert parse_octal("022") == 0o22 and parse_octal("0777") == 0o777 and parse_octal("7777") == 0o7777
        for bad in ("999", "8", "17777", "x"):
            with pytest.raises(ValueError):
                parse_octal(bad)
        assert parse_bool("yes") is True and parse_bool("") is True and parse_bool("Off") is False
        with pytest.raises(ValueError):
            parse_bool("maybe")
        assert parse_url("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
        assert parse_url("https://s3.example.com") == "https://s3.example.com"
        for bad in ("ftp://x", "127.0.0.1:9000", "http://", "http://host:notaport"):
            with pytest.raises(ValueError):
                parse_url(bad)

    def test_apply_options(self):
        cfg = MountConfig()
        for opt in ("endpoint=http://h:1", "uid=1001", "gid=1002", "umask=027", "block_size=4M",
                    "readahead=32M", "read_threads=3", "attr_ttl=0", "meta=list", "ro", "path_style=no",
                    "log_level=debug", "_netdev", "x-systemd.automount", "nofail", "comment=hello"):
            apply_option(cfg, opt)
        assert cfg.endpoint == "http://h:1" and cfg.uid == 1001 and cfg.gid == 1002
        assert cfg.umask == 0o27 and cfg.block_size == 4 << 20 and cfg.readahead == 32 << 20
        assert cfg.read_threads == 3 and cfg.attr_ttl == 0.0 and cfg.meta == "list"
        assert cfg.ro is True and cfg.path_style is False and cfg.log_level == "debug"
        assert cfg.ignored == ["_netdev", "x-systemd.automount", "nofail", "comment=hello"]
        assert cfg.modes == (0o640, 0o750)
        apply_option(cfg, "file_mode=0600")
        apply_option(cfg, "url=https://alias.example")
        assert cfg.modes == (0o600, 0o750) and cfg.endpoint == "https://alias.example"

    @pytest.mark.parametrize("option, words", [
        ("bogus=1", ["unknown option", "bogus"]),
        ("block_size=abc", ["block_size"]),
        ("block_size=0", ["block_size", "positive"]),
        ("read_threads=-2", ["read_threads"]),
        ("umask=999", ["umask"]),
        ("uid=root", ["uid"]),
        ("meta=fancy", ["meta", "exact"]),
        ("attr_ttl=-1", ["attr_ttl"]),
        ("endpoint=ftp://x", ["endpoint"]),
        ("endpoint", ["endpoint", "needs a value"]),
        ("uid=", ["uid", "needs a value"]),
        ("ro=maybe", ["ro"]),
    ])
    def test_bad_options_name_the_option(self, option, words):
        with pytest.raises(ConfigError) as info:
            apply_option(MountConfig(), option)
        message = str(info.value)
        assert "\n" not in message
        for word in words:
            assert word in message

    @pytest.mark.parametrize("source, expect", [
        ("bucket", ("bucket", "")), ("bucket:/", ("bucket", "")), ("bucket:/a/b/", ("bucket", "a/b")),
        ("bucket:a/b", ("bucket", "a/b")), ("s3://bucket/some/prefix", ("bucket", "some/prefix")),
        ("s3://bucket", ("bucket", "")),
    ])
    def test_parse_source(self, source, expect):
        assert parse_source(source) == expect

    @pytest.mark.parametrize("source", ["", ":/x", "bad bucket", "b*d", "s3:///x"])
    def test_parse_source_rejects(self, source):
        with pytest.raises(ConfigError):
            parse_source(source)

    def test_parse_mount_args(self, tmp_path):
        def parse_mount_args(argv):
            return mount_config(parse(MOUNT, argv))

        cfg = parse_mount_args(["mybucket:/pre/fix", str(tmp_path), "-o", "uid=5,gid=6", "-oallow_other", "-f"])
        assert (cfg.bucket, cfg.prefix, cfg.mountpoint) == ("mybucket", "pre/fix", str(tmp_path))
        assert cfg.uid == 5 and cfg.gid == 6 and cfg.foreground
        assert cfg.allow_other and cfg.default_permissions    # allow_other implies default_permissions
        with pytest.raises(ConfigError):
            parse_mount_args(["only-one-arg"])
        with pytest.raises(ConfigError):
            parse_mount_args(["b", str(tmp_path), "-x"])
        with pytest.raises(ConfigError):
            parse_mount_args(["b", str(tmp_path), "-o"])


# ---------------------------------------------------------------------------------------
# POSIX metadata headers
# ---------------------------------------------------------------------------------------
class TestAttrs:
    @pytest.mark.parametrize("text, ns", [
        ("1600000000", 1_600_000_000 * NS),
        ("1600000000.5", 1_600_000_000 * NS + 500_000_000),
        ("1600000000.000000001", 1_600_000_000 * NS + 1),
        ("1600000000.123456789123", 1_600_000_000 * NS + 123_456_789),   # beyond ns: truncated
        (" 1600000000.25 ", 1_600_000_000 * NS + 250_000_000),
        ("0", 0),
        ("-1.5", -1_500_000_000),
    ])
    def test_parse_time_ns(self, text, ns):
        assert parse_time_ns(text) == ns

    @pytest.mark.parametrize("text", ["", "abc", "1.2.3", "1e9", "16000.5x", ".5"])
    def test_parse_time_rejects(self, text):
        with pytest.raises(ValueError):
            parse_time_ns(text)

    def test_format_time_round_trip(self):
        for ns in (0, 1_600_000_000 * NS, 1_600_000_000 * NS + 500_000_000, 1_600_000_000 * NS + 1):
            assert parse_time_ns(format_time_ns(ns)) == ns
        assert format_time_ns(1_600_000_000 * NS) == "1600000000"
        assert format_time_ns(1_600_000_000 * NS + 500_000_000) == "1600000000.5"
        assert format_time_ns(1_600_000_000 * NS + 1) == "1600000000.000000001"

    def test_s3fs_file_headers(self):
        base = default_attr(False, 10, 1_700_000_000.0, Defaults(uid=7, gid=8), etag="e")
        assert not base.exact and base.mode == stat.S_IFREG | 0o644 and (base.uid, base.gid) == (7, 8)
        meta = {"mode": str(stat.S_IFREG | 0o751), "uid": "1001", "gid": "1002", "mtime": "1600000000.5"}
        attr = apply_metadata(base, meta, is_dir=False)
        assert attr.exact and attr.mode == stat.S_IFREG | 0o751
        assert (attr.uid, attr.gid, attr.size, attr.etag) == (1001, 1002, 10, "e")
        assert attr.mtime_ns == 1_600_000_000_500_000_000
        assert attr.atime_ns == attr.ctime_ns == attr.mtime_ns   # only mtime given
        st = stat_dict(attr)
        assert st["st_mode"] == stat.S_IFREG | 0o751 and st["st_mtime"] == 1_600_000_000_500_000_000
        assert st["st_nlink"] == 1 and st["st_blocks"] == 1
        assert base.uid == 7, "apply_metadata must not modify its input"

    def test_explicit_atime_ctime(self):
        attr = apply_metadata(default_attr(False, 0, 0, Defaults()),
                              {"mtime": "100", "atime": "200.25", "ctime": "300"}, False)
        assert (attr.mtime_ns, attr.atime_ns, attr.ctime_ns) == (100 * NS, 200 * NS + NS // 4, 300 * NS)

    def test_mode_type_bits(self):
        d = default_attr(True, 0, 0, Defaults())
        # s3fs writes the full st_mode of a directory marker ...
        assert apply_metadata(d, {"mode": str(stat.S_IFDIR | 0o750)}, True).mode == stat.S_IFDIR | 0o750
        # ... other tools write only permission bits: a marker is a directory regardless.
        assert apply_metadata(d, {"mode": "488"}, True).mode == stat.S_IFDIR | 0o750
        f = default_attr(False, 0, 0, Defaults())
        assert apply_metadata(f, {"mode": "420"}, False).mode == stat.S_IFREG | 0o644
        assert apply_metadata(f, {"mode": str(stat.S_IFLNK | 0o777)}, False).is_link
        # a file key can never become a directory through its headers ...
        assert apply_metadata(f, {"mode": str(stat.S_IFDIR | 0o600)}, False).mode == stat.S_IFREG | 0o600
        # ... but a fifo, socket or device node, as s3fs-fuse stores them (mounts are nodev)
        for kind in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            assert apply_metadata(f, {"mode": str(kind | 0o600)}, False).mode == kind | 0o600
        dev = apply_metadata(f, {"mode": str(stat.S_IFCHR | 0o600), "rdev": str(os.makedev(1, 3))}, False)
        assert dev.rdev == os.makedev(1, 3)
        assert apply_metadata(f, {"mode": "420", "rdev": "5"}, False).rdev == 0, "rdev only for devices"

    def test_malformed_headers_are_not_fatal(self, caplog):
        f = default_attr(False, 5, 1_700_000_000.0, Defaults(uid=3, gid=4))
        with caplog.at_level(logging.WARNING):
            attr = apply_metadata(f, {"uid": "nobody", "mtime": "yesterday"}, False)
        assert attr.exact and attr.size == 5 and attr.mode == f.mode and attr.mtime_ns == f.mtime_ns
        assert "malformed" in caplog.text
        assert apply_metadata(f, None, False).exact and apply_metadata(f, {}, False).uid == 3

    def test_to_metadata_round_trip(self):
        attr = Attr(mode=stat.S_IFREG | 0o640, uid=1, gid=2, size=3, mtime_ns=1_600_000_000_500_000_000)
        meta = to_metadata(attr, {"s3fuse-md5": "abc"})
        assert meta["mode"] == str(stat.S_IFREG | 0o640) and meta["mtime"] == "1600000000.5"
        assert meta["s3fuse-md5"] == "abc"
        back = apply_metadata(default_attr(False, 3, 0, Defaults()), meta, False)
        assert (back.mode, back.uid, back.gid, back.mtime_ns) == (attr.mode, 1, 2, attr.mtime_ns)


# ---------------------------------------------------------------------------------------
# Path names
# ---------------------------------------------------------------------------------------
class TestPaths:
    def test_valid_name(self):
        for good in ("a", "with space", "plus+sign", "per%20cent", "ünïcødé", "日本語", "...", ".hidden",
                     "a" * 255, "é" * 127):
            assert valid_name(good), good
        for bad in ("", ".", "..", "a/b", "/", "nul\0byte", "a" * 256, "é" * 128, "日" * 86):
            assert not valid_name(bad), bad
        assert valid_name("\udcff" * 255)      # undecodable bytes (surrogateescape) count one byte each

    def test_key_mapper(self):
        m = KeyMapper("some/prefix/")
        assert m.prefix == "some/prefix/"
        assert m.key("/a/b") == "some/prefix/a/b"
        assert m.dir_prefix("/") == "some/prefix/" and m.dir_prefix("/a/") == "some/prefix/a/"
        assert m.path("some/prefix/a/b/") == "/a/b"
        root = KeyMapper("")
        assert root.key("/x") == "x" and root.dir_prefix("/") == "" and root.path("x/y") == "/x/y"
        assert KeyMapper("/p/").prefix == "p/"
        assert split("/a/b/c") == ("/a/b", "c") and split("/a") == ("/", "a")
        assert join("/", "a") == "/a" and join("/a", "b") == "/a/b"


# ---------------------------------------------------------------------------------------
# Namespace: lookups and listings
# ---------------------------------------------------------------------------------------
def make_ns(client, tmp_path, exact=True, prefix="", defaults=None, name="meta"):
    cache = MetaCache(60, 60, 60)
    known = KnownMetadata(str(tmp_path / name), client.bucket)
    ns = Namespace(client, KeyMapper(prefix), cache, known,
                   defaults or Defaults(uid=500, gid=600, file_mode=0o640, dir_mode=0o750), exact=exact)
    return ns, known


@pytest.fixture
def many_client():
    client = FakeClient()
    for i in range(2300):
        client.seed(f"many/f{i:04d}", b"x" * (i % 7))
    client.seed("many/f0042", b"meta", {"mode": str(stat.S_IFREG | 0o751), "uid": "1001", "gid": "1002",
                                      "mtime": "1600000000.5"})
    return client


class TestNamespace:
    def test_listing_pages_no_heads_in_list_mode(self, many_client, tmp_path):
        ns, known = make_ns(many_client, tmp_path, exact=False)
        listing = ns.list_dir("/many")
        assert len(listing.entries) == 2300
        assert set(listing.entries) == {f"f{i:04d}" for i in range(2300)}
        assert not any(listing.entries.values())
        assert many_client.count("list_page") == 3, "2,300 keys = 3 pages of 1,000"
        # every entry's attributes came with the listing: stat costs nothing
        for i in range(2300):
            a = ns.lookup(f"/many/f{i:04d}")
            assert a.size == (4 if i == 42 else i % 7) and a.mode == stat.S_IFREG | 0o640 and a.uid == 500
        assert many_client.count("head") == 0
        assert many_client.count("list_page") == 3
        ns.list_dir("/many")     # listing cached
        assert many_client.count("list_page") == 3
        ns.close()
        known.close()

    def test_exact_mode_heads_once_and_remembers(self, many_client, tmp_path):
        ns, known = make_ns(many_client, tmp_path, exact=True)
        ns.list_dir("/many")
        attrs = {i: ns.lookup(f"/many/f{i:04d}") for i in range(2300)}
        assert many_client.count("list_page") == 3
        assert many_client.count("head") == 2300, "one HEAD per object, never two"
        a = attrs[42]
        assert (a.mode, a.uid, a.gid, a.mtime_ns) == (stat.S_IFREG | 0o751, 1001, 1002, 1_600_000_000_500_000_000)
        assert attrs[43].uid == 500 and attrs[43].exact
        batches = many_client.details("head_many")
        assert batches and max(batches) == Namespace.HEAD_BATCH, "the listing's HEADs went in pipelined batches"
        assert sum(batches) <= 2300
        ns.close()
        known.close()
        # A later mount with the same cache dir: exact attributes from (key, ETag) without HEADs.
        fresh = FakeClient()
        fresh.objects = many_client.objects
        ns2, known2 = make_ns(fresh, tmp_path, exact=True)
        ns2.list_dir("/many")
        a = ns2.lookup("/many/f0042")
        assert (a.mode, a.uid, a.mtime_ns) == (stat.S_IFREG | 0o751, 1001, 1_600_000_000_500_000_000)
        for i in range(2300):
            ns2.lookup(f"/many/f{i:04d}")
        assert fresh.count("head") == 0 and fresh.count("list_page") == 3
        # ... until the object changes: a new ETag means a new HEAD.
        fresh.seed("many/f0042", b"changed", {"uid": "77"})
        ns2.cache.invalidate("/many/f0042")
        ns2.cache.dirs.clear()
        ns2.list_dir("/many")
        assert ns2.lookup("/many/f0042").uid == 77
        assert fresh.count("head") == 1
        ns2.close()
        known2.close()

    def test_implied_dirs_markers_and_shadowing(self, tmp_path):
        c = FakeClient()
        c.seed("a/b/c", b"deep")
        c.seed("d/", b"", {"mode": str(stat.S_IFDIR | 0o700), "uid": "1001", "gid": "1002", "mtime": "1600000000"})
        c.seed("d/inner", b"i")
        c.seed("empty/", b"")
        c.seed("both", b"file hidden by dir")
        c.seed("both/x", b"x")
        c.seed("top", b"t")
        ns, known = make_ns(c, tmp_path)
        root = ns.list_dir("/")
        assert root.entries == {"a": True, "d": True, "empty": True, "both": True, "top": False}
        assert ns.list_dir("/a").entries == {"b": True}
        assert ns.list_dir("/a/b").entries == {"c": False}
        d = ns.lookup("/d")
        assert (d.mode, d.uid, d.gid, d.mtime_ns) == (stat.S_IFDIR | 0o700, 1001, 1002, 1_600_000_000 * NS)
        assert ns.lookup("/a").mode == stat.S_IFDIR | 0o750 and ns.lookup("/a").uid == 500
        empty = ns.list_dir("/empty")
        assert empty.entries == {} and empty.marker
        assert ns.lookup("/both").is_dir
        assert ns.lookup("/top").size == 1
        ns.close()
        known.close()

    def test_cold_lookups(self, tmp_path):
        c = FakeClient()
        c.seed("dir/", b"", {"mode": str(stat.S_IFDIR | 0o711)})
        c.seed("implied/x", b"")
        c.seed("file", b"12345", {"mode": str(stat.S_IFREG | 0o600), "mtime": "1600000000.5"})
        ns, known = make_ns(c, tmp_path)
        assert ns.lookup("/dir").mode == stat.S_IFDIR | 0o711
        assert ns.lookup("/implied").mode == stat.S_IFDIR | 0o750
        f = ns.lookup("/file")
        assert f.mode == stat.S_IFREG | 0o600 and f.size == 5 and f.mtime_ns == 1_600_000_000_500_000_000
        with pytest.raises(errors.NotFound):
            ns.lookup("/nope")
        n = len(c.calls)
        with pytest.raises(errors.NotFound):
            ns.lookup("/nope")
        assert len(c.calls) == n, "a missing name is remembered (negative cache)"
        ns.list_dir("/")
        n = len(c.calls)
        with pytest.raises(errors.NotFound):
            ns.lookup("/other-missing")
        assert len(c.calls) == n, "a complete listing answers for names it does not hold"
        with pytest.raises(errors.FsError) as info:
            ns.list_dir("/file")
        assert info.value.errno == errno.ENOTDIR
        with pytest.raises(errors.NotFound):
            ns.list_dir("/nope-dir")
        ns.close()
        known.close()

    def test_invalid_keys_skipped_with_log(self, tmp_path, caplog):
        c = FakeClient()
        for key in ("bad/x//y", "bad/./z", "bad/../w", "bad/" + "n" * 256, "bad/ok", "bad/" + "é" * 128):
            c.seed(key, b"v")
        ns, known = make_ns(c, tmp_path, exact=False)
        with caplog.at_level(logging.WARNING):
            assert ns.list_dir("/bad").entries == {"ok": False, "x": True}
            assert ns.list_dir("/bad/x").entries == {}
        skipped = [r.getMessage() for r in caplog.records if "skipping key" in r.getMessage()]
        assert len(skipped) == 5, skipped
        with pytest.raises(errors.NameTooLong):        # ENAMETOOLONG, as POSIX says for any lookup
            ns.lookup("/bad/" + "n" * 256)
        ns.close()
        known.close()

    def test_prefix(self, tmp_path):
        c = FakeClient()
        c.seed("top", b"")
        c.seed("some/prefix/", b"", {"mode": str(stat.S_IFDIR | 0o701)})
        c.seed("some/prefix/x", b"xx")
        c.seed("some/prefix/sub/y", b"y")
        c.seed("some/prefixed", b"sibling")
        ns, known = make_ns(c, tmp_path, prefix="some/prefix")
        assert ns.list_dir("/").entries == {"x": False, "sub": True}
        assert ns.lookup("/").mode == stat.S_IFDIR | 0o701
        assert ns.lookup("/x").size == 2
        assert ns.list_dir("/sub").entries == {"y": False}
        ns.close()
        known.close()


# ---------------------------------------------------------------------------------------
# Reader / BlockFetcher
# ---------------------------------------------------------------------------------------
BS = 64 << 10


def blob(size, seed=1):
    return random.Random(seed).randbytes(size)


@pytest.fixture
def blocks(tmp_path):
    cache = BlockCache(str(tmp_path / "blocks"), 1 << 30, "fake")
    yield cache
    cache.close()


def fetched_blocks(client, key=None):
    out = []
    for k, start, end, _ in client.details("get_range"):
        if key is None or k == key:
            assert start % BS == 0, "GETs start on block boundaries"
            out.extend(range(start // BS, (end + BS - 1) // BS))
    return out


class TestReader:
    def test_sequential_reads_prefetch_parallel_spans(self, blocks):
        data = blob(64 * BS + 1234)
        c = FakeClient(get_delay=0.02)
        etag = c.seed("big", data)
        fetcher = BlockFetcher(c, blocks, BS, threads=8, span_blocks=4)
        reader = Reader(fetcher, PinnedObject("big", etag, len(data)), max_readahead_blocks=32)
        out, off = [], 0
        while True:
            piece = reader.read(off, 32 << 10)
            if not piece:
                break
            out.append(piece)
            off += len(piece)
        fetcher.close()
        assert b"".join(out) == data
        got = fetched_blocks(c)
        assert sorted(got) == list(range(65)), "every block fetched exactly once"
        spans = [end - start for _, start, end, _ in c.details("get_range")]
        assert max(spans) > BS, "read-ahead fetches multi-block spans"
        assert len(c.details("get_range")) <= 65 // 3, "a full window is topped up in batches, not block by block"
        assert c.max_active_gets >= 2, "read-ahead spans are fetched in parallel"
        assert all(e == etag for *_, e in c.details("get_range")), "GETs pin the ETag seen at open (If-Match)"
        assert fetcher.bytes_fetched == len(data)

    def test_random_reads_fetch_only_touched_blocks(self, blocks):
        data = blob(40 * BS)
        c = FakeClient()
        etag = c.seed("obj", data)
        fetcher = BlockFetcher(c, blocks, BS, threads=4)
        reader = Reader(fetcher, PinnedObject("obj", etag, len(data)))
        rng = random.Random(7)
        touched = set()
        for _ in range(60):
            off = rng.randrange(1, len(data))
            size = rng.randint(1, 2 * BS)
            if off // BS in {b for t in touched for b in (t - 1, t, t + 1)}:
                continue     # keep reads non-adjacent: adjacency is (rightly) read as sequential
            assert reader.read(off, size) == data[off:off + size]
            touched.update(range(off // BS, (min(off + size, len(data)) - 1) // BS + 1))
        fetcher.close()
        got = fetched_blocks(c)
        assert sorted(got) == sorted(touched), "a random read fetches exactly the blocks it touches"
        assert len(touched) < 40

    def test_small_random_reads_fetch_pieces_then_blocks(self, tmp_path):
        """With 1 MiB blocks a small random read GETs only its 64 KiB-aligned piece; the
        second random read of the same block fetches (and caches) the whole block."""
        bs = 1 << 20
        data = blob(8 * bs)
        c = FakeClient()
        etag = c.seed("obj", data)
        cache = BlockCache(str(tmp_path / "pieces"), 1 << 30, "b")
        fetcher = BlockFetcher(c, cache, bs, threads=2)
        reader = Reader(fetcher, PinnedObject("obj", etag, len(data)))
        off = 5 * bs + 300_000
        assert reader.read(off, 4096) == data[off:off + 4096]
        (k, start, end, e), = c.details("get_range")
        assert (start, end) == (off - off % (64 << 10), off - off % (64 << 10) + (64 << 10)) and e == etag
        assert reader.read(2 * bs + 10, 100) == data[2 * bs + 10:2 * bs + 110]      # another block
        assert reader.read(off + 500_000, 4096) == data[off + 500_000:off + 504_096]  # block 5 again
        assert [(s, en) for _, s, en, _ in c.details("get_range")][-1] == (5 * bs, 6 * bs), "second touch: whole block"
        n = len(c.details("get_range"))
        assert reader.read(off + 7, 10) == data[off + 7:off + 17] and len(c.details("get_range")) == n, "now cached"
        fetcher.close()
        cache.close()

    def test_block_boundaries_and_eof(self, blocks):
        data = blob(3 * BS + 100)
        c = FakeClient()
        etag = c.seed("o", data)
        fetcher = BlockFetcher(c, blocks, BS)
        reader = Reader(fetcher, PinnedObject("o", etag, len(data)))
        assert reader.read(BS - 10, 20) == data[BS - 10:BS + 10]
        assert reader.read(len(data) - 50, 1000) == data[-50:]
        assert reader.read(len(data), 10) == b"" and reader.read(len(data) + 5, 10) == b""
        assert reader.read(0, 0) == b""
        assert reader.read(0, len(data) + 10) == data
        empty_reader = Reader(fetcher, PinnedObject("o", etag, 0))
        assert empty_reader.read(0, 100) == b""
        fetcher.close()

    def test_etag_is_part_of_the_cache_key(self, blocks):
        old = blob(4 * BS, seed=1)
        new = blob(4 * BS, seed=2)
        c = FakeClient()
        old_etag = c.seed("k", old)
        fetcher = BlockFetcher(c, blocks, BS)
        assert Reader(fetcher, PinnedObject("k", old_etag, len(old))).read(0, len(old)) == old
        n = len(c.details("get_range"))
        # Served again from the cache: no GET.
        assert Reader(fetcher, PinnedObject("k", old_etag, len(old))).read(0, len(old)) == old
        assert len(c.details("get_range")) == n
        # The object changes: same key, new ETag -> new blocks, never the stale ones.
        new_etag = c.seed("k", new)
        assert new_etag != old_etag
        assert Reader(fetcher, PinnedObject("k", new_etag, len(new))).read(0, len(new)) == new
        assert len(c.details("get_range")) > n
        assert blocks.get("k", old_etag, 0) == old[:BS] and blocks.get("k", new_etag, 0) == new[:BS]
        # A reader pinned to the old version, asking for an uncached block, gets ObjectChanged.
        blocks.clear()
        with pytest.raises(errors.ObjectChanged):
            Reader(fetcher, PinnedObject("k", old_etag, len(old))).read(BS, 10)
        fetcher.close()

    def test_cache_survives_a_new_fetcher(self, tmp_path):
        data = blob(5 * BS)
        c = FakeClient()
        etag = c.seed("k", data)
        cache = BlockCache(str(tmp_path / "b"), 1 << 30, "fake")
        f1 = BlockFetcher(c, cache, BS)
        assert Reader(f1, PinnedObject("k", etag, len(data))).read(0, len(data)) == data
        f1.close()
        cache.close()
        n = len(c.details("get_range"))
        cache = BlockCache(str(tmp_path / "b"), 1 << 30, "fake")
        f2 = BlockFetcher(c, cache, BS)
        assert Reader(f2, PinnedObject("k", etag, len(data))).read(0, len(data)) == data
        assert len(c.details("get_range")) == n, "blocks persist in cache_dir across mounts"
        f2.close()
        cache.close()

    def test_cache_stays_within_its_size_limit(self, tmp_path):
        limit = 2 << 20
        cache = BlockCache(str(tmp_path / "b"), limit, "fake", memory=0)
        for i in range(100):                       # 6.25 MiB of 64 KiB blocks
            cache.put("k", "e", i, blob(BS, seed=i))
        assert cache.flush()
        files = [p for p in (tmp_path / "b").rglob("*.val")]
        stored = sum(p.stat().st_size for p in files)
        # eviction runs every limit/16 bytes written: never more than that over the limit
        assert stored <= limit + limit // 16 + BS, f"{stored} bytes of blocks kept for a {limit}-byte cache"
        assert cache.get("k", "e", 99) == blob(BS, seed=99), "the newest block is kept"
        assert cache.get("k", "e", 0) is None, "the oldest block was evicted"
        cache.close()

    def test_concurrent_readers_share_one_fetch(self, blocks):
        data = blob(2 * BS)
        c = FakeClient(get_delay=0.1)
        etag = c.seed("k", data)
        fetcher = BlockFetcher(c, blocks, BS)
        obj = PinnedObject("k", etag, len(data))
        results = []
        threads = [threading.Thread(target=lambda: results.append(Reader(fetcher, obj).read(BS + 5, 100)))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        fetcher.close()
        assert results == [data[BS + 5:BS + 105]] * 6
        assert fetched_blocks(c) == [1], "one GET for a block however many readers want it"

    def test_failed_fetch_raises_and_can_be_retried(self, blocks):
        data = blob(3 * BS)
        c = FakeClient()
        etag = c.seed("k", data)
        c.fail_gets = 1
        fetcher = BlockFetcher(c, blocks, BS)
        obj = PinnedObject("k", etag, len(data))
        with pytest.raises(errors.BackendError):
            Reader(fetcher, obj).read(2 * BS, 10)
        assert Reader(fetcher, obj).read(2 * BS, 10) == data[2 * BS:2 * BS + 10]
        fetcher.close()


def test_known_versions_stay_visible_while_a_batch_is_flushed(tmp_path):
    """An entry handed to the store is found by get() while its batch is being written
    (it used to be in neither the buffer nor the store then: a listing right after a
    rename of 1,000 files HEADed the entries of the batch in flight)."""
    known = KnownMetadata(str(tmp_path / "known"), "b")
    try:
        known.wrote("k", "e1", {"mode": "33188"}, {}, (100.0, 101.0))
        seen = []
        real_set = known._store.set

        def set_and_look(k, v):
            seen.append(known.get("k", "e1", 100.5))
            return real_set(k, v)
        known._store.set = set_and_look
        known.flush()
        assert seen and seen[0] is not None and seen[0].metadata == {"mode": "33188"}
        known._store.set = real_set
        assert known.get("k", "e1", 100.5) is not None
    finally:
        known.close()
