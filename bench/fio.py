"""mountpoint-s3's fio workloads on s3fuse, s3fs-fuse and rclone mount, on one server, in one run.

For each --rtt value (0 and 20 ms: through bench/latency_proxy.py), for each fio job of
bench/fiojobs.py: the job's floor (bench/fiofloor.py: the same concurrency and block size
as ranged GETs straight to the server, no FUSE), then per filesystem a fresh mount with an
empty cache after a dropped page cache, ``fio --thread JOBFILE``, unmount, the daemon's
peak RSS and CPU.  Prints MiB/s (ms, files/s) per job and fs, s3fuse/s3fs and s3fuse/floor.

    python3 -m bench.fio --start-rgw --rtt 0,20 --json /tmp/fio.json
    python3 -m bench.fio --start-moto --scale small --jobs seq_read,create   # harness check

See bench/README.md.  Needs root, /dev/fuse and fio (scripts/install.sh --bench)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from . import fiojobs
from .common import MountError, StepFailed, log
from .fiofloor import job_floor
from .fiojobs import FIO_SCALES, MiB, Job
from .floors import RawS3
from .report import mount_cmd_doc
from .session import Session, add_common_args, parse_list
from .system import run_cmd

KEYS = {"big": "fio/big.bin", "small": "fio/small.bin"}


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python3 -m bench.fio", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "s3fuse,s3fs,rclone")
    ap.add_argument("--jobs", help="comma list of job names (or prefixes): " + ",".join(fiojobs.JOB_NAMES))
    ap.add_argument("--runtime", type=float, help="seconds per time-based job (default: 8, small scale 2)")
    ap.add_argument("--fio-bin", default="fio")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor row")
    ap.add_argument("--list-jobs", action="store_true")
    return ap.parse_args(argv)


def upload_files(s: Session, scale: dict) -> None:
    c = s.ctx.s3.c
    for which, key in KEYS.items():
        size = scale[which]
        try:
            if c.head_object(Bucket=s.ctx.bucket, Key=key)["ContentLength"] == size:
                log(f"- {key}: reused ({size // MiB} MiB)")
                continue
        except c.exceptions.ClientError:
            pass
        local = s.workdir / os.path.basename(key)
        with open(local, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 16 * MiB))
                f.write(chunk)
                left -= len(chunk)
        t0 = time.perf_counter()
        s.ctx.s3.multipart_put(s.ctx.bucket, key, local)
        log(f"- {key}: {size // MiB} MiB uploaded in {time.perf_counter() - t0:.1f}s")
        local.unlink()
    # warm-up, untimed: a fresh server's first reads of a new object are slower, and the
    # first job (s3fuse's) would pay for it alone
    for which, key in KEYS.items():
        s.ctx.s3.ranged_get(s.ctx.bucket, key, scale[which])


def run_fio(s: Session, job: Job, scale: dict, target: str, tag: str) -> dict:
    jobfile = s.workdir / f"{tag}.fio"
    out = s.workdir / f"{tag}.json"
    jobfile.write_text(fiojobs.job_text(job, scale, target))
    cmd = [s.args.fio_bin, "--thread", "--output-format=json", f"--output={out}", "--eta=never", str(jobfile)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=s.args.step_timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"fio timed out after {s.args.step_timeout:.0f}s")
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = p.stderr.strip() or (out.read_text(errors="replace").strip() if out.exists() else "")
        raise StepFailed(f"fio rc={p.returncode}: {tail.splitlines()[-1][:300] if tail else ''}")
    text = out.read_text()
    data = json.loads(text[text.index("{"):])   # fio may print notes before the JSON
    return fiojobs.figure(job, scale, data, wall)


def run_one(s: Session, fs_name: str, job: Job, scale: dict) -> dict:
    fs = s.fs(fs_name)
    why = fs.available()
    if why:
        return {"skipped": why}
    try:
        m = s.fresh_mount(fs)
    except MountError as e:
        return {"error": f"mount failed: {str(e).splitlines()[0]}"}
    tag = f"{job.name}-{fs_name}-{s.ctx.mount_seq}"
    cell: dict = {}
    try:
        if job.file:
            target = str(m.mnt / KEYS[job.file])
        elif job.rw == "write":
            target = str(m.mnt / f"{tag}.dat")
        else:
            target = str(m.mnt / tag)
            run_cmd(["mkdir", target], timeout=s.args.mount_timeout)
            cell["prefix"] = tag + "/"
        cell.update(run_fio(s, job, scale, target, tag))
    except (StepFailed, ValueError, OSError) as e:
        cell["error"] = str(e)
    finally:
        cell.update(s.unmount(m))
    if "prefix" in cell and "error" not in cell:
        cell["objects_after_unmount"] = len(s.ctx.s3.list_prefix(s.ctx.bucket, cell["prefix"]))
    # what a job wrote is deleted at once: seq_write writes up to 8 x the big file per file
    # system, which fills an in-RAM test server (RGW memstore) within a few jobs
    if not job.file:
        s.ctx.s3.delete_prefix(s.ctx.bucket, tag + (".dat" if job.rw == "write" else "/"))
    return cell


def describe(job: Job, cell: dict) -> str:
    if "skipped" in cell:
        return f"skipped: {cell['skipped']}"
    if "error" in cell:
        return f"FAILED: {cell['error']}"
    extra = "".join(f" {k}={v:.3g}" for k, v in cell.items()
                    if k not in ("value", "cpu_s", "rss_mib") and isinstance(v, float))
    return f"{cell['value']:9.2f} {job.metric}{extra}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_jobs:
        for j in fiojobs.JOBS:
            log(f"{j.name:20s} {j.rw:10s} x{j.numjobs} bs={j.bs:5s} file={j.file or '-':6s} {j.metric:8s}"
                f" mountpoint-s3/scripts/fio/{j.source}")
        return 0
    if not shutil.which(args.fio_bin):
        raise SystemExit(f"{args.fio_bin} not found: apt-get install -y fio (scripts/install.sh --bench)")
    jobs = fiojobs.select(parse_list(args.jobs) if args.jobs else None)
    scale = dict(FIO_SCALES[args.scale])
    if args.runtime:
        scale["runtime"] = args.runtime
    t_run = time.perf_counter()
    report: dict = {"scale": scale, "passes": {}}
    with Session(args, "fio") as s:
        log(f"fio suite: server {s.ctx.server_kind} {args.endpoint}, bucket {s.ctx.bucket}, fs {','.join(s.fss)}, "
            f"rtt {','.join(f'{r:g}' for r in s.rtts)} ms, files {scale['big'] // MiB}/{scale['small'] // MiB} MiB, "
            f"{scale['runtime']:g} s runs, workdir {s.workdir}")
        upload_files(s, scale)
        report["versions"] = {f: s.fs(f).version() for f in s.fss}
        for rtt in s.rtts:
            s.set_rtt(rtt)
            log(f"== +{rtt:g} ms ({s.endpoint})")
            raw = RawS3(s.endpoint, args.region, os.environ["AWS_ACCESS_KEY_ID"],
                        os.environ["AWS_SECRET_ACCESS_KEY"], s.ctx.bucket)
            res: dict = {}
            fl: dict = {}
            report["passes"][f"{rtt:g}"] = {"results": res, "floors": fl,
                                           "mount_cmds": {f: mount_cmd_doc(s.ctx, f) for f in s.fss}}
            for job in jobs:
                if not args.no_floor:
                    try:
                        fl[job.name] = job_floor(raw, job, scale, KEYS, f"fio-floor/{job.name}/")
                        log(f"  {job.name:20s} {'floor':8s} {fl[job.name]['value']:9.2f} {job.metric}")
                    except Exception as e:
                        fl[job.name] = {"error": f"{type(e).__name__}: {e}"}
                        log(f"  {job.name:20s} floor FAILED: {fl[job.name]['error']}")
                res[job.name] = {}
                for f in s.fss:
                    res[job.name][f] = cell = run_one(s, f, job, scale)
                    log(f"  {job.name:20s} {f:8s} {describe(job, cell)}")
            report["passes"][f"{rtt:g}"]["wall_s"] = time.perf_counter() - t_run
        for rtt in s.rtts:
            p = report["passes"][f"{rtt:g}"]
            log("")
            log(f"fio, {s.ctx.server_kind}, +{rtt:g} ms: {scale['big'] // MiB} MiB / {scale['small'] // MiB} MiB "
                f"files, {scale['runtime']:g} s runs, each job on a fresh mount with an empty cache")
            for line in fiojobs.tables(jobs, scale, s.fss, p["results"], p["floors"]):
                log(line)
    report["wall_s"] = time.perf_counter() - t_run
    report["interrupted"] = s.interrupted
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
        log(f"- wrote {args.json}")
    return 130 if s.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
