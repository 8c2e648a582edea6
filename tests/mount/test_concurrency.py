"""Concurrency through one mount: parallel writers and readers on different files and on
the same file, listings while files are created, two processes appending to one file.
Every operation runs in its own child process with a deadline (a hung mount fails the
test instead of hanging it); the bucket is checked directly with boto3 afterwards; the
daemon must log no traceback at all.

What concurrent writers of one path see (docs/SEMANTICS.md "Writes"): all handles of a
path open for writing share one staging file, like processes sharing an inode on a local
filesystem - each write lands at its offset, O_APPEND writes go to the current end - and
every close()/fsync() uploads the staging file as it is at that moment: the last close
wins, and since it comes after the last write of every writer, the object ends up holding
every write.
"""
from __future__ import annotations

import os
import time

import pytest

from ..support.ops import finish_op, start_op
from ..support.probes import MiB, bucket_keys, bucket_md5, md5
from ..support.report import report

LIMIT = 120.0
TOTALS = {"ops": 0, "objects": 0}


def run_all(procs: dict, limit: float = LIMIT) -> dict:
    res = {k: finish_op(p, limit, k) for k, p in procs.items()}
    TOTALS["ops"] += len(res)
    bad = {k: r for k, r in res.items() if not r["ok"]}
    assert not bad, f"operations failed: {bad}"
    return {k: r["result"] for k, r in res.items()}


def clean_log(m):
    log = m.log()
    assert "Traceback" not in log and "failed unexpectedly" not in log, log[-4000:]


WRITE = "write_all(args[0], read_all(args[1])); result = os.stat(args[0]).st_size"
READ = "result = md5(read_all(args[0]))"


def test_parallel_writers_and_readers_on_different_files(s3, bucket, mounter, tmp_path):
    reads = {}
    for i in range(8):
        data = os.urandom((i + 1) * 300 * 1000)
        s3.put_object(Bucket=bucket, Key=f"in/r{i}.bin", Body=data)
        reads[f"in/r{i}.bin"] = md5(data)
    writes = {}
    for i in range(8):
        data = os.urandom(6 * MiB + i if i % 4 == 0 else (i + 1) * 200 * 1000)   # two multipart files
        (tmp_path / f"w{i}.src").write_bytes(data)
        writes[f"out/w{i}.bin"] = (md5(data), len(data), str(tmp_path / f"w{i}.src"))
    m = mounter(bucket, options=["part_size=5M"])
    os.mkdir(m.p("out"))
    procs = {f"read {k}": start_op(READ, [m.p(k)]) for k in reads}
    procs.update({f"write {k}": start_op(WRITE, [m.p(k), src]) for k, (_, _, src) in writes.items()})
    res = run_all(procs)
    for k, digest in reads.items():
        assert res[f"read {k}"] == digest
    for k, (digest, size, _) in writes.items():
        assert res[f"write {k}"] == size
        got = bucket_md5(s3, bucket, k)
        assert got and got[0] == digest and got[2]["s3fuse-md5"] == digest, k
    # and read back in parallel through the mount (no kernel cache: fresh opens)
    res = run_all({k: start_op(READ, [m.p(k)]) for k in writes})
    assert res == {k: v[0] for k, v in writes.items()}
    TOTALS["objects"] += len(reads) + len(writes)
    clean_log(m)


def test_parallel_readers_of_one_file(s3, bucket, mounter):
    data = os.urandom(9 * MiB + 3)
    s3.put_object(Bucket=bucket, Key="shared.bin", Body=data)
    m = mounter(bucket)
    code = r"""
import random
rnd = random.Random(args[1])
with open(args[0], "rb") as f:
    whole = f.read()
    for _ in range(20):                       # random reads, interleaved with the other readers
        off, n = rnd.randrange(len(whole)), rnd.randrange(1, 300000)
        f.seek(off)
        if f.read(n) != whole[off:off + n]:
            raise OSError(errno.EIO, "a random read differs from the sequential read")
result = md5(whole)
"""
    res = run_all({f"reader {i}": start_op(code, [m.p("shared.bin"), i]) for i in range(8)})
    assert set(res.values()) == {md5(data)}
    TOTALS["objects"] += 1
    clean_log(m)


