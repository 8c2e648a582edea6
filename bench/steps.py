"""The steps: what each does against the mountpoint, what it checks, and which are cold
(fresh mount, fresh cache dir, dropped page cache) or warm.  Write steps are timed until
the bucket shows the result (durable).  ``make_steps`` lists them in the order they run."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .child import run_child
from .common import MiB, RANDOM_READ_SIZE, RANDOM_READS, RANDOM_SEED, StepFailed, size_name
from .context import Ctx
from .system import run_cmd


@dataclass
class Step:
    name: str
    run: Callable[[Ctx], dict]      # returns {"seconds": float, ...extras}; raises StepFailed
    fresh_mount: bool = True        # fresh mount + fresh cache dir + dropped page cache
    requires: Optional[str] = None  # a step that must have succeeded on the same mount
    prepare: Optional[Callable[[Ctx], None]] = None  # boto3 set-up, untimed, before the mount
    kind: str = "read"
    doc: str = ""
    role: str = ""                  # which floor applies (floors.step_floors)


def etag_is_md5(etag: str) -> bool:
    return len(etag) == 32 and "-" not in etag


# ---- reads of one big file: cold, then warm on the same mount ----

def read_big(ctx: Ctx) -> dict:
    big = ctx.scale["big"]
    r = run_child(["read", str(ctx.mnt / "big.bin"), str(big)], ctx.args.step_timeout)
    if r["bytes"] != big or r["md5"] != ctx.big_md5:
        raise StepFailed(f"big.bin read {r['bytes']} bytes md5 {r['md5']} "
                         f"(want {big} / {ctx.big_md5})")
    return {"seconds": r["seconds"], "MiB_per_s": big / MiB / r["seconds"]}


def big_file_reads(scale: dict) -> list[Step]:
    bn = size_name(scale["big"])
    return [
        Step(f"read_{bn}_cold", read_big, doc="read big.bin right after mounting, MD5 checked",
             role="read_cold"),
        Step(f"read_{bn}_warm", read_big, fresh_mount=False, requires=f"read_{bn}_cold",
             doc="read big.bin again on the same mount"),
    ]


# ---- metadata: a long listing, cold then warm ----

def ls_many(ctx: Ctx) -> dict:
    many = ctx.scale["many"]
    cmd = ["ls", "-l", str(ctx.mnt / "many")]
    env = dict(os.environ, LC_ALL="C")
    t0 = time.perf_counter()
    p = run_cmd(cmd, timeout=ctx.args.step_timeout, env=env)
    dt = time.perf_counter() - t0
    lines = p.stdout.splitlines()
    files = [l for l in lines if not l.startswith("total ")]
    if len(files) != many or len(lines) != many + 1:
        raise StepFailed(f"ls -l many/ gave {len(files)} entries (+{len(lines) - len(files)} other), want {many}")
    return {"seconds": dt}


def listings(scale: dict) -> list[Step]:
    many = scale["many"]
    return [
        Step(f"ls_l_{many}_cold", ls_many, doc="ls -l many/ on a fresh mount", role="ls_cold"),
        Step(f"ls_l_{many}_warm", ls_many, fresh_mount=False, requires=f"ls_l_{many}_cold",
             doc="ls -l many/ again on the same mount"),
    ]


# ---- small random reads of the big file ----

def random_read(ctx: Ctx) -> dict:
    r = run_child(["pread", str(ctx.mnt / "big.bin"), str(ctx.local_big), str(RANDOM_SEED),
                   str(RANDOM_READS), str(RANDOM_READ_SIZE)], ctx.args.step_timeout)
    if r["mismatches"]:
        raise StepFailed(f"{r['mismatches']}/{RANDOM_READS} random reads returned wrong data")
    return {"seconds": r["seconds"], "ms_per_read": r["seconds"] * 1000 / RANDOM_READS}


def random_reads(scale: dict) -> list[Step]:
    return [
        Step(f"random_read_{size_name(RANDOM_READ_SIZE)}_x{RANDOM_READS}", random_read,
             doc="seeded random 4 KiB preads of big.bin on a fresh mount, byte-compared",
             role="random_read"),
    ]


# ---- trees of small files out: cp -r to local disk ----

def cp_out(ctx: Ctx) -> dict:
    prefix, expect = ctx.prepared["cpout"]
    dest = ctx.workdir / f"cpout-{ctx.mount.mnt.name}"
    try:
        t0 = time.perf_counter()
        run_cmd(["cp", "-r", str(ctx.mnt / prefix.rstrip("/")), str(dest)], timeout=ctx.args.step_timeout)
        dt = time.perf_counter() - t0
        got = {}
        for root, _, names in os.walk(dest):
            for name in names:
                path = Path(root) / name
                got[str(path.relative_to(dest))] = hashlib.md5(path.read_bytes()).hexdigest()
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if got != expect:
        missing = sorted(set(expect) - set(got))
        wrong = sorted(k for k in expect if k in got and got[k] != expect[k])
        raise StepFailed(f"cp -r copied {len(got)} files, {len(missing)} missing, {len(wrong)} with wrong "
                         f"bytes (e.g. {(missing + wrong)[:1]})")
    return {"seconds": dt, "ms_per_file": dt * 1000 / len(expect)}


def tree_reads(scale: dict) -> list[Step]:
    return [
        Step(f"cp_r_{scale['nwrite']}_small_out", cp_out, role="cp_out",
             doc="cp -r of a tree of small files out to local disk on a fresh mount, bytes checked"),
    ]


# ---- writes of one big file: cp in ----

def copy_in(ctx: Ctx) -> dict:
    big = ctx.scale["big"]
    key = f"copy-{ctx.fs.name}.bin"
    with open(ctx.local_big, "rb") as f:  # source in page cache: measure the fs only
        while f.read(8 * MiB):
            pass

    def durable() -> bool:
        try:
            return ctx.s3.c.head_object(Bucket=ctx.bucket, Key=key)["ContentLength"] == big
        except Exception:
            return False

    t0 = time.perf_counter()
    run_cmd(["cp", str(ctx.local_big), str(ctx.mnt / key)], timeout=ctx.args.step_timeout)
    t_cmd = time.perf_counter() - t0
    dt = ctx.poll_until(f"{key} size {big}", durable, t0, ctx.args.step_timeout)
    data = ctx.s3.ranged_get(ctx.bucket, key, big)  # untimed content check
    if hashlib.md5(data).hexdigest() != ctx.big_md5:
        raise StepFailed(f"{key} in the bucket has the wrong content")
    return {"seconds": dt, "command_seconds": t_cmd, "MiB_per_s": big / MiB / dt}


def big_file_writes(scale: dict) -> list[Step]:
    return [
        Step(f"copy_in_{size_name(scale['big'])}", copy_in, kind="write", role="copy_in",
             doc="cp a local file in; timed until HEAD shows the full size"),
    ]


# ---- trees of small files in the bucket: untar, rm -rf, mv ----

def untar_prepare(ctx: Ctx) -> None:
    nw = ctx.scale["nwrite"]
    top = f"untar-{ctx.fs.name}"
    rng = random.Random(RANDOM_SEED + 1)
    tpath = ctx.workdir / f"{top}.tar"
    expect = {}
    with tarfile.open(tpath, "w") as tf:
        for i in range(nw):
            data = rng.randbytes(rng.randint(512, 1536))
            name = f"{top}/d{i % 10:02d}/f{i:04d}.dat"
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = 1_700_000_000 + i
            tf.addfile(ti, io.BytesIO(data))
            expect[name] = (len(data), hashlib.md5(data).hexdigest())
    ctx.prepared["untar"] = (top, tpath, expect)


def untar(ctx: Ctx) -> dict:
    nw = ctx.scale["nwrite"]
    top, tpath, expect = ctx.prepared["untar"]
    tpath.read_bytes()  # warm the source

    def durable() -> bool:
        got = ctx.s3.list_prefix(ctx.bucket, top + "/")
        return all(k in got and got[k][0] == sz for k, (sz, _) in expect.items())

    t0 = time.perf_counter()
    # --no-same-owner: what a non-root user gets (root would also chown every file)
    run_cmd(["tar", "-xf", str(tpath), "--no-same-owner", "-C", str(ctx.mnt)],
            timeout=ctx.args.step_timeout)
    t_cmd = time.perf_counter() - t0
    dt = ctx.poll_until(f"{nw} objects under {top}/", durable, t0, ctx.args.step_timeout)
    got = ctx.s3.list_prefix(ctx.bucket, top + "/")
    bad = [k for k, (_, md5) in expect.items() if etag_is_md5(got[k][1]) and got[k][1] != md5]
    if bad:
        raise StepFailed(f"{len(bad)} untarred objects have wrong content, e.g. {bad[0]}")
    return {"seconds": dt, "command_seconds": t_cmd}


def small_files(prefix: str, n: int, seed: int, dirs: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sub = f"d{i % dirs:02d}/" if dirs > 1 else ""
        out.append((f"{prefix}{sub}f{i:04d}.dat", rng.randbytes(rng.randint(512, 1536))))
    return out


def rm_prepare(ctx: Ctx) -> None:
    nw = ctx.scale["nwrite"]
    prefix = f"rm-{ctx.fs.name}/"
    ctx.s3.put_many(ctx.bucket, small_files(prefix, nw, RANDOM_SEED + 2, 10))
    ctx.prepared["rm"] = prefix


def rm_rf(ctx: Ctx) -> dict:
    prefix = ctx.prepared["rm"]
    t0 = time.perf_counter()
    run_cmd(["rm", "-rf", str(ctx.mnt / prefix.rstrip("/"))], timeout=ctx.args.step_timeout)
    t_cmd = time.perf_counter() - t0
    dt = ctx.poll_until(f"no objects under {prefix}",
                        lambda: ctx.s3.prefix_empty(ctx.bucket, prefix), t0, ctx.args.step_timeout)
    return {"seconds": dt, "command_seconds": t_cmd}


def mv_prepare(ctx: Ctx) -> None:
    nw = ctx.scale["nwrite"]
    src, dst = f"mv-{ctx.fs.name}-src/", f"mv-{ctx.fs.name}-dst/"
    items = small_files(src, nw, RANDOM_SEED + 3, 1)
    ctx.s3.put_many(ctx.bucket, items)
    expect = {dst + k[len(src):]: (len(b), hashlib.md5(b).hexdigest()) for k, b in items}
    ctx.prepared["mv"] = (src, dst, expect)


def mv_dir(ctx: Ctx) -> dict:
    nw = ctx.scale["nwrite"]
    src, dst, expect = ctx.prepared["mv"]

    def durable() -> bool:
        if not ctx.s3.prefix_empty(ctx.bucket, src):
            return False
        got = ctx.s3.list_prefix(ctx.bucket, dst)
        return all(k in got and got[k][0] == sz for k, (sz, _) in expect.items())

    t0 = time.perf_counter()
    run_cmd(["mv", str(ctx.mnt / src.rstrip("/")), str(ctx.mnt / dst.rstrip("/"))],
            timeout=ctx.args.step_timeout)
    t_cmd = time.perf_counter() - t0
    dt = ctx.poll_until(f"{nw} objects moved {src} -> {dst}", durable, t0, ctx.args.step_timeout)
    got = ctx.s3.list_prefix(ctx.bucket, dst)
    bad = [k for k, (_, md5) in expect.items() if etag_is_md5(got[k][1]) and got[k][1] != md5]
    if bad:
        raise StepFailed(f"{len(bad)} moved objects have wrong content, e.g. {bad[0]}")
    return {"seconds": dt, "command_seconds": t_cmd}


def tree_writes(scale: dict) -> list[Step]:
    nw = scale["nwrite"]
    return [
        Step(f"untar_{nw}_files", untar, prepare=untar_prepare, kind="write", role="untar",
             doc="tar -x of small files; timed until all objects are listed"),
        Step(f"rm_rf_{nw}_files", rm_rf, prepare=rm_prepare, kind="write", role="rm_rf",
             doc="rm -rf of a tree; timed until the prefix lists empty"),
        Step(f"mv_dir_{nw}_files", mv_dir, prepare=mv_prepare, kind="write", role="mv_dir",
             doc="mv of a directory; timed until the bucket shows the new names only"),
    ]


def make_steps(scale: dict) -> list[Step]:
    """Every step of SCALE, in the order they run (the table's rows)."""
    return [*big_file_reads(scale), *listings(scale), *random_reads(scale), *tree_reads(scale),
            *big_file_writes(scale), *tree_writes(scale)]
