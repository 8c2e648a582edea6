"""What a run prints and writes: the table (seconds per fs, floors, ratios s3fuse/peer,
daemon RSS and CPU), the floor and limit rows under it, the failures, and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Optional

from .common import PEERS_OF, fmt_limit, fmt_s, log
from .context import Ctx
from .peers import FS_CLASSES
from .steps import Step


def print_table(ctx: Ctx, steps: list[Step], fss: list[str], results: dict, limits: dict) -> None:
    peers = [f for f in fss if f != PEERS_OF]
    ratio_cols = [f"{PEERS_OF}/{p}" for p in peers] if PEERS_OF in fss else []
    floors = ctx.floors
    floor_cols = ["floor", f"{PEERS_OF}/floor"] if floors and PEERS_OF in fss else ["floor"] if floors else []
    head = ["step", *fss, *floor_cols, *ratio_cols]
    pad = [""] * len(floor_cols)

    def cell(fs: str, step: str) -> tuple[str, Optional[float]]:
        r = results.get(fs, {})
        if r.get("status") == "skipped":
            return "skip", None
        s = r.get("steps", {}).get(step)
        if not s:
            return "-", None
        if s.get("ok"):
            return fmt_s(s["seconds"]), s["seconds"]
        return ("skip" if s.get("skipped") else "FAIL"), None

    rows = []
    for st in steps:
        vals = {f: cell(f, st.name) for f in fss}
        row = [st.name, *[vals[f][0] for f in fss]]
        if floor_cols:
            fl = floors.get(st.name, {}).get("seconds")
            row.append(fmt_s(fl))
            if len(floor_cols) > 1:
                a = vals[PEERS_OF][1]
                row.append(f"{a / fl:.2f}x" if a is not None and fl else "-")
        for p in peers if ratio_cols else []:
            a, b = vals[PEERS_OF][1], vals[p][1]
            row.append(f"{a / b:.2f}x" if a is not None and b else "-")
        rows.append(row)
    # peak RSS row
    rss = {f: results.get(f, {}).get("peak_rss_kib") for f in fss}
    row = ["daemon_peak_rss_MiB", *[f"{rss[f] / 1024:.0f}" if rss[f] else "-" for f in fss], *pad]
    for p in peers if ratio_cols else []:
        a, b = rss[PEERS_OF], rss[p]
        row.append(f"{a / b:.2f}x" if a and b else "-")
    rows.append(row)
    # daemon CPU, summed over the steps that passed on every fs that ran
    ran = [f for f in fss if results.get(f, {}).get("status") == "ok"]
    common = [st.name for st in steps
              if ran and all(results[f]["steps"].get(st.name, {}).get("ok") for f in ran)]
    cpu = {}
    for f in fss:
        vals = [results[f]["steps"][n].get("daemon_cpu_s") for n in common] if f in ran else []
        cpu[f] = sum(v for v in vals if v is not None) if vals else None
    row = [f"daemon_cpu_s ({len(common)} common steps)", *[fmt_s(cpu[f]) for f in fss], *pad]
    for p in peers if ratio_cols else []:
        a, b = cpu[PEERS_OF], cpu[p]
        row.append(f"{a / b:.2f}x" if a is not None and b else "-")
    rows.append(row)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r):
        return "  ".join(str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i])
                         for i, c in enumerate(r))

    log()
    rtt = f", +{ctx.args.rtt:g} ms RTT per request (latency proxy)" if ctx.proxy else ""
    log(f"seconds (lower is better); ratio = {PEERS_OF}/peer (<1: {PEERS_OF} faster); "
        f"scale={ctx.args.scale}, endpoint={ctx.direct_endpoint} ({ctx.server_kind}){rtt}")
    log(line(head))
    log(line(["-" * w for w in widths]))
    for r in rows:
        log(line(r))
    if floors:
        log()
        log("floors (same run, same path to the server; bench/floors.py):")
        w0 = max(len(k) for k in floors)
        for k, v in floors.items():
            log(f"{k.ljust(w0)}  {fmt_s(v['seconds']):>8s} s  {v['doc']}")
    if limits:
        log()
        log("physical limits: boto3 " + ("through the same proxy" if ctx.proxy else "straight to the endpoint")
            + ", no FUSE (seconds)")
        w0 = max(len(k) for k in limits)
        for k, v in limits.items():
            log(f"{k.ljust(w0)}  {fmt_limit(v)}  {v.get('doc', '')}")
    log()
    for f in fss:
        r = results.get(f, {})
        if r.get("status") == "skipped":
            log(f"{f}: skipped: {r.get('reason')}")
        for name, s in r.get("steps", {}).items():
            if not s.get("ok") and s.get("error") and r.get("status") != "skipped":
                log(f"{f}: {name}: {s['error'].splitlines()[0][:200]}")


def mount_cmd_doc(ctx: Ctx, fs: str) -> str:
    try:
        return shlex.join(FS_CLASSES[fs](ctx).mount_cmd(Path("MOUNTPOINT"), Path("CACHE_DIR")))
    except Exception as e:
        return f"? ({e})"


def write_json(path: str, ctx: Ctx, fss: list[str], results: dict, limits: dict, proxy_stats: Optional[dict],
               interrupted: bool, wall_seconds: float) -> None:
    args = ctx.args
    out = {
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "endpoint": ctx.endpoint, "server": ctx.server_kind, "bucket": ctx.bucket,
            "rtt_ms": args.rtt, "via_proxy": ctx.proxy is not None,
            "server_endpoint": ctx.direct_endpoint,
            "scale": args.scale, "sizes": ctx.scale,
            "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                     "python": platform.python_version()},
            "fs": {f: {"version": results.get(f, {}).get("version"),
                       "mount_cmd": mount_cmd_doc(ctx, f)} for f in fss},
            "interrupted": interrupted,
            "wall_seconds": wall_seconds,
        },
        "limits": limits,
        "floors": ctx.floors,
        "floor_parts": ctx.floor_parts,
        "proxy_stats": proxy_stats,
        "results": results,
    }
    Path(path).write_text(json.dumps(out, indent=2, default=str) + "\n")
    log(f"- wrote {path}")