def test_parallel_writers_of_one_file(s3, bucket, mounter):
    """8 processes write the same path at once (O_TRUNC, 2 MiB each, their own byte).  As on
    a local filesystem they share the file: the result has the full size and every 4 KiB
    page comes whole from one of the writers; the bucket holds exactly what the mount shows."""
    size = 2 * MiB
    m = mounter(bucket)
    code = r"""
fill = bytes([65 + args[1]]) * args[2]
time.sleep(max(0.0, args[3] - time.time()))      # start together
fd = os.open(args[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
try:
    for off in range(0, len(fill), 64 * 1024):
        os.pwrite(fd, fill[off:off + 64 * 1024], off)
finally:
    os.close(fd)
result = True
"""
    start_at = time.time() + 2
    run_all({f"writer {i}": start_op(code, [m.p("same.bin"), i, size, start_at]) for i in range(8)})
    got = run_op_read(m.p("same.bin"))
    assert len(got) == size
    for off in range(0, size, 4096):
        page = got[off:off + 4096]
        assert page == page[:1] * len(page) and 65 <= page[0] < 73, f"page at {off} mixes writers or is a hole"
    body = s3.get_object(Bucket=bucket, Key="same.bin")["Body"].read()
    assert body == got, "the last close uploads what the mount shows"
    writers = sorted({chr(got[off]) for off in range(0, size, 4096)})
    print(f"\nsame file, 8 writers: pages from writers {writers}")
    TOTALS["objects"] += 1
    clean_log(m)


def run_op_read(path: str) -> bytes:
    proc = start_op("result = read_all(args[0]).hex()", [path])
    r = finish_op(proc, LIMIT, f"read {path}")
    assert r["ok"], r
    return bytes.fromhex(r["result"])


APPEND = r"""
import time
fd = os.open(args[0], os.O_WRONLY | os.O_APPEND)
try:
    for i in range(args[2]):
        os.write(fd, b"%s%04d\n" % (args[1].encode(), i))
        if i % 50 == 49:
            os.fsync(fd)                  # a flush in the middle: an upload of what is there now
finally:
    os.close(fd)
result = True
"""


def test_two_processes_appending(s3, bucket, mounter):
    """Two processes append 200 lines each to one file (O_APPEND, one write per line, an
    fsync every 50).  Documented result: one shared staging file, appends go to the
    current end, each close/fsync uploads the file as it is then (the last close wins) -
    so the object holds the first line plus all 400 lines, each process's lines in order,
    interleaved in some order."""
    s3.put_object(Bucket=bucket, Key="log.txt", Body=b"start\n")
    m = mounter(bucket)
    run_all({name: start_op(APPEND, [m.p("log.txt"), name, 200]) for name in ("A", "B")})
    body = s3.get_object(Bucket=bucket, Key="log.txt")["Body"].read()
    lines = body.decode().splitlines()
    assert lines[0] == "start" and len(lines) == 401, f"{len(lines)} lines"
    for name in "AB":
        assert [ln for ln in lines[1:] if ln[0] == name] == [f"{name}{i:04d}" for i in range(200)]
    assert run_op_read(m.p("log.txt")) == body
    switches = sum(1 for a, b in zip(lines[1:], lines[2:]) if a[0] != b[0])
    print(f"\nappend: 400 lines from 2 processes, {switches} switches between writers")
    TOTALS["objects"] += 1
    clean_log(m)


def test_listing_while_files_are_created(s3, bucket, mounter):
    """4 processes list and stat a directory in a loop while another creates 150 files in
    it: every listing is a subset of the final set, every listed name stats (no ENOENT for
    a name just listed), the final listing and the bucket hold all of them."""
    m = mounter(bucket, options=["dir_ttl=0.2"])
    os.mkdir(m.p("many"))
    names = [f"n{i:03d}" for i in range(150)]
    create = r"""
for name in args[1]:
    write_all(os.path.join(args[0], name), name.encode())
result = len(args[1])
"""
    lister = r"""
import time
seen, listings, errors = set(), 0, []
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    names = os.listdir(args[0])
    listings += 1
    for n in names:
        try:
            os.stat(os.path.join(args[0], n))
        except OSError as exc:
            errors.append((n, exc.errno))
    seen.update(names)
    if os.path.exists(args[1]) and len(names) >= args[2]:
        break
result = {"seen": sorted(seen), "listings": listings, "errors": errors}
"""
    done = m.p("many", "n149")
    procs = {f"lister {i}": start_op(lister, [m.p("many"), done, len(names)]) for i in range(4)}
    procs["creator"] = start_op(create, [m.p("many"), names])
    res = run_all(procs)
    assert res["creator"] == len(names)
    total = 0
    for i in range(4):
        r = res[f"lister {i}"]
        assert not r["errors"], f"stat of listed names failed: {r['errors'][:5]}"
        assert set(r["seen"]) <= set(names)
        total += r["listings"]
    final = run_all({"ls": start_op("result = sorted(os.listdir(args[0]))", [m.p("many")])})["ls"]
    assert final == names
    assert sorted(k[5:] for k in bucket_keys(s3, bucket, "many/") if k != "many/") == names
    print(f"\n{total} listings during the creation of {len(names)} files")
    TOTALS["objects"] += len(names)
    clean_log(m)


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    yield
    report(request.config, f"concurrency: {TOTALS['ops']} operations in child processes, "
                           f"{TOTALS['objects']} objects verified")
