"""Issue 16: the block cache survives a SIGKILL intact.

- A unit check of what a crash (or a hand) can leave in cache_dir/blocks: a row whose
  value file is short or missing is a miss (its row deleted, never served torn); value
  files without a row are swept when the cache opens.
- A real mount: a sequential read of a large object is cut by SIGKILL of the daemon; every
  block the dead daemon left in the cache equals the object's bytes, and after a remount
  with the same cache_dir a whole read fetches only what was not cached (status
  ``bytes_fetched``).
- Kills at random moments while blocks are written, a few times in a row: the cache never
  holds a block that differs from the object, and a last read returns the object.
"""
from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time

import diskcache

from s3fuse.data.blockcache import BlockCache
from s3fuse.data.valuefiles import WholeWriteDisk, value_files

from ..support.mounts import REPO, cleanup_dead_mount
from ..support.probes import daemon_stats, kill_daemon, wait_for

MIB = 1 << 20
OPTIONS = ["block_size=1M", "readahead=8M"]

READER = r"""
import sys
with open(sys.argv[1], "rb", buffering=0) as f:
    f.seek(int(sys.argv[2]))
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        print(f.tell(), flush=True)
"""


def cached_blocks(cache_dir: str, bucket: str, key: str, data: bytes, block: int = MIB) -> tuple:
    """(blocks of ``key`` in the dead daemon's cache, value files without a row); asserts
    each cached block equals the object's bytes at its offset."""
    cache = diskcache.Cache(os.path.join(cache_dir, "blocks"), disk=WholeWriteDisk)
    try:
        named, found = value_files(cache)
        blocks = 0
        for k in cache.iterkeys():
            b, name, _etag, index = k.split("\0")
            if (b, name) != (bucket, key):
                continue
            value = cache.get(k)
            if value is None:
                continue   # a row without its file: a miss, never served (the unit test below)
            index = int(index)
            assert bytes(value) == data[index * block:(index + 1) * block], f"block {index} differs"
            blocks += 1
        return blocks, len(found - named)
    finally:
        cache.close()


