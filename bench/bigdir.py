"""One big directory (100,000 objects by default) on s3fuse and s3fs-fuse: time to the first
entry, ``ls -f | wc -l``, cold and warm ``ls -l``, and the daemon's memory.

The objects are created with parallel PutObjects straight to the server (bench/floors.py's
lean client; a --bucket of an earlier run with --keep-bucket is reused when it already
holds them).  Per --rtt value and filesystem, each cold figure is taken on a fresh mount
with an empty cache after a dropped page cache:

1. first entry: ``os.scandir(DIR)`` and its first ``next()`` (in a child process);
2. ``ls -f DIR | wc -l`` (names only: no attributes), the count checked;
3. ``ls -l DIR`` cold, then warm on the same mount (LC_ALL=C, lines counted), the daemon's
   RSS right after mounting, after the warm ``ls -l``, and its peak (VmHWM) at unmount.

The floor column: one LIST page (first entry) and every LIST page in series (``ls -f``).

    python3 -m bench.bigdir --start-rgw --json /tmp/bigdir.json
    python3 -m bench.bigdir --start-moto --count 2000      # harness check"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time

from .common import MountError, StepFailed, log
from .floors import RawS3
from .session import Session, add_common_args

PREFIX = "bigdir/"
FIRST_ENTRY = ("import os, sys, time\n"
               "t0 = time.perf_counter()\n"
               "it = os.scandir(sys.argv[1])\n"
               "e = next(it)\n"
               "print(time.perf_counter() - t0, e.name)\n")
ROWS = [("first_entry_s", "first entry (os.scandir + next), s"),
        ("ls_f_s", "ls -f | wc -l, s"),
        ("ls_l_cold_s", "ls -l cold, s"),
        ("ls_l_warm_s", "ls -l warm, s"),
        ("rss_idle_mib", "daemon RSS after mount, MiB"),
        ("rss_after_ls_l_mib", "daemon RSS after ls -l, MiB"),
        ("peak_rss_mib", "daemon peak RSS, MiB")]


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python3 -m bench.bigdir", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "s3fuse,s3fs")
    ap.add_argument("--count", type=int, default=100_000, help="objects in the directory")
    ap.add_argument("--put-threads", type=int, default=32)
    ap.set_defaults(step_timeout=1800.0)    # a cold ls -l of 100,000 takes minutes on a loaded machine
    return ap.parse_args(argv)


def key_of(i: int) -> str:
    return f"{PREFIX}f{i:06d}.dat"


def create_objects(s: Session, raw: RawS3, count: int, threads: int) -> None:
    have = set(raw.list_keys(raw.connect(), PREFIX)) if not s.created else set()
    todo = [i for i in range(count) if key_of(i) not in have]
    if not todo:
        log(f"- {PREFIX}: {count} objects reused")
        return
    t0 = time.perf_counter()
    chunks = [todo[k::threads] for k in range(threads)]

    def one(idx: list[int]):
        conn = raw.connect()
        try:
            for i in idx:
                raw.request(conn, "PUT", key_of(i), body=b"%06d\n" % i)
        finally:
            conn.close()

    with cf.ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(one, c) for c in chunks]:
            f.result()
    dt = time.perf_counter() - t0
    log(f"- {PREFIX}: {len(todo)} objects PUT in {dt:.1f}s ({len(todo) / dt:.0f}/s, {threads} threads)")


def timed_shell(cmd: str, timeout: float) -> tuple[float, str]:
    env = dict(os.environ, LC_ALL="C")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"timed out after {timeout:.0f}s: {cmd}")
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise StepFailed(f"rc={p.returncode}: {cmd}: {p.stderr.strip()[-300:]}")
    return dt, p.stdout.strip()


def first_entry(d: str, timeout: float) -> float:
    try:
        p = subprocess.run([sys.executable, "-c", FIRST_ENTRY, d], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"first entry: timed out after {timeout:.0f}s")
    if p.returncode != 0:
        raise StepFailed(f"first entry rc={p.returncode}: {p.stderr.strip()[-300:]}")
    return float(p.stdout.split()[0])


def on_fresh_mount(s: Session, fs_name: str, out: dict, what) -> None:
    """Mount, what(m) fills ``out``, unmount; a failure lands in out["errors"]."""
    try:
        m = s.fresh_mount(s.fs(fs_name))
    except MountError as e:
        out.setdefault("errors", []).append(f"mount failed: {str(e).splitlines()[0]}")
        return
    try:
        what(m)
    except StepFailed as e:
        out.setdefault("errors", []).append(str(e))
    finally:
        st = s.unmount(m)
        if st["peak_rss_mib"] is not None:
            out["peak_rss_mib"] = max(out.get("peak_rss_mib") or 0, st["peak_rss_mib"])


def run_fs(s: Session, fs_name: str, count: int) -> dict:
    why = s.fs(fs_name).available()
    if why:
        return {"skipped": why}
    out: dict = {}
    to = s.args.step_timeout

    def first(m):
        out["first_entry_s"] = first_entry(str(m.mnt / PREFIX.rstrip("/")), to)

    def ls_f(m):
        dt, text = timed_shell(f"ls -f '{m.mnt / PREFIX}' | wc -l", to)
        n = int(text)
        if n not in (count, count + 2):           # with or without . and ..
            raise StepFailed(f"ls -f listed {n} names, want {count} (+2)")
        out["ls_f_s"], out["ls_f_lines"] = dt, n

    def ls_l(m):
        out["rss_idle_mib"] = m.status().get("VmRSS", 0) / 1024
        for phase in ("cold", "warm"):
            dt, text = timed_shell(f"ls -l '{m.mnt / PREFIX}' | wc -l", to)
            if int(text) != count + 1:             # "total" + one line per entry
                raise StepFailed(f"ls -l {phase} printed {text} lines, want {count + 1}")
            out[f"ls_l_{phase}_s"] = dt
        out["rss_after_ls_l_mib"] = m.status().get("VmRSS", 0) / 1024

    for fn in (first, ls_f, ls_l):
        on_fresh_mount(s, fs_name, out, fn)
    return out


def floors(raw: RawS3) -> dict:
    conn = raw.connect()
    try:
        t0 = time.perf_counter()
        raw.request(conn, "GET", None, query={"list-type": "2", "prefix": PREFIX, "max-keys": "1000"})
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = len(raw.list_keys(conn, PREFIX))
        return {"first_entry_s": one, "ls_f_s": time.perf_counter() - t0, "listed": n}
    finally:
        conn.close()


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def table(fss: list[str], res: dict, floor: dict) -> list[str]:
    head = [""] + fss + ["floor"] + (["s3fuse/s3fs"] if "s3fuse" in fss and "s3fs" in fss else [])
    rows = []
    for k, label in ROWS:
        r = [label] + [("skip" if "skipped" in res.get(f, {}) else _fmt(res.get(f, {}).get(k))) for f in fss]
        r.append(_fmt(floor.get(k)))
        if len(head) > len(r):
            a, b = res.get("s3fuse", {}).get(k), res.get("s3fs", {}).get(k)
            r.append(f"{a / b:.2f}" if a is not None and b else "-")
        rows.append(r)
    w = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in [head] + rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    for f in fss:
        for e in res.get(f, {}).get("errors", []):
            lines.append(f"  {f}: {e}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    t_run = time.perf_counter()
    report: dict = {"count": args.count, "passes": {}}
    with Session(args, "bigdir") as s:
        direct = RawS3(args.endpoint, args.region, os.environ["AWS_ACCESS_KEY_ID"],
                       os.environ["AWS_SECRET_ACCESS_KEY"], s.ctx.bucket)
        log(f"bigdir: server {s.ctx.server_kind} {args.endpoint}, bucket {s.ctx.bucket}, {args.count} objects, "
            f"fs {','.join(s.fss)}, rtt {args.rtt} ms")
        create_objects(s, direct, args.count, args.put_threads)
        report["versions"] = {f: s.fs(f).version() for f in s.fss}
        for rtt in s.rtts:
            s.set_rtt(rtt)
            log(f"== +{rtt:g} ms ({s.endpoint})")
            raw = RawS3(s.endpoint, args.region, os.environ["AWS_ACCESS_KEY_ID"],
                        os.environ["AWS_SECRET_ACCESS_KEY"], s.ctx.bucket)
            p = report["passes"][f"{rtt:g}"] = {"floor": floors(raw), "results": {}}
            log(f"  floor: {p['floor']}")
            for f in s.fss:
                p["results"][f] = r = run_fs(s, f, args.count)
                log(f"  {f:8s} " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in r.items()))
        for rtt in s.rtts:
            p = report["passes"][f"{rtt:g}"]
            log("")
            log(f"bigdir, {s.ctx.server_kind}, +{rtt:g} ms: one directory of {args.count:,} objects, "
                "each cold figure on a fresh mount with an empty cache")
            for line in table(s.fss, p["results"], p["floor"]):
                log(line)
    report["wall_s"] = time.perf_counter() - t_run
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
        log(f"- wrote {args.json}")
    return 130 if s.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
