#!/usr/bin/env python3
"""Run pjdfstest (POSIX conformance suite) on a mounted directory, per group, and count
failed/total subtests.

pjdfstest comes from ``../shared/tools/pjdfstest-*.tar.gz`` (relative to the project
root; never copied into the project). It is built once per tarball checksum into a cache
directory outside the repository (``$S3FUSE_PJDFSTEST_CACHE``, else
``${XDG_CACHE_HOME:-~/.cache}/s3fuse-tests``): ``autoreconf -ifs && ./configure && make
pjdfstest``; needs Debian autoconf automake libtool gcc make, perl's ``prove``, openssl.

Each group runs as ``prove -rv -e bash <src>/tests/<group>`` from inside a fresh
subdirectory of the mount, with a timeout (the process group is killed when it expires,
so a hung filesystem cannot block CI). The cached copy differs from upstream in two ways:
- ``tests/conf`` holds pjdfstest's Linux settings (``os=Linux``, ``GREP=grep``, ``fs`` =
  ``df -PT .`` type upper-cased, e.g. ``FUSE.S3FUSE``; ``PJDFSTEST_FS`` overrides it).
  ``fs`` matters: pjdfstest itself skips the link group on ``FUSE.S3FS`` (s3fs-fuse), and
  the rename-ctime checks on everything but EXT4/UFS/ZFS.
- ``misc.sh``: ``expect`` and ``test_check`` print what they tried on every subtest, ok or
  not, and under bash (``--shell bash``, the default) the line of the ``.t`` file
  (``ok 7 - tried 'chmod NAME 0644', expected 0 [line 26]``); ``--shell sh`` runs the tests under
  /bin/sh as upstream does, without line numbers. The checks themselves are unchanged.
  With the commands of passing subtests too, the parser tells root failures from those
  that only follow from one (the file a failed mknod should have made is then missing
  for the chmod, stat and unlink after it): ``Failure.cause``.

Standalone use (as root):

    # a directory that is already mounted
    python3 tests/conformance/run_pjdfstest.py --dir /mnt/s3 [GROUP ...]
    # start a server, mount, run, unmount, stop (servers/mounts of tests/support/)
    python3 tests/conformance/run_pjdfstest.py --server rgw --mount s3fuse,s3fs [GROUP ...]
    # another commit's s3fuse: git archive COMMIT | tar -x -C /tmp/s3fuse-COMMIT
    python3 tests/conformance/run_pjdfstest.py --server moto --s3fuse-helper /tmp/s3fuse-COMMIT/mount.s3fuse
    # side by side table of earlier results; kinds of failures of one
    python3 tests/conformance/run_pjdfstest.py --compare a.json b.json
    python3 tests/conformance/run_pjdfstest.py --summarize a.json [--all-failures]

Groups: all by default, ``ci`` for the CI set; ``--timeout`` seconds per group (600).
Mounts get ``-o allow_other`` (pjdfstest switches to other uids); s3fs-fuse gets the
options of bench/peers.py. Results: a table on stdout, the kinds of failures (root ones,
and "follows from ..." for the rest, with file:line), and JSON (``--json``).

From Python (tests/conformance/test_pjdfstest.py): ``build_pjdfstest()``,
``run_groups(mount_dir, groups)`` -> list of ``GroupResult``, ``format_table()``.
Beside this module: pjdfstest_build.py (build and patch), pjdfstest_results.py (parse
prove's output, attribute failures, reports), pjdfstest_mounts.py (servers and mounts).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Optional

if __package__:
    from .pjdfstest_build import (REPO, PjdfstestError, build_pjdfstest, find_tarball, log_stderr,
                                  missing_tools)
    from .pjdfstest_mounts import MOUNT_KINDS, make_mount, mounted, started_server
    from .pjdfstest_results import (Failure, FileResult, GroupResult, format_compare, format_failures,
                                    format_signatures, format_table, parse_prove, results_from_json,
                                    results_json, short, signature)
else:                                   # run as a script
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pjdfstest_build import (REPO, PjdfstestError, build_pjdfstest, find_tarball, log_stderr,
                                 missing_tools)
    from pjdfstest_mounts import MOUNT_KINDS, make_mount, mounted, started_server
    from pjdfstest_results import (Failure, FileResult, GroupResult, format_compare, format_failures,
                                   format_signatures, format_table, parse_prove, results_from_json,
                                   results_json, short, signature)

__all__ = ["ALL_GROUPS", "CI_GROUPS", "DEFAULT_TIMEOUT", "Failure", "FileResult", "GroupResult",
           "MOUNT_KINDS", "PjdfstestError", "build_pjdfstest", "detect_fs", "find_tarball",
           "format_compare", "format_failures", "format_signatures", "format_table", "make_mount",
           "missing_tools", "mounted", "parse_prove", "results_from_json", "results_json", "run_group",
           "run_groups", "short", "signature", "started_server"]

ALL_GROUPS = ("mkdir", "rmdir", "unlink", "rename", "chmod", "chown", "open", "truncate", "utimensat",
              "symlink", "link", "mknod", "mkfifo", "chflags", "ftruncate", "posix_fallocate", "granular")
# The groups issue #13 requires in CI.
CI_GROUPS = ("mkdir", "rmdir", "unlink", "rename", "chmod", "chown", "open", "truncate", "utimensat",
             "symlink")
DEFAULT_TIMEOUT = 600.0     # seconds per group


# ---------------------------------------------------------------------------- run

def _kill_group(proc: subprocess.Popen):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            continue


def _remove_tree(path: str, timeout: float = 120.0):
    """rm -rf in a child with a timeout: a hung mount must not hang the harness."""
    try:
        subprocess.run(["rm", "-rf", "--one-file-system", path], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log_stderr(f"  ! rm -rf {path} timed out after {timeout:.0f} s")


def run_group(src: Path, mount_dir: str, group: str, timeout: float = DEFAULT_TIMEOUT,
              shell: str = "bash", fs: Optional[str] = None, log_dir: Optional[str] = None,
              keep: bool = False) -> GroupResult:
    """Run one pjdfstest group from inside a fresh subdirectory of mount_dir."""
    tests = Path(src) / "tests" / group
    if not tests.is_dir():
        return GroupResult(group, status="error", error=f"no such group {tests}")
    workdir = os.path.join(mount_dir, f"pjdfstest-{group}-{uuid.uuid4().hex[:8]}")
    t0 = time.monotonic()
    try:
        os.mkdir(workdir, 0o755)
    except OSError as e:
        return GroupResult(group, status="error", error=f"mkdir {workdir}: {e}", workdir=workdir)
    env = dict(os.environ, LC_ALL="C")
    if fs:
        env["PJDFSTEST_FS"] = fs
    # Not to a terminal, prove's default formatter holds a test file's output until the
    # file ends; the console one prints each line, and with autoflush what ran before a
    # timeout is in the output file when prove is killed.
    cmd = ["prove", "-rv", "--formatter", "TAP::Formatter::Console"] + \
        (["-e", shell] if shell != "sh" else []) + [str(tests)]
    with tempfile.TemporaryDirectory(prefix="pjdfstest-out-") as tmp:
        with open(os.path.join(tmp, "S3fuseAutoFlush.pm"), "w") as f:
            f.write("package S3fuseAutoFlush; use IO::Handle; STDOUT->autoflush(1); STDERR->autoflush(1); 1;\n")
        env["PERL5LIB"] = tmp + (os.pathsep + env["PERL5LIB"] if env.get("PERL5LIB") else "")
        env["PERL5OPT"] = "-MS3fuseAutoFlush" + (" " + env["PERL5OPT"] if env.get("PERL5OPT") else "")
        out_dir = log_dir or tmp
        os.makedirs(out_dir, exist_ok=True)
        out_path = os.path.join(out_dir, f"{group}.out")
        err_path = os.path.join(out_dir, f"{group}.err")
        timed_out = False
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            except BaseException:               # Ctrl-C / SIGTERM: do not leave prove behind
                _kill_group(proc)
                raise
        seconds = time.monotonic() - t0
        with open(out_path, errors="replace") as f:
            output = f.read()
        with open(err_path, errors="replace") as f:
            errors = f.read()
    res = parse_prove(output, group, src)
    res.seconds, res.workdir = seconds, workdir
    if timed_out:
        res.status = "timeout"
        res.timed_out_in = res.file_results[-1].file if res.file_results else None
        res.error = f"timed out after {timeout:.0f} s in {res.timed_out_in}"
    elif res.prove_result is None:
        res.status = "error"
        res.error = f"prove exited {proc.returncode} without a summary: {errors.strip()[-1000:]}"
    elif not res.file_results:
        res.status = "error"
        res.error = f"prove ran no test files: {errors.strip()[-1000:]}"
    if not keep:
        _remove_tree(workdir)
    return res


def run_groups(mount_dir: str, groups: Iterable[str] = ALL_GROUPS, timeout: float = DEFAULT_TIMEOUT,
               src: Optional[Path] = None, shell: str = "bash", fs: Optional[str] = None,
               log_dir: Optional[str] = None, keep: bool = False,
               log: Callable[[str], None] = log_stderr) -> list:
    """Run each group in turn (pjdfstest must be run as root); returns GroupResults."""
    src = src or build_pjdfstest(log=log)
    results = []
    for group in groups:
        log(f"  pjdfstest {group} on {mount_dir} ...")
        r = run_group(src, mount_dir, group, timeout=timeout, shell=shell, fs=fs, log_dir=log_dir, keep=keep)
        log(f"  pjdfstest {group}: {r.failed}/{r.total} failed in {r.seconds:.1f} s ({r.status}"
            + (f": {r.error}" if r.error else "") + ")")
        results.append(r)
    return results


def detect_fs(mount_dir: str) -> str:
    p = subprocess.run(["df", "-PT", mount_dir], capture_output=True, text=True, timeout=60)
    lines = p.stdout.strip().splitlines()
    return lines[-1].split()[1].upper() if len(lines) > 1 else "?"


# ---------------------------------------------------------------------------- main

def _s3fuse_version(helper: Optional[str]) -> str:
    where = os.path.dirname(os.path.abspath(helper)) if helper else str(REPO)
    try:
        p = subprocess.run(["git", "-C", where, "describe", "--always", "--dirty"], capture_output=True,
                           text=True, timeout=10)
        return (p.stdout.strip() or where) + ("" if helper is None else f" ({helper})")
    except (OSError, subprocess.TimeoutExpired):
        return where


def _s3fs_version() -> str:
    try:
        p = subprocess.run(["s3fs", "--version"], capture_output=True, text=True, timeout=10)
        return ((p.stdout or p.stderr).splitlines() or ["?"])[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def _write_json(path: str, doc: dict):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    log_stderr(f"results written to {path}")


def _report(results, label, args, meta, json_path):
    print(format_table(results, title=f"pjdfstest on {label}"))
    if args.failures:
        text = format_signatures(results)
        if text:
            print("failed subtests by kind (count, what, where):\n" + text)
    _write_json(json_path, results_json(results, label=label, **meta))
    sys.stdout.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("groups", nargs="*", help=f"pjdfstest groups (default: all: {' '.join(ALL_GROUPS)}); "
                                              "'ci' stands for the CI set")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", help="an already mounted directory to test")
    where.add_argument("--server", choices=("moto", "rgw"), help="start this S3 server and mount it")
    where.add_argument("--compare", nargs="+", metavar="JSON", help="print earlier results side by side")
    where.add_argument("--summarize", metavar="JSON", help="print the table and failure kinds of a result")
    ap.add_argument("--mount", default="s3fuse",
                    help="with --server: comma-separated mounts to test in turn: s3fuse, s3fs (default s3fuse)")
    ap.add_argument("--mount-opts", default="", help="extra comma-separated -o options of the mounts")
    ap.add_argument("--s3fuse-helper", metavar="PATH",
                    help="with --server: the mount.s3fuse to run (e.g. of a `git archive` of another "
                         "commit; it imports the s3fuse package beside it); default: the project's")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per group (%(default)s)")
    ap.add_argument("--shell", choices=("bash", "sh"), default="bash",
                    help="run the .t files with bash (line numbers of failures; default) or /bin/sh")
    ap.add_argument("--fs", help="override pjdfstest's fs (default: df -PT type, e.g. FUSE.S3FUSE)")
    ap.add_argument("--json", help="result file (default /tmp/pjdfstest-LABEL-TIME.json); with several "
                                   "mounts, LABEL in the name is replaced by each mount's label")
    ap.add_argument("--label", help="name of the target in the table and JSON")
    ap.add_argument("--log-dir", help="keep prove's raw output per group here")
    ap.add_argument("--keep", action="store_true", help="keep the test directories on the mount")
    ap.add_argument("--no-failures", dest="failures", action="store_false",
                    help="do not list the kinds of failed subtests after the table")
    ap.add_argument("--all-failures", action="store_true", help="with --summarize: list every failed subtest")
    args = ap.parse_args(argv)

    if args.compare:
        docs = []
        for p in args.compare:
            with open(p) as f:
                docs.append(json.load(f))
        print(format_compare(docs))
        return 0
    if args.summarize:
        with open(args.summarize) as f:
            doc = json.load(f)
        results = results_from_json(doc)
        print(format_table(results, title=f"pjdfstest on {doc.get('label', '?')}"))
        print("failed subtests by kind (count, what, where):\n" + format_signatures(results))
        if args.all_failures:
            print("failed subtests:\n" + format_failures(results))
        return 0

    groups = []
    for g in args.groups or ALL_GROUPS:
        groups += list(CI_GROUPS) if g == "ci" else [g]
    if os.geteuid() != 0:
        log_stderr("warning: pjdfstest must run as root (it chowns files and switches users)")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:      # unmount/stop servers on SIGTERM too
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, interrupt)

    src = build_pjdfstest()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = dict(groups=groups, timeout=args.timeout, src=src, shell=args.shell, fs=args.fs,
                  keep=args.keep)
    meta = dict(tarball=find_tarball().name, shell=args.shell, timeout=args.timeout,
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def json_path(label):
        if args.json:
            return args.json.replace("LABEL", label)
        return os.path.join(tempfile.gettempdir(), f"pjdfstest-{label}-{stamp}.json")

    def log_dir(label):
        return os.path.join(args.log_dir, label) if args.log_dir else None

    if args.dir:
        label = args.label or os.path.basename(os.path.normpath(args.dir))
        fs = args.fs or detect_fs(args.dir)
        results = run_groups(args.dir, log_dir=log_dir(label), **common)
        _report(results, label, args, dict(meta, mount=args.dir, fs=fs), json_path(label))
        return 0

    kinds = [k.strip() for k in args.mount.split(",") if k.strip()]
    for k in kinds:
        if k not in MOUNT_KINDS:
            ap.error(f"--mount: unknown {k!r} (known: {', '.join(MOUNT_KINDS)})")
    extra = [o for o in args.mount_opts.split(",") if o]
    with started_server(args.server) as server, tempfile.TemporaryDirectory(prefix="pjdfstest-mnt-") as root:
        for kind in kinds:
            label = (args.label + "-" + kind if args.label and len(kinds) > 1 else args.label) \
                or f"{kind}-{args.server}"
            sub = os.path.join(root, kind)
            os.makedirs(sub)
            with mounted(kind, server, sub, extra, args.s3fuse_helper if kind == "s3fuse" else None) as m:
                fs = args.fs or detect_fs(m.path)
                log_stderr(f"[{kind} mounted on {m.path} ({fs}), bucket {m.bucket}]")
                results = run_groups(m.path, log_dir=log_dir(label), **common)
            if args.log_dir and os.path.exists(m.log_file):
                shutil.copy(m.log_file, os.path.join(log_dir(label), f"{kind}-daemon.log"))
            version = _s3fuse_version(args.s3fuse_helper) if kind == "s3fuse" else _s3fs_version()
            _report(results, label, args, dict(meta, mount=kind, version=version, server=args.server, fs=fs),
                    json_path(label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
