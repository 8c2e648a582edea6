"""One filesystem's pass over the steps: a fresh mount (after the step's untimed set-up
and a dropped page cache) for each cold step, the same mount for a warm one; per step
the daemon's CPU and peak RSS and, through the proxy, its traffic; a failure or a dead
daemon unmounts before the next step."""

from __future__ import annotations

from .common import MountError, StepFailed, log
from .context import Ctx
from .peers import Fs, do_mount, do_unmount
from .steps import Step
from .system import drop_caches, is_mounted, pid_alive


def run_fs(ctx: Ctx, fs: Fs, steps: list[Step]) -> dict:
    res: dict = {"version": fs.version(), "steps": {}, "mounts": []}
    why = fs.available()
    if why:
        log(f"  skipped: {why}")
        res.update(status="skipped", reason=why)
        return res
    ctx.fs = fs
    ok_on_mount: set[str] = set()
    res["status"] = "ok"

    def close_mount():
        if ctx.mount:
            m = ctx.mount
            do_unmount(ctx, m)
            hwm = m.info.get("final_status", {}).get("VmHWM")
            res["mounts"].append({"steps": m.info.get("steps", []),
                                  "mount_seconds": m.info.get("mount_seconds"),
                                  "peak_rss_kib": hwm,
                                  "cpu_s": m.info.get("final_status", {}).get("cpu_s"),
                                  "log": str(m.logfile)})
            ctx.mount = None
            ok_on_mount.clear()

    try:
        for i, step in enumerate(steps):
            rec: dict = {"kind": step.kind}
            res["steps"][step.name] = rec
            if step.requires and step.requires not in ok_on_mount:
                rec.update(ok=False, skipped=f"needs {step.requires} to pass on the same mount")
                log(f"  {step.name:28s} skipped ({rec['skipped']})")
                continue
            if step.fresh_mount or ctx.mount is None:
                close_mount()
                if step.prepare:
                    try:
                        step.prepare(ctx)
                    except Exception as e:
                        rec.update(ok=False, error=f"prepare: {type(e).__name__}: {e}")
                        log(f"  {step.name:28s}    FAILED in prepare: {type(e).__name__}: {e}")
                        continue
                try:
                    rec["caches_dropped"] = drop_caches(not ctx.args.no_drop_caches)
                    ctx.mount = do_mount(ctx, fs)
                except MountError as e:
                    log(f"  mount failed: {e}")
                    rec.update(ok=False, error=f"mount failed: {str(e).splitlines()[0]}")
                    for later in steps[i + 1:]:
                        res["steps"][later.name] = {"kind": later.kind, "ok": False,
                                                    "skipped": "mount failed"}
                    if not res["mounts"]:
                        res.update(status="skipped", reason=f"mount failed: {str(e).splitlines()[0]}")
                    close_mount_force(ctx)
                    break
            m = ctx.mount
            m.info.setdefault("steps", []).append(step.name)
            before = m.status()
            net0 = ctx.proxy.stats() if ctx.proxy else {}
            try:
                r = step.run(ctx)
                rec.update(ok=True, **r)
                ok_on_mount.add(step.name)
                extra = "".join(f" {k}={v:.3g}" for k, v in r.items()
                                if k != "seconds" and isinstance(v, float))
                log(f"  {step.name:28s} {r['seconds']:9.3f} s{extra}")
            except StepFailed as e:
                rec.update(ok=False, error=str(e))
                log(f"  {step.name:28s}    FAILED: {e}")
            except Exception as e:  # boto3 errors etc.: report and go on
                rec.update(ok=False, error=f"{type(e).__name__}: {e}")
                log(f"  {step.name:28s}    FAILED: {type(e).__name__}: {e}")
            after = m.status()
            if net0:   # what the fs sent through the proxy during the step (polls go around it)
                net1 = ctx.proxy.stats()
                rec["net"] = {k: net1.get(k, 0) - net0.get(k, 0)
                              for k in ("connections", "bursts", "bytes_up", "bytes_down")}
            if "cpu_s" in after:
                rec["daemon_cpu_s"] = after["cpu_s"] - before.get("cpu_s", 0.0)
            if "VmHWM" in after:
                rec["daemon_hwm_kib"] = after["VmHWM"]
            if not is_mounted(m.mnt) or (m.pids and not any(pid_alive(p) for p in m.pids)):
                log("  ! the filesystem went away (daemon died?); next step remounts")
                rec["daemon_died"] = True
                close_mount()
            elif not rec.get("ok"):
                close_mount()  # do not let a failure leak into the next step
    finally:
        close_mount()
    hwms = [x["peak_rss_kib"] for x in res["mounts"] if x.get("peak_rss_kib")]
    res["peak_rss_kib"] = max(hwms) if hwms else None
    return res


def close_mount_force(ctx: Ctx) -> None:
    for m in list(ctx.active_mounts):
        do_unmount(ctx, m, quiet=True)
    ctx.mount = None
