"""Self-healing mounts (#23 item 1, s3fuse/app/supervisor.py): the serving process is
SIGKILLed during reads, writes, a writeback queue and an edit in place; the supervisor
mounts again on the same mountpoint with the same cache_dir, the journal's uploads are
finished, the bucket ends up right (compared with boto3) and new opens work.  Deaths
over heal_limit leave the mount down with one line; umount and SIGTERM end everything;
`s3fuse status` shows the restarts.  The same through mount(8) with an fstab line, and
for a user's fusermount3 mount."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ..support.faultproxy import ProxiedServer
from ..support.mounts import REPO, Mount, cleanup_dead_mount, is_mounted
from ..support.probes import journal_records, md5, pid_alive, wait_for

pytestmark = pytest.mark.servers("moto")     # the supervisor, not the server, is under test

MiB = 1 << 20
HEAL = ["heal", "attr_ttl=1", "dir_ttl=1", "negative_ttl=1", "request_timeout=10", "retries=3"]
DEAD = {errno.ENOTCONN}          # what a descriptor of the dead connection gets afterwards
IN_FLIGHT = {errno.ECONNABORTED}  # a call the dead process had received and not answered


def serving_again(path: str) -> bool:
    """A live mount answers at ``path``: not the dead one (ENOTCONN), not the bare directory
    (the parent's device); a listing, which the kernel always asks for.  (Not "another device than the dead one": once the dead mount is
    detached and released, the new one may get its anonymous device number again.)"""
    try:
        os.listdir(path)          # reaches the daemon (a stat may be answered from the kernel's cache)
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False


def kill_and_heal(m, timeout: float = 30.0, after_kill=None):
    """SIGKILL the serving process of ``m`` (then call ``after_kill``); (its pid, seconds
    until the mountpoint serves again)."""
    pid, supervisor = m.daemon_pid(), m.supervisor_pid()
    assert pid and supervisor and pid != supervisor, "a healing mount has a supervisor and a serving process"
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    if after_kill:
        after_kill()
    wait_for(lambda: not pid_alive(pid), 10, "the serving process to die", 0.005)
    try:
        wait_for(lambda: serving_again(m.path), timeout, "the mountpoint to serve again", 0.01)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the log:\n{m.log()[-3000:]}") from None
    elapsed = time.monotonic() - t0
    assert m.supervisor_pid() == supervisor and m.daemon_pid() not in (None, pid)
    return pid, elapsed


def body(s3, bucket, key):
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def status_json(path: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "s3fuse", "status", path, "--json"], capture_output=True,
                         text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def closed_record(m, key: str) -> bool:
    return any(r.get("key") == key and r.get("state") == "closed" for r in journal_records(m.cache_dir))


@pytest.fixture
def proxied(s3_server, proxy, bucket, tmp_path):
    """proxied(options) -> a live healing mount whose requests go through the fault proxy."""
    mounts = []

    def make(options=()):
        m = Mount(ProxiedServer(s3_server, proxy), bucket, str(tmp_path), options=HEAL + list(options),
                  name=f"p{len(mounts)}")
        mounts.append(m)
        return m.mount()
    yield make
    proxy.clear()
    for m in mounts:
        m.unmount()
    for m in mounts:
        assert "failed unexpectedly" not in m.log(), m.log()[-4000:]


def test_sigkill_during_reads(mounter, s3, bucket):
    data = {f"r{i}.bin": os.urandom(3 * MiB + i) for i in range(4)}
    for key, value in data.items():
        s3.put_object(Bucket=bucket, Key=key, Body=value)
    held_data = os.urandom(3 * MiB)      # a file the readers never read: its pages at 2 MiB are not cached
    s3.put_object(Bucket=bucket, Key="held.bin", Body=held_data)
    m = mounter(bucket, options=HEAL + ["block_size=256K"])
    held = open(m.p("held.bin"), "rb")
    assert held.read(64 << 10) == held_data[:64 << 10]
    stop, healed = threading.Event(), threading.Event()
    errors, wrong, after = [], [], [0]

    def reader():
        while not stop.is_set():
            for key, want in data.items():
                try:
                    with open(m.p(key), "rb") as f:
                        got = f.read()
                except OSError as exc:
                    errors.append(exc.errno)
                    continue
                if got != want:
                    wrong.append(key)
                elif healed.is_set():
                    after[0] += 1
    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        kill_and_heal(m)
        healed.set()
        wait_for(lambda: after[0] >= 8, 30, "whole reads after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not wrong, f"a read returned wrong bytes: {wrong}"
    # a descriptor of the dead connection: every call that reaches FUSE fails with ENOTCONN
    with pytest.raises(OSError) as exc:
        os.pread(held.fileno(), 4096, 2 * MiB)
    assert exc.value.errno in DEAD
    with pytest.raises(OSError) as exc:
        os.fstat(held.fileno())
    assert exc.value.errno in DEAD
    with pytest.raises(OSError) as exc:
        held.close()               # close(2)'s flush too; the descriptor is gone all the same
    assert exc.value.errno in DEAD
    # opens in flight at the death got ENOTCONN; the few ms between the detach and the new
    # mount show the bare directory (ENOENT)
    assert set(errors) <= IN_FLIGHT | DEAD | {errno.ENOENT}, errors
    assert sorted(os.listdir(m.path)) == sorted(list(data) + ["held.bin"])
    with open(m.p("r3.bin"), "rb") as f:
        assert f.read() == data["r3.bin"]


def test_sigkill_during_writes_finishes_closed_uploads(proxied, proxy, s3, bucket):
    old = os.urandom(200 << 10)
    s3.put_object(Bucket=bucket, Key="old.bin", Body=old)
    m = proxied(["part_size=5M", "upload_threads=1"])
    big = os.urandom(12 * MiB + 5)
    proxy.set("delay", 400, methods={"PUT", "POST"})      # each part takes a while: close() is under way
    outcome = {}

    def write_big():
        try:
            with open(m.p("big.bin"), "wb") as f:
                f.write(big)
            outcome["close"] = "ok"
        except OSError as exc:
            outcome["close"] = exc.errno
    writer = threading.Thread(target=write_big)
    patching = os.open(m.p("old.bin"), os.O_RDWR)              # an edit never closed
    os.pwrite(patching, b"never closed" * 10, 0)
    fresh = os.open(m.p("fresh.bin"), os.O_WRONLY | os.O_CREAT, 0o644)   # a new file never closed
    os.write(fresh, b"F" * 1000)
    writer.start()
    wait_for(lambda: closed_record(m, "big.bin"), 60, "close() of big.bin to hand over its upload")
    kill_and_heal(m, after_kill=proxy.clear)
    writer.join(60)
    assert outcome["close"] == "ok" or outcome["close"] in IN_FLIGHT | DEAD, outcome
    for fd in (patching, fresh):
        with pytest.raises(OSError) as exc:
            os.write(fd, b"more")
        assert exc.value.errno in DEAD
        with pytest.raises(OSError) as exc:
            os.close(fd)               # the flush fails; the descriptor is gone all the same
        assert exc.value.errno in DEAD
    # the upload close() had started is finished by the new mount's recovery
    wait_for(lambda: body(s3, bucket, "big.bin") == big, 60, "big.bin resumed from the journal")
    assert body(s3, bucket, "old.bin") == old, "a write never closed is not uploaded over the object"
    assert body(s3, bucket, "fresh.bin") in (None, b"")
    recovered = os.listdir(os.path.join(m.cache_dir, "recovery"))
    assert any(open(os.path.join(m.cache_dir, "recovery", n), "rb").read() == b"F" * 1000 for n in recovered), \
        recovered
    # the mount serves: new files, listing, reads
    with open(m.p("after.txt"), "wb") as f:
        f.write(b"written after the restart")
    assert body(s3, bucket, "after.txt") == b"written after the restart"
    wait_for(lambda: {"big.bin", "old.bin", "after.txt"} <= set(os.listdir(m.path)), 10, "the listing")
    with open(m.p("big.bin"), "rb") as f:
        assert md5(f.read()) == md5(big)


def test_sigkill_with_a_writeback_queue(proxied, proxy, s3, bucket):
    m = proxied(["writeback", "part_size=5M"])
    proxy.set("blackhole", methods={"PUT", "POST"})         # no upload finishes before the death
    files = {f"q{i}": os.urandom(1000 + i) for i in range(6)}
    files["qbig"] = os.urandom(11 * MiB)
    for name, data in files.items():
        with open(m.p(name), "wb") as f:
            f.write(data)                                    # close() returned: durable locally
    assert all(body(s3, bucket, k) is None for k in files)
    kill_and_heal(m, after_kill=proxy.clear)
    # the new mount shows the closed versions at once, and uploads them from the journal
    assert set(files) <= set(os.listdir(m.path))
    with open(m.p("q3"), "rb") as f:
        assert f.read() == files["q3"]
    wait_for(lambda: all(body(s3, bucket, k) == d for k, d in files.items()), 90,
             "every closed file uploaded by the healed mount")


def test_sigkill_during_an_edit_in_place(proxied, proxy, s3, bucket):
    old = os.urandom(16 * MiB)
    s3.put_object(Bucket=bucket, Key="edit.bin", Body=old)
    m = proxied(["part_size=5M", "multipart_threshold=5M", "copy_part_size=5M", "upload_threads=1"])
    patch, tail = os.urandom(4096), os.urandom(100 << 10)
    want = old[:7 * MiB] + patch + old[7 * MiB + 4096:] + tail
    proxy.set("delay", 500, methods={"PUT", "POST"})
    outcome = {}

    def edit():
        try:
            with open(m.p("edit.bin"), "r+b") as f:
                f.seek(7 * MiB)
                f.write(patch)
                f.seek(0, os.SEEK_END)
                f.write(tail)
            outcome["close"] = "ok"
        except OSError as exc:
            outcome["close"] = exc.errno
    t = threading.Thread(target=edit)
    t.start()
    wait_for(lambda: closed_record(m, "edit.bin"), 60, "close() of the edit to hand over its upload")
    kill_and_heal(m, after_kill=proxy.clear)
    t.join(60)
    assert outcome["close"] == "ok" or outcome["close"] in IN_FLIGHT | DEAD, outcome
    wait_for(lambda: body(s3, bucket, "edit.bin") == want, 90, "the edit resumed from the journal")
    with open(m.p("edit.bin"), "rb") as f:
        assert md5(f.read()) == md5(want)


def test_repeated_deaths_back_off_then_stay_down(mounter, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    m = mounter(bucket, options=HEAL + ["heal_limit=2"])
    supervisor = m.supervisor_pid()
    first, t_first = kill_and_heal(m)
    second, t_second = kill_and_heal(m)
    assert t_second >= 1.0, "the second death within 60 s waits 1 s"
    st = status_json(m.path)
    assert [r["cause"] for r in st["heal"]["restarts"]] == ["killed by SIGKILL"] * 2
    assert [r["pid"] for r in st["heal"]["restarts"]] == [first, second]
    last = m.daemon_pid()
    os.kill(last, signal.SIGKILL)
    wait_for(lambda: not pid_alive(supervisor), 15, "the supervisor to give up")
    log = m.log()
    assert log.count("mounting again") == 2 and log.count("killed by SIGKILL") == 3
    down = [ln for ln in log.splitlines() if "stays down" in ln]
    assert len(down) == 1 and f"pid {last}" in down[0] and "3 deaths within 60 s" in down[0], down
    # down = the dead mount stays (ENOTCONN), so nothing is written into the bare directory
    with pytest.raises(OSError) as exc:
        os.listdir(m.path)
    assert exc.value.errno in DEAD
    time.sleep(1.5)
    assert m.daemon_pid() is None
    cleanup_dead_mount(m.path)


def test_umount_ends_the_supervisor_and_status_shows_restarts(mounter, bucket):
    m = mounter(bucket, options=HEAL)
    supervisor = m.supervisor_pid()
    dead, _ = kill_and_heal(m)
    serving = m.daemon_pid()
    st = status_json(m.path)
    assert st["pid"] == serving and st["heal"]["supervisor"] == supervisor
    assert st["heal"]["restarts"] == [dict(st["heal"]["restarts"][0], cause="killed by SIGKILL", pid=dead)]
    text = subprocess.run([sys.executable, "-m", "s3fuse", "status", m.path], capture_output=True, text=True,
                          timeout=30, cwd=REPO).stdout
    assert "restarts: 1" in text and f"pid {dead} died (killed by SIGKILL)" in text, text
    proc = subprocess.run(["umount", m.path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: not pid_alive(supervisor) and not pid_alive(serving), 30, "both processes to exit")
    time.sleep(1.0)
    assert not is_mounted(m.path), "a clean unmount is not healed"
    assert m.log().count("mounting again") == 1


def test_an_unmount_during_the_backoff_is_not_undone(mounter, bucket):
    m = mounter(bucket, options=HEAL)
    supervisor = m.supervisor_pid()
    kill_and_heal(m)
    os.kill(m.daemon_pid(), signal.SIGKILL)       # the second death within 60 s: 1 s before the restart
    wait_for(lambda: "mounting again in 1 s" in m.log(), 10, "the second restart to be announced")
    cleanup_dead_mount(m.path)                    # the user unmounts the dead mount meanwhile
    wait_for(lambda: not pid_alive(supervisor), 10, "the supervisor to exit")
    assert not is_mounted(m.path)
    assert "unmounted meanwhile" in m.log()


def test_sigterm_to_the_supervisor_unmounts_cleanly(mounter, bucket):
    m = mounter(bucket, options=HEAL)
    supervisor, serving = m.supervisor_pid(), m.daemon_pid()
    with open(m.p("t.txt"), "wb") as f:
        f.write(b"x")
    os.kill(supervisor, signal.SIGTERM)           # passed on to the serving process: a clean unmount
    wait_for(lambda: not pid_alive(supervisor) and not pid_alive(serving), 30, "both processes to exit")
    assert not is_mounted(m.path)
    assert "died" not in m.log()


def test_heal_off_has_no_supervisor(mounter, bucket):
    m = mounter(bucket, options=["heal=0"])
    assert len(m._pids()) == 1
    assert status_json(m.path)["heal"] is None
    text = subprocess.run([sys.executable, "-m", "s3fuse", "status", m.path], capture_output=True, text=True,
                          timeout=30, cwd=REPO).stdout
    assert "heal: off" in text
