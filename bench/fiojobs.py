"""The fio jobs of ``python3 -m bench.fio``: mountpoint-s3's own job files
(mountpoint-s3/scripts/fio/: read/, write/, read_latency/, create/), sizes scaled; their
job-file text, the figure each job yields from fio's JSON, and the tables of a run.

Pure functions (no mount, no server): tests/unit/test_bench_fio.py checks them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

MiB = 1 << 20

# full: 256 MiB / 5 MiB files and 8 s runs (mountpoint-s3: 100 GiB / 5 MiB, 30 s);
# small: a quick check of the harness.
FIO_SCALES = {
    "full": dict(big=256 * MiB, small=5 * MiB, runtime=8, create_jobs=10, create_files=100),
    "small": dict(big=32 * MiB, small=5 * MiB, runtime=2, create_jobs=10, create_files=10),
}
# seq_write: a file of up to 8 x big (mountpoint-s3: 100 GiB), time based.  At 8 s s3fuse
# writes about 1.8 GiB; s3fs-fuse writes its local cache file at disk speed and uploads it
# all at close, so the cap is its upload size.  An in-RAM test server must hold that plus
# the deleted writes of the jobs before (they wait for RGW's garbage collection): the
# bench starts RGW with a 16 GiB memstore; 6 GiB (rgw.sh's default) filled and hung it.
WRITE_SIZE_FACTOR = 8


@dataclass(frozen=True)
class Job:
    name: str
    source: str               # the mountpoint-s3 job file it follows
    rw: str                   # fio rw= ("read", "randread", "write", "filecreate")
    numjobs: int = 1
    file: Optional[str] = "big"   # "big", "small", or None (the job creates its files)
    bs: str = "256k"
    metric: str = "MiB/s"     # "MiB/s" (higher is better), "ms" (lower), "files/s" (higher)
    opts: dict = field(default_factory=dict)

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "ms"


JOBS = [
    Job("seq_read", "read/seq_read.fio", "read"),
    Job("seq_read_4t", "read/seq_read_4t.fio", "read", 4),
    Job("rand_read", "read/rand_read.fio", "randread"),
    Job("rand_read_4t", "read/rand_read_4t.fio", "randread", 4),
    Job("seq_read_small", "read/seq_read_small.fio", "read", file="small"),
    Job("seq_read_4t_small", "read/seq_read_4t_small.fio", "read", 4, file="small"),
    Job("rand_read_4t_small", "read/rand_read_4t_small.fio", "randread", 4, file="small"),
    Job("seq_write", "write/seq_write.fio", "write", file=None,
        opts={"create_on_open": "1", "fsync_on_close": "1", "unlink": "1"}),
    Job("ttfb_small", "read_latency/ttfb_small.fio", "read", file="small", bs="1", metric="ms",
        opts={"direct": "1", "loops": "10"}),
    Job("create_files", "create/create_files_1000.fio", "filecreate", file=None, metric="files/s",
        opts={"create_on_open": "1", "filesize": "4k", "openfiles": "1"}),
]
JOB_NAMES = [j.name for j in JOBS]


def select(names: Optional[list[str]]) -> list[Job]:
    if not names:
        return list(JOBS)
    exact = {n for n in names if n in JOB_NAMES}     # an exact name, else a prefix
    out = [j for j in JOBS if j.name in exact or any(j.name.startswith(n) for n in names if n not in exact)]
    if not out:
        raise ValueError(f"no fio job matches {names}; jobs: {', '.join(JOB_NAMES)}")
    return out


def display_name(job: Job, scale: dict) -> str:
    if job.rw == "filecreate":
        return f"create_{scale['create_jobs'] * scale['create_files']}"
    return job.name


def job_text(job: Job, scale: dict, target: str) -> str:
    """The job file: ``target`` is the file to read (read jobs), the file to write
    (seq_write), or the directory the files are created in (create_files)."""
    g = ["[global]", "name=fs_bench", f"ioengine={'filecreate' if job.rw == 'filecreate' else 'sync'}",
         "fallocate=none"]
    if job.rw == "filecreate":
        body = [f"directory={target}", f"nrfiles={scale['create_files']}"]
        body += [f"{k}={v}" for k, v in job.opts.items()]
        return "\n".join(g + body + [""] + [f"[t{i}]" for i in range(scale["create_jobs"])]) + "\n"
    g.append(f"bs={job.bs}")
    if job.metric != "ms":
        g += [f"runtime={scale['runtime']}s", "time_based", "group_reporting"]
    if job.file:
        size = "1" if job.metric == "ms" else str(scale[job.file])
    else:
        size = str(scale["big"] * WRITE_SIZE_FACTOR)
    body = [f"[{job.name}]", f"filename={target}", f"size={size}", f"rw={job.rw}"]
    if job.numjobs > 1:
        body.append(f"numjobs={job.numjobs}")
    body += [f"{k}={v}" for k, v in job.opts.items()]
    return "\n".join(g + [""] + body) + "\n"


def figure(job: Job, scale: dict, out: dict, wall_s: float) -> dict:
    """The job's figure out of fio's JSON output (``out``) and the fio process's wall time."""
    jobs = out.get("jobs") or []
    if not jobs:
        raise ValueError("fio reported no jobs")
    errs = [j.get("error") for j in jobs if j.get("error")]
    if errs:
        raise ValueError(f"fio job error {errs[0]}")
    if job.rw == "filecreate":
        n = scale["create_jobs"] * scale["create_files"]
        return {"value": n / wall_s, "files": n, "wall_s": wall_s}
    side = "write" if job.rw == "write" else "read"
    st = jobs[0][side]
    if job.metric == "ms":
        lat = st.get("lat_ns") or {}
        return {"value": lat.get("mean", 0.0) / 1e6, "max_ms": lat.get("max", 0.0) / 1e6,
                "reads": st.get("total_ios")}
    res = {"value": st["bw"] / 1024.0, "io_mib": st["io_bytes"] / MiB, "runtime_s": st["runtime"] / 1000.0}
    if side == "write":   # incl. the close (fsync_on_close: the upload) and fio's start-up
        res["with_close_mib_s"] = st["io_bytes"] / MiB / wall_s
    return res


