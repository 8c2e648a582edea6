"""Text rendering of progress bars and mount status for the terminal."""
from __future__ import annotations

import sys
import time


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def bar(done: int, total: int, width: int = 30) -> str:
    frac = 1.0 if total <= 0 else min(1.0, done / total)
    filled = int(frac * width)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {frac * 100:5.1f}%"


def eta(done: int, total: int, rate: float) -> str:
    if rate <= 0 or total <= done:
        return "--:--"
    secs = int((total - done) / rate)
    return f"{secs // 60:02d}:{secs % 60:02d}"


def upload_line(u: dict) -> str:
    done, total, rate = u.get("bytes_done", 0), u.get("bytes_total", 0), u.get("rate", 0.0)
    return (f"  {u.get('key', '?')}: {bar(done, total)} {human(done)}/{human(total)} "
            f"{human(rate)}/s ETA {eta(done, total, rate)}")


def heal_lines(heal) -> list:
    """The supervisor of a healing mount and the restarts it made (app/supervisor.py)."""
    if not heal:
        return ["  heal: off (no supervisor: -f, or heal=0)"]
    restarts = heal.get("restarts") or []
    lines = [f"  heal: on (supervisor pid {heal.get('supervisor')}, down after more than "
             f"{heal.get('heal_limit')} deaths in 60 s); restarts: {len(restarts)}"]
    for r in restarts[-5:]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("time", 0)))
        lines.append(f"    {when}: pid {r.get('pid')} died ({r.get('cause')}), mounted again")
    return lines


def render_status(entry: dict) -> str:
    lines = [f"{entry.get('mountpoint')}: bucket {entry.get('bucket')}"
             + (f" prefix {entry.get('prefix')}" if entry.get("prefix") else "") + f" (pid {entry.get('pid')})"]
    cache = entry.get("cache") or {}
    rate = cache.get("hit_rate")
    lines.append(f"  cache: {human(cache.get('bytes', 0))}, hit rate "
                 + (f"{rate * 100:.1f}%" if rate is not None else "n/a"))
    mem = entry.get("memory")
    if mem:
        lines.append(f"  memory: buffers {human(mem.get('used', 0))} now, {human(mem.get('peak', 0))} peak of "
                     f"{human(mem.get('limit', 0))} (max_memory {human(mem.get('max_memory', 0))}); "
                     f"process RSS {human(mem.get('rss', 0))}, peak {human(mem.get('rss_peak', 0))}"
                     + (f"; {mem['overdrafts']} overdraft(s)" if mem.get("overdrafts") else ""))
    reqs = entry.get("requests") or {}
    lines.append(f"  requests: {sum(reqs.values())} ({', '.join(f'{k} {v}' for k, v in sorted(reqs.items()))}),"
                 f" errors {entry.get('errors', 0)}")
    t = entry.get("transport") or {}
    if t:
        falls = t.get("fallbacks") or {}
        lines.append(f"  transport: {t.get('endpoint')} ({t.get('addressing')}-style, region {t.get('region')}), "
                     f"fallbacks to botocore {t.get('fallback_total', 0)}"
                     + (f" ({', '.join(f'{k} {v}' for k, v in sorted(falls.items()))})" if falls else ""))
    if entry.get("metrics"):
        lines.append(f"  metrics: {entry['metrics']}")
    lines.extend(heal_lines(entry.get("heal")))
    uploads = entry.get("uploads") or []
    lines.append(f"  uploads in progress: {len(uploads)}; pending in journal: {entry.get('journal_pending', 0)}")
    lines.extend(upload_line(u) for u in uploads)
    wb = entry.get("writeback")
    if wb:
        rate = wb.get("rate")
        lines.append(f"  writeback: {wb['pending_files']} file(s), {human(wb['pending_bytes'])} waiting for upload"
                     + (f", {human(rate)}/s, ETA {eta(0, wb['pending_bytes'], rate)}" if rate else "")
                     + f"; {wb['uploaded']} uploaded")
        for fail in wb.get("failing") or []:
            lines.append(f"    failing: {fail['path']}: {fail['attempts']} attempt(s), last error {fail['error']}; "
                         f"next try in {max(0, fail['next_try'] - time.time()):.0f} s")
    dq = entry.get("deletes")
    if dq and (dq.get("pending") or dq.get("requests") or dq.get("refused")):
        lines.append(f"  deletes: {dq['pending']} queued; {dq['deleted']} deleted in {dq['requests']} request(s)"
                     + (f"; refused: {', '.join(dq['refused'])}" if dq.get("refused") else ""))
        for fail in dq.get("failing") or []:
            lines.append(f"    failing: {fail['key']}: {fail['attempts']} attempt(s), last error {fail['error']}; "
                         f"next try in {max(0, fail['next_try'] - time.time()):.0f} s")
    return "\n".join(lines)


class ProgressBar:
    """A one-line progress bar on stderr for long commands (resume, cleanup)."""

    def __init__(self, label: str, total: int, stream=sys.stderr):
        self.label, self.total, self.done = label, total, 0
        self.start = time.monotonic()
        self.stream = stream
        self._last = 0.0

    def update(self, n: int):
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.2 or self.done >= self.total:
            self._last = now
            rate = self.done / max(1e-6, now - self.start)
            self.stream.write(f"\r{self.label}: {bar(self.done, self.total)} {human(self.done)}/{human(self.total)} "
                              f"{human(rate)}/s ETA {eta(self.done, self.total, rate)}  ")
            self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()