def start_reader(path: str, offset: int = 0):
    return subprocess.Popen([sys.executable, "-c", READER, path, str(offset)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_torn_or_missing_value_files_are_misses_and_orphans_are_swept(tmp_path):
    data = [bytearray(random.Random(i).randbytes(MIB)) for i in range(6)]
    cache = BlockCache(str(tmp_path), 1 << 30, "b")
    for i, block in enumerate(data):
        cache.put("k", "e1", i, block)
    assert cache.flush()
    named, found = value_files(cache._cache)
    assert named == found and len(found) == 6
    files = sorted(found)
    full = [os.path.join(str(tmp_path), f) for f in files]
    with open(full[0], "r+b") as f:      # short (a crash of the machine before the data reached disk)
        f.truncate(MIB // 2)
    os.remove(full[1])                   # missing
    with open(full[2], "ab") as f:       # long
        f.write(b"x")
    orphan = os.path.join(os.path.dirname(full[3]), "0" * 30 + f"-{MIB}.val")
    with open(orphan, "wb") as f:        # a file written, its row never committed
        f.write(b"y" * MIB)
    cache._recent.clear()
    served = {i: cache.get("k", "e1", i) for i in range(6)}
    bad = {i for i, v in served.items() if v is None}
    assert len(bad) == 3 and cache.torn == 3
    for i, v in served.items():
        assert v is None or bytes(v) == bytes(data[i])
    assert all(not cache.contains("k", "e1", i) for i in bad), "torn rows are deleted"
    cache.close()
    cache = BlockCache(str(tmp_path), 1 << 30, "b")
    assert cache.flush()
    # the count is set when the sweep returns, after the file is gone: wait for the count
    wait_for(lambda: cache.orphans >= 1, 5, "the orphan swept and counted")
    assert not os.path.exists(orphan)
    named, found = value_files(cache._cache)
    assert named == found and len(found) == 3
    cache.close()


def test_read_cut_by_sigkill_resumes_from_cached_blocks(s3, bucket, mounter):
    size = 64 * MIB
    data = random.Random(16).randbytes(size)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=data)
    m = mounter(bucket, options=OPTIONS)
    reader = start_reader(m.p("big.bin"))
    done = 0
    while done < 24 * MIB:
        line = reader.stdout.readline()
        assert line, "the reader stopped early"
        done = int(line)
    kill_daemon(m)            # reads and cache writes in flight
    reader.kill()
    reader.wait(10)
    cleanup_dead_mount(m.path)
    blocks, orphans = cached_blocks(m.cache_dir, bucket, "big.bin", data)
    cached = blocks * MIB
    assert cached >= 8 * MIB, f"only {blocks} blocks cached after reading {done >> 20} MiB"

    m.mount()
    assert hashlib.md5(read_all(m.p("big.bin"))).hexdigest() == hashlib.md5(data).hexdigest()
    st = daemon_stats(m)
    fetched = st["bytes_fetched"]
    print(f"\n  read {done >> 20} MiB of {size >> 20} MiB, killed: {blocks} blocks cached, {orphans} orphan "
          f"files; after remount fetched {fetched / MIB:.1f} MiB (uncached part {(size - cached) / MIB:.1f} MiB), "
          f"received {st['bytes_received'] / MIB:.1f} MiB")
    assert fetched <= size - cached, "blocks cached before the crash were fetched again"
    assert fetched >= size - cached - 2 * MIB
    assert st["cache"]["torn"] == 0
    assert st["cache"]["orphans_removed"] == orphans


def test_repeated_kills_while_caching_never_leave_a_wrong_block(s3, bucket, mounter):
    size = 40 * MIB
    data = random.Random(61).randbytes(size)
    s3.put_object(Bucket=bucket, Key="obj.bin", Body=data)
    rng = random.Random(1616)
    m = mounter(bucket, options=OPTIONS + ["cache_size=24M"])   # culls run too
    for loop in range(4):
        reader = start_reader(m.p("obj.bin"), rng.randrange(0, size, MIB))
        time.sleep(rng.uniform(0.05, 0.8))
        kill_daemon(m)
        reader.kill()
        reader.wait(10)
        cleanup_dead_mount(m.path)
        blocks, orphans = cached_blocks(m.cache_dir, bucket, "obj.bin", data)
        print(f"\n  kill {loop + 1}: {blocks} blocks cached, all equal to the object; {orphans} orphan files")
        m.mount()
    assert read_all(m.p("obj.bin")) == data
    st = daemon_stats(m)
    assert st["cache"]["torn"] == 0


WRITER = r"""
import hashlib, sys
from s3fuse.data.blockcache import BlockCache
cache = BlockCache(sys.argv[1], 6 << 20, "b", memory=0)
i = int(sys.argv[2])
print("ready", flush=True)
while True:
    index = i % 200
    cache.put("k", "e", index, bytearray(hashlib.sha256(str(index).encode()).digest() * 4096))
    i += 1
"""


def block_of(index: int) -> bytes:
    return hashlib.sha256(str(index).encode()).digest() * 4096      # 128 KiB


def test_sigkill_of_a_process_writing_blocks_never_leaves_a_torn_block(tmp_path):
    """The writer thread of a process that only writes blocks (culls included: 6 MiB limit)
    is killed at random moments; after each kill every row serves its whole block, and the
    next open sweeps the files a kill left without a row."""
    rng = random.Random(99)
    directory = str(tmp_path / "blocks")
    orphans_seen = rows_seen = 0
    for loop in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, directory, str(loop * 37)], stdout=subprocess.PIPE,
                                text=True, cwd=REPO)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.kill()
        proc.wait(10)
        cache = diskcache.Cache(directory, disk=WholeWriteDisk)
        try:
            named, found = value_files(cache)
            assert named <= found, "a row names a file that is not there"
            orphans_seen += len(found - named)
            for k in cache.iterkeys():
                index = int(k.split("\0")[3])
                assert bytes(cache.get(k)) == block_of(index), f"block {index} torn"
                rows_seen += 1
        finally:
            cache.close()
    cache = BlockCache(directory, 6 << 20, "b")
    assert cache.flush()
    wait_for(lambda: (lambda n, f: n == f)(*value_files(cache._cache)), 5, "orphans swept")
    cache.close()
    print(f"\n  6 kills while writing: {rows_seen} rows checked whole, {orphans_seen} orphan files seen and swept")