def _num(v: Optional[float], metric: str = "MiB/s") -> str:
    if v is None:
        return "-"
    if metric == "ms":
        return f"{v:.2f}"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    w = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))
    return [fmt(head), "  ".join("-" * x for x in w)] + [fmt(r) for r in rows]


def value(cell: Optional[dict]) -> Optional[float]:
    return cell.get("value") if cell and "error" not in cell else None   # None: failed or skipped


def tables(jobs: list[Job], scale: dict, fss: list[str], res: dict, floors: dict) -> list[str]:
    """Figures and ratios (res[job][fs] and floors[job]: {"value": ...}), then the daemons'
    peak RSS and CPU per job."""
    others = [f for f in fss if f != "s3fuse"]
    peer = "s3fs" if "s3fs" in fss else (others[0] if others else None)
    head = ["fio job (mountpoint-s3)", "unit"] + fss + ["floor"]
    if "s3fuse" in fss and peer:
        head.append(f"s3fuse/{peer}")
    if "s3fuse" in fss:
        head.append("s3fuse/floor")
    rows = []
    for j in jobs:
        cells = res.get(j.name, {})
        unit = j.metric + (" (lower better)" if j.lower_is_better else "")
        r = [display_name(j, scale), unit]
        for f in fss:
            c = cells.get(f)
            r.append("FAIL" if c and "error" in c else "skip" if c and "skipped" in c else _num(value(c), j.metric))
        fl = value(floors.get(j.name))
        r.append(_num(fl, j.metric))
        mine = value(cells.get("s3fuse"))
        if "s3fuse" in fss and peer:
            r.append(_ratio(mine, value(cells.get(peer))))
        if "s3fuse" in fss:
            r.append(_ratio(mine, fl))
        rows.append(r)
    out = _table(head, rows)
    write = res.get("seq_write", {})
    if write:
        out.append("seq_write incl. close (fsync_on_close uploads), MiB/s: " + ", ".join(
            f"{f} {_num(write[f].get('with_close_mib_s'))}" for f in fss if f in write and "error" not in write[f]))
    out.append("")
    head = ["daemon peak RSS MiB / CPU s"] + fss
    rows = []
    for j in jobs:
        r = [display_name(j, scale)]
        for f in fss:
            c = res.get(j.name, {}).get(f) or {}
            rss, cpu = c.get("peak_rss_mib"), c.get("cpu_s")
            r.append(f"{_num(rss)} / {cpu:.1f}" if rss is not None and cpu is not None else _num(rss))
        rows.append(r)
    out += _table(head, rows)
    errs = [f"  {j.name} {f}: {c['error']}" for j in jobs for f, c in res.get(j.name, {}).items()
            if c and "error" in c]
    if errs:
        out += ["", "failures:"] + errs
    return out
