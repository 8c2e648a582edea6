#!/usr/bin/env python3
"""Turn a `python3 -m bench --json` result into a PNG bar chart and a markdown table.

    python3 -m bench.chart RESULT.json --png docs/bench.png --md docs/bench.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ORDER = ["s3fuse", "s3fuse-wb", "s3fuse-list", "s3fs", "rclone"]
COLORS = {"s3fuse": "#1f77b4", "s3fuse-wb": "#9467bd", "s3fuse-list": "#6baed6", "s3fs": "#ff7f0e", "rclone": "#2ca02c"}


def load(path: str):
    data = json.loads(Path(path).read_text())
    fss = [f for f in ORDER if f in data["results"]] + [f for f in data["results"] if f not in ORDER]
    steps = []
    for f in fss:
        for name in data["results"][f].get("steps", {}):
            if name not in steps:
                steps.append(name)
    return data, fss, steps


def seconds(data, fs, step):
    s = data["results"].get(fs, {}).get("steps", {}).get(step)
    if not s or not s.get("ok"):
        return None
    return s.get("seconds")


def markdown(data, fss, steps) -> str:
    meta = data["meta"]
    peers = [f for f in fss if not f.startswith("s3fuse")]
    floors = data.get("floors") or {}
    floor_cols = ["floor (s)", "s3fuse / floor"] if floors else []
    head = ["step"] + [f"{f} (s)" for f in fss] + floor_cols + [f"s3fuse / {p}" for p in peers]
    rtt = meta.get("rtt_ms") or 0
    where = (f"+{rtt:g} ms per request through bench/latency_proxy.py" if meta.get("via_proxy")
             else "no added latency (loopback)")
    wall = f", run took {meta['wall_seconds'] / 60:.1f} min" if meta.get("wall_seconds") else ""
    lines = [f"Run {meta['date']} on {meta['server']} ({meta['host']['cpus']} cores, kernel "
             f"{meta['host']['kernel']}), scale {meta['scale']}, {where}{wall}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in steps:
        row = [step]
        for f in fss:
            v = seconds(data, f, step)
            row.append("fail" if v is None else f"{v:.3f}")
        ours = seconds(data, "s3fuse", step)
        if floors:
            fl = floors.get(step, {}).get("seconds")
            row.append(f"{fl:.3f}" if fl else "-")
            row.append(f"{ours / fl:.2f}x" if ours and fl else "-")
        for p in peers:
            theirs = seconds(data, p, step)
            row.append(f"{ours / theirs:.2f}x" if ours and theirs else "-")
        lines.append("| " + " | ".join(row) + " |")
    rss = ["peak RSS (MiB)"] + [
        f"{(data['results'][f].get('peak_rss_kib') or 0) / 1024:.0f}" for f in fss] + ["-"] * (len(peers) + len(floor_cols))
    lines.append("| " + " | ".join(rss) + " |")
    limits = data.get("limits", {})
    if limits:
        via = "through the same proxy" if meta.get("via_proxy") else "on the same server"
        lines += ["", f"Raw boto3 {via} (physical limit): " + ", ".join(
            f"{k} {v['seconds']:.3f} s" for k, v in limits.items() if "seconds" in v and "latency" not in k)]
    if floors:
        lines += ["", "Floors (same run, same path): " + "; ".join(
            f"{k} {v['seconds']:.3f} s = {v['doc']}" for k, v in floors.items())]
    return "\n".join(lines) + "\n"


def chart(data, fss, steps, png: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / max(1, len(fss))
    for i, f in enumerate(fss):
        vals = [seconds(data, f, s) or 0 for s in steps]
        xs = [x + i * width for x in range(len(steps))]
        ax.bar(xs, vals, width, label=f, color=COLORS.get(f))
    floors = data.get("floors") or {}
    for x, s in enumerate(steps):
        fl = floors.get(s, {}).get("seconds")
        if fl:
            ax.hlines(fl, x - width / 2, x + width * (len(fss) - 0.5), colors="black", linewidth=1.5,
                      label="floor" if x == min(i for i, t in enumerate(steps) if t in floors) else None)
    ax.set_xticks([x + width * (len(fss) - 1) / 2 for x in range(len(steps))])
    ax.set_xticklabels(steps, rotation=25, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log scale, lower is better)")
    meta = data["meta"]
    rtt = f", +{meta.get('rtt_ms', 0):g} ms RTT" if meta.get("via_proxy") else ""
    ax.set_title(f"s3fuse vs peers on {meta['server']}{rtt} - {meta['date'][:10]}, {meta['host']['cpus']} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.chart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result")
    ap.add_argument("--png")
    ap.add_argument("--md")
    args = ap.parse_args(argv)
    data, fss, steps = load(args.result)
    text = markdown(data, fss, steps)
    if args.md:
        Path(args.md).write_text(text)
    else:
        sys.stdout.write(text)
    if args.png:
        chart(data, fss, steps, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
