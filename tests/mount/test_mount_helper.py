"""mount.s3fuse as a mount helper: mount(8) with fstab entries, umount, signals, status;
`s3fuse install-helper` and the man page."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from s3fuse.app import statusfile as status

from ..support.mounts import REPO, is_mounted, kill_and_wait_for_heal, mount_pids, unmount

HELPERS = ("/sbin/mount.s3fuse", "/sbin/mount.fuse.s3fuse")
# one worker: mount_helpers may write HELPERS for the module, and removes what it wrote
pytestmark = pytest.mark.xdist_group("mount-helper")


@pytest.fixture(scope="module")
def mount_helpers():
    """Make sure mount(8) finds our helpers (scripts/install.sh installs them with
    `s3fuse install-helper`)."""
    from s3fuse.app.install import helper_text
    created = []
    for path in HELPERS:
        if not os.path.exists(path):
            with open(path, "w") as f:     # as install-helper does: mount(8) gives no PATH
                f.write(helper_text())
            os.chmod(path, 0o755)
            created.append(path)
    yield
    for path in created:
        os.unlink(path)


def _passwd_file(tmp_path, server) -> str:
    path = tmp_path / "passwd-s3fuse"
    path.write_text(f"{server.access_key}:{server.secret_key}\n")
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize("form", ["fuse.s3fuse", "s3fuse"])
def test_fstab_mount_write_umount(form, mount_helpers, s3_server, s3, bucket, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    s3.put_object(Bucket=bucket, Key="sub/hello.txt", Body=b"from the bucket\n")
    opts = ",".join(["_netdev", "nofail", "x-systemd.automount", "comment=test", "defaults", "user",
                     f"endpoint={s3_server.endpoint}", f"passwd_file={_passwd_file(tmp_path, s3_server)}",
                     f"cache_dir={tmp_path / 'cache'}", f"log_file={tmp_path / 'log'}"])
    source = f"{bucket}:/sub" if form == "s3fuse" else bucket
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# test fstab\n{source} {mnt} {form} {opts} 0 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    try:
        proc = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True,
                              timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert is_mounted(str(mnt))
        prefix = "" if form == "s3fuse" else "sub/"
        with open(mnt / prefix / "hello.txt", "rb") as f:
            assert f.read() == b"from the bucket\n"
        with open(mnt / prefix / "written.txt", "wb") as f:
            f.write(b"written through fstab mount\n")
        proc = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert not is_mounted(str(mnt))
        body = s3.get_object(Bucket=bucket, Key="sub/written.txt")["Body"].read()
        assert body == b"written through fstab mount\n"
    finally:
        unmount(str(mnt))


def test_an_fstab_mount_heals_after_sigkill(mount_helpers, s3_server, s3, bucket, tmp_path):
    """#23: a mount made by mount(8) from fstab is supervised: SIGKILL of the serving process,
    and the mountpoint serves again by itself (the file written before is there, a new one
    can be written); umount then ends every process of the mount."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = ",".join(["_netdev", "defaults", f"endpoint={s3_server.endpoint}",
                     f"passwd_file={_passwd_file(tmp_path, s3_server)}", f"cache_dir={tmp_path / 'cache'}",
                     f"log_file={tmp_path / 'log'}"])
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{bucket} {mnt} fuse.s3fuse {opts} 0 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    try:
        proc = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True, text=True,
                              timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        (mnt / "before.txt").write_bytes(b"written before the kill\n")
        kill_and_wait_for_heal(str(mnt), lambda: (mnt / "before.txt").read_bytes() == b"written before the kill\n")
        (mnt / "after.txt").write_bytes(b"written after the heal\n")
        proc = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 10
        while mount_pids(str(mnt)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not mount_pids(str(mnt)), "umount must end the supervisor too"
        assert s3.get_object(Bucket=bucket, Key="after.txt")["Body"].read() == b"written after the heal\n"
        assert "died (killed by SIGKILL)" in (tmp_path / "log").read_text()
    finally:
        unmount(str(mnt))


def test_busy_unmount_reports_ebusy(mounter, bucket):
    m = mounter(bucket)
    with open(m.p("busy.txt"), "wb") as f:
        f.write(b"x")
        proc = subprocess.run(["umount", m.path], capture_output=True, text=True)
        assert proc.returncode != 0
        assert "busy" in proc.stderr.lower()
    assert is_mounted(m.path)


def _write_big(path: str, size: int, seed: int = 1) -> str:
    h = hashlib.md5()
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = chunk[: min(len(chunk), size - written)]
            f.write(piece)
            h.update(piece)
            written += len(piece)
    return h.hexdigest()


def _status(mountpoint: str):
    proc = subprocess.run([sys.executable, "-m", "s3fuse", "status", mountpoint, "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=30)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_status_json_shows_upload_progress(mounter, s3, bucket, tmp_path):
    """A writer holds a big file open half written: its streamed parts show as an upload
    in progress (bytes done < total) in `s3fuse status --json`, then it completes."""
    m = mounter(bucket, options=["part_size=5M"])
    first = os.urandom((52 << 20) + 100)        # 10 full parts streamed, a partial 11th
    rest = os.urandom(3 << 20)
    seen = None
    with open(m.p("big.bin"), "wb") as f:
        f.write(first)
        deadline = time.monotonic() + 60
        while seen is None and time.monotonic() < deadline:
            # read the status file in-process: a forked `s3fuse status` would close our
            # inherited fd, and every close() is a FUSE flush that uploads the file
            st = status.read(m.path)
            for up in (st or {}).get("uploads", []):
                if up["key"] == "big.bin" and 0 < up["bytes_done"] < up["bytes_total"]:
                    seen = up
            time.sleep(0.2)
        f.write(rest)
    assert seen is not None, "status never showed the upload in progress"
    assert 0 < seen["bytes_total"] <= len(first) and seen["bytes_done"] % (5 << 20) == 0
    text = subprocess.run([sys.executable, "-m", "s3fuse", "status", m.path], capture_output=True,
                          text=True, cwd=REPO).stdout
    assert "requests:" in text and "cache:" in text
    assert json.loads(subprocess.run([sys.executable, "-m", "s3fuse", "status", m.path, "--json"],
                                     capture_output=True, text=True, cwd=REPO).stdout)["bucket"] == bucket
    body = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    assert body == first + rest


def test_sigterm_during_upload_loses_nothing(mounter, s3, bucket, tmp_path):
    m = mounter(bucket, options=["part_size=5M", "upload_threads=1"])
    src = str(tmp_path / "big.bin")
    digest = _write_big(src, 60 << 20)
    pid = m.daemon_pid()
    assert pid
    cp = subprocess.Popen(["cp", src, m.p("big.bin")], stderr=subprocess.PIPE)
    # wait until close() handed the file over (a closed journal record) and parts are moving
    jdir = os.path.join(m.cache_dir, "journal")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = [json.load(open(os.path.join(jdir, n))) for n in os.listdir(jdir) if n.endswith(".json")]
        if any(r["state"] == "closed" for r in records):
            break
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    cp.wait(60)
    unmount(m.path)

    def complete():
        try:
            body = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
        except s3.exceptions.NoSuchKey:
            return False
        return hashlib.md5(body).hexdigest() == digest

    if not complete():     # left in the journal: the next mount finishes it
        m.mount()
        deadline = time.monotonic() + 120
        while not complete() and time.monotonic() < deadline:
            time.sleep(0.5)
    assert complete()


def test_sighup_reopens_log(mounter, bucket):
    m = mounter(bucket)
    pid = m.daemon_pid()
    os.rename(m.log_file, m.log_file + ".1")
    os.kill(pid, signal.SIGHUP)
    def reopened_line() -> bool:      # the file appears before the line is written into it
        return os.path.exists(m.log_file) and "reopened" in open(m.log_file).read()
    deadline = time.monotonic() + 10
    while not reopened_line() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.path.exists(m.log_file), "log not reopened after SIGHUP"
    assert reopened_line(), "no 'log file reopened' line in the new log"
    assert is_mounted(m.path), "SIGHUP must not unmount"


# -- install-helper and the man page ----------------------------------------------------------
def _install_helper(tmp_path) -> tuple:
    sbin, man = tmp_path / "sbin", tmp_path / "man"
    proc = subprocess.run([sys.executable, "-m", "s3fuse", "install-helper", f"--sbin-dir={sbin}",
                           f"--man-dir={man}"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return sbin, man


def test_install_helper_writes_helpers_that_mount_t_and_fstab_run(mount_helpers, s3_server, s3, bucket, tmp_path):
    """`s3fuse install-helper` output, used the way mount(8) uses it: `mount -t
    fuse.s3fuse`, `mount -t s3fuse` and an fstab line, in a private mount namespace where
    the helpers written are bound over /sbin's (so no other mount of the host sees
    them), and the fuse.TYPE symlink run directly with an empty environment."""
    sbin, man = _install_helper(tmp_path)
    helper, link = sbin / "mount.s3fuse", sbin / "mount.fuse.s3fuse"
    assert os.stat(helper).st_mode & 0o777 == 0o755
    assert os.readlink(link) == "mount.s3fuse"
    text = helper.read_text()
    assert text.startswith(f"#!{sys.executable}\n") and f"sys.path.insert(0, {REPO!r})" in text
    assert (man / "man8" / "mount.s3fuse.8").exists()

    s3.put_object(Bucket=bucket, Key="sub/hello.txt", Body=b"from the bucket\n")
    mnts = {name: tmp_path / name for name in ("t", "short", "fstab", "direct")}
    for path in mnts.values():
        path.mkdir()
    common = [f"endpoint={s3_server.endpoint}", f"passwd_file={_passwd_file(tmp_path, s3_server)}"]

    def opts(name):
        return ",".join(common + [f"cache_dir={tmp_path / (name + '-cache')}", f"log_file={tmp_path / (name + '.log')}"])
    fstab = tmp_path / "fstab.test"
    fstab.write_text(f"{bucket}:/sub {mnts['fstab']} fuse.s3fuse _netdev,nofail,{opts('fstab')} 0 0\n")
    script = f"""
set -eu
trap 'for m in {mnts['t']} {mnts['short']} {mnts['fstab']}; do umount -l "$m" 2>/dev/null || true; done' EXIT
mount --bind {helper} /sbin/mount.s3fuse
mount --bind {helper} /sbin/mount.fuse.s3fuse
mount -t fuse.s3fuse -o {opts('t')} {bucket} {mnts['t']}
mount -t s3fuse -o {opts('short')} {bucket}:/sub {mnts['short']}
mount -T {fstab} {mnts['fstab']}
cat {mnts['t']}/sub/hello.txt {mnts['short']}/hello.txt {mnts['fstab']}/hello.txt
printf 'through mount -t' > {mnts['t']}/sub/by-t.txt
printf 'through fstab' > {mnts['fstab']}/by-fstab.txt
grep " fuse.s3fuse " /proc/self/mounts | grep -c " {tmp_path}/"
umount {mnts['t']}
umount {mnts['short']}
umount {mnts['fstab']}
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:4] == ["from the bucket"] * 3 + ["3"], proc.stdout
    assert s3.get_object(Bucket=bucket, Key="sub/by-t.txt")["Body"].read() == b"through mount -t"
    assert s3.get_object(Bucket=bucket, Key="sub/by-fstab.txt")["Body"].read() == b"through fstab"
    assert not any(is_mounted(str(p)) for p in mnts.values())

    # mount(8) runs /sbin/mount.fuse.TYPE with an empty environment: so does this
    proc = subprocess.run(["env", "-i", str(link), f"{bucket}:/sub", str(mnts["direct"]), "-o", opts("direct")],
                          capture_output=True, text=True, timeout=60)
    try:
        assert proc.returncode == 0, proc.stderr
        assert (mnts["direct"] / "hello.txt").read_bytes() == b"from the bucket\n"
    finally:
        unmount(str(mnts["direct"]))


def _rendered(page: str) -> str:
    env = dict(os.environ, MANWIDTH="120", LC_ALL="C.UTF-8")
    proc = subprocess.run(["man", "--warnings", "-l", page], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"roff warnings: {proc.stderr}"
    return proc.stdout


def test_man_page_renders_every_option_command_and_metric(tmp_path):
    """`man -l` renders the page without warnings, and everything the tables hold is in
    it: each mount option (and in --help too), each ignored option, flag, command and
    metric - the page is generated from them."""
    from s3fuse import metrics
    from s3fuse.app.usage import FLAGS, SYNOPSES
    from s3fuse.config import IGNORED, OPTIONS
    page = tmp_path / "mount.s3fuse.8"
    proc = subprocess.run([sys.executable, "-m", "s3fuse", "man", f"--output={page}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = _rendered(str(page))
    help_text = subprocess.run([sys.executable, "-m", "s3fuse", "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=60).stdout
    for name, (_, parser, help) in OPTIONS.items():
        tag = name if parser is None else f"{name}=VALUE"
        assert re.search(rf"^\s+{re.escape(tag)}$", text, re.M) or f"{tag} " in text, f"option {name} missing"
        assert f"-o {name}" in help_text, f"option {name} missing from --help"
        assert " ".join(help.split())[:40] in " ".join(text.split()), f"help of {name} missing"
    for name in IGNORED:
        assert re.search(rf"\b{re.escape(name)}\b", text), name
    for flag, _ in FLAGS:
        assert flag in text, flag
    for synopsis, _ in SYNOPSES:
        assert f"s3fuse {synopsis}" in " ".join(text.split()), synopsis
    for name, kind, _ in metrics.REGISTRY.names():
        assert f"{name} ({kind})" in text, name
    for section in ("SYNOPSIS", "OPTIONS", "COMMANDS", "FSTAB", "SYSTEMD", "METRICS", "LOGGING",
                    "EXIT STATUS", "FILES", "SEMANTICS", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), section
    assert "fuse.s3fuse  _netdev" in text and "Type=fuse.s3fuse" in text


def test_man_finds_the_installed_page(tmp_path):
    """What install-helper (and so scripts/install.sh) installs, `man mount.s3fuse` finds."""
    _, man = _install_helper(tmp_path)
    env = dict(os.environ, MANWIDTH="100", LC_ALL="C.UTF-8")
    proc = subprocess.run(["man", "-M", str(man), "mount.s3fuse"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "mount.s3fuse, s3fuse - mount an S3 bucket as a filesystem" in proc.stdout
