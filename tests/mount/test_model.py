"""Model-based testing: a hypothesis state machine applies random sequences of create,
write at offsets, truncate, rename, unlink, mkdir, rmdir, chmod, symlink, read, listdir
and lstat - plus descriptors kept open across steps (O_RDWR: pwrite, pread, ftruncate,
fsync, close while the paths are renamed, unlinked, replaced) - to the mount AND to a
local directory (the model), and compares after every
step: the errno (or success) and the result.  At the end of each example the whole trees
are compared (names, types, permission bits, sizes, contents, link targets) and the
bucket is checked directly: every file holds its bytes under its key, and no key is left
over (unlinked or renamed-away objects, stray markers).

Compared: what docs/SEMANTICS.md claims.  Not compared: directory sizes (4096 vs the
local filesystem's), st_nlink, times (atime is not kept; mtimes differ in resolution),
hard links (not used: s3fuse emulates them with a copy), fstat of an unlinked open file
(ESTALE, documented), and descriptors open for reading only (close-to-open: they keep the
version they opened, unlike a local file).

Mount calls run in a child process (tests.faultproxy.OpServer) with a deadline.
Each example starts from a small tree (a file, a directory with a file, a symlink).
Two mounts: default TTLs (kernel and s3fuse caches in play) and attr_ttl=0,dir_ttl=0
(every lookup and listing asks S3).  Size: S3FUSE_MODEL_EXAMPLES (default 20; the uncached
mount runs half as many) examples of up to S3FUSE_MODEL_STEPS (default 20) steps.
"""
from __future__ import annotations

import itertools
import os
import stat
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from ..support.ops import OpServer, errname
from ..support.probes import bucket_keys
from ..support.report import report

EXAMPLES = int(os.environ.get("S3FUSE_MODEL_EXAMPLES", "20"))
STEPS = int(os.environ.get("S3FUSE_MODEL_STEPS", "20"))
TOTALS = {"examples": 0, "ops": 0, "succeeded": 0, "objects": 0}

OPS_SRC = r'''
import hashlib, os, stat

def op_create(p, mode):
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, mode))

def op_write(p, off, hexdata):
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes.fromhex(hexdata), off)
    finally:
        os.close(fd)

def op_truncate(p, n):
    os.truncate(p, n)

def op_rename(a, b):
    os.rename(a, b)

def op_unlink(p):
    os.unlink(p)

def op_mkdir(p, mode):
    os.mkdir(p, mode)

def op_rmdir(p):
    os.rmdir(p)

def op_chmod(p, mode):
    os.chmod(p, mode)

def op_symlink(target, p):
    os.symlink(target, p)

def op_read(p):
    with open(p, "rb") as f:
        return f.read().hex()

def op_listdir(p):
    return sorted(os.listdir(p))

def op_lstat(p):
    st = os.lstat(p)
    kind = stat.S_IFMT(st.st_mode)
    return [kind, stat.S_IMODE(st.st_mode), None if kind == stat.S_IFDIR else st.st_size,
            os.readlink(p) if kind == stat.S_IFLNK else None]

HANDLES = {}
NEXT = [0]

def op_open(p, mode):
    fd = os.open(p, os.O_RDWR | os.O_CREAT, mode)
    NEXT[0] += 1
    HANDLES[NEXT[0]] = fd
    return NEXT[0]

def op_hwrite(h, off, hexdata):
    return os.pwrite(HANDLES[h], bytes.fromhex(hexdata), off)

def op_hread(h, off, n):
    return os.pread(HANDLES[h], n, off).hex()

def op_htruncate(h, n):
    os.ftruncate(HANDLES[h], n)

def op_hfsync(h):
    os.fsync(HANDLES[h])

def op_hclose(h):
    os.close(HANDLES.pop(h))

def op_walk(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            info = op_lstat(p)
            if info[0] == stat.S_IFREG:
                with open(p, "rb") as f:
                    info.append(hashlib.md5(f.read()).hexdigest())
            out[os.path.relpath(p, root)] = info
    return out
'''
_LOCAL: dict = {}
exec(OPS_SRC, _LOCAL)          # the very same functions run on the model, in-process


def local(op, *args):
    try:
        return None, _LOCAL["op_" + op](*args)
    except OSError as exc:
        return exc.errno, None


PATHS = ["a", "b", "c", "d", "e", "l", "d/a", "d/b", "d/e", "d/e/a", "e/a"]
DIRS = ["", "d", "e", "d/e"]
TARGETS = ["a", "b", "d", "d/a", "../a", "e/a", "zz"]
MODES = [0o600, 0o644, 0o755, 0o700, 0o444, 0o640]

paths = st.sampled_from(PATHS)


class MountModel(RuleBasedStateMachine):
    """One example: a fresh directory exN in the mount and in the local tree."""

    ctx: dict = {}                      # set by the test: mount, server, local root, s3, bucket
    counter = itertools.count()

    @initialize()
    def setup(self):
        n = next(self.counter)
        self.rel = f"ex{n}"
        self.mnt = os.path.join(self.ctx["mount"].path, self.rel)
        self.ref = os.path.join(self.ctx["local"], self.rel)
        self.server: OpServer = self.ctx["server"]
        self.steps = []
        self.handles = []
        self.handle_names = {}
        os.mkdir(self.ref)
        assert self.server.call("mkdir", self.mnt, 0o755) == (None, None)
        TOTALS["examples"] += 1
        # a small tree to start from, so that most operations have something to act on
        self.both("mkdir", "d", 0o755)
        for p, content in (("a", b"first file\n"), ("d/a", b"x" * 5000)):
            self.both("create", p, 0o644)
            self.both("write", p, 0, content.hex())
        self.both("symlink", "a", "l", paths_at=(1,))

    def both(self, op, *args, paths_at=(0,), handle=None):
        """Run ``op`` on the mount and the model (args at ``paths_at`` are relative paths;
        ``handle``: a (mount, model) pair of descriptor ids, passed first)."""
        m_args = [os.path.join(self.mnt, a) if i in paths_at else a for i, a in enumerate(args)]
        r_args = [os.path.join(self.ref, a) if i in paths_at else a for i, a in enumerate(args)]
        if handle is not None:
            m_args, r_args = [handle[0]] + m_args, [handle[1]] + r_args
            args = (f"fd{self.handle_names[handle]}",) + args
        got = self.server.call(op, *m_args)
        want = local(op, *r_args)
        if op == "open" and got[0] is None and want[0] is None:
            pair = (got[1], want[1])          # each side numbers its descriptors itself
            self.handle_names[pair] = len(self.handle_names)
            got, want = (None, pair), (None, pair)
        TOTALS["ops"] += 1
        shown = tuple(a[:40] + f"...({len(a) // 2} bytes)" if isinstance(a, str) and len(a) > 48 else a for a in args)
        self.steps.append(f"{op}{shown!r} -> {errname(want[0])}")
        assert got[0] == want[0], (f"{op}{shown!r}: mount says {errname(got[0])}, the model "
                                   f"{errname(want[0])}\nsteps: " + "\n  ".join(self.steps))
        assert got[1] == want[1], f"{op}{shown!r}: mount {got[1]!r} != model {want[1]!r}\nsteps: " + \
            "\n  ".join(self.steps)
        TOTALS["succeeded"] += want[0] is None
        return got

    def existing(self) -> list:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.ref):
            for name in dirnames + filenames:
                out.append(os.path.relpath(os.path.join(dirpath, name), self.ref))
        return sorted(out)

    def pick(self, data, label="path", existing_bias=0.7) -> str:
        """A path: mostly one that exists in the model (so that operations do something),
        else any of PATHS (creation, and the errors of missing names)."""
        existing = self.existing()
        if existing and data.draw(st.floats(0, 1), label=label + " bias") < existing_bias:
            return data.draw(st.sampled_from(existing), label=label)
        return data.draw(paths, label=label)

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def create(self, data, mode):
        self.both("create", self.pick(data, existing_bias=0.2), mode)

    @rule(data=st.data(), off=st.one_of(st.integers(0, 5000), st.just(0)), payload=st.binary(min_size=1, max_size=3000))
    def write(self, data, off, payload):
        self.both("write", self.pick(data), off, payload.hex())

    @rule(data=st.data(), n=st.integers(0, 9000))
    def truncate(self, data, n):
        self.both("truncate", self.pick(data), n)

    @rule(data=st.data())
    def rename(self, data):
        self.both("rename", self.pick(data, "from"), self.pick(data, "to", existing_bias=0.4), paths_at=(0, 1))

    @rule(data=st.data())
    def unlink(self, data):
        self.both("unlink", self.pick(data))

    @rule(data=st.data(), mode=st.sampled_from([0o755, 0o700, 0o750]))
    def mkdir(self, data, mode):
        self.both("mkdir", self.pick(data, existing_bias=0.1), mode)

    @rule(data=st.data())
    def rmdir(self, data):
        self.both("rmdir", self.pick(data))

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def chmod(self, data, mode):
        self.both("chmod", self.pick(data), mode)

    @rule(data=st.data(), dest=st.sampled_from(TARGETS))
    def symlink(self, data, dest):
        self.both("symlink", dest, self.pick(data, existing_bias=0.1), paths_at=(1,))

    @rule(data=st.data())
    def read(self, data):
        self.both("read", self.pick(data))

    # -- descriptors kept open across steps (O_RDWR|O_CREAT): writes and reads through
    # them, and every path operation above happening while they are open
    @rule(data=st.data(), mode=st.sampled_from([0o644, 0o600]))
    def open_rw(self, data, mode):
        if len(self.handles) < 3:
            err, h = self.both("open", self.pick(data, existing_bias=0.6), mode)
            if err is None:
                self.handles.append(h)

    @rule(data=st.data(), off=st.integers(0, 6000), payload=st.binary(min_size=1, max_size=3000))
    def handle_write(self, data, off, payload):
        if self.handles:
            self.both("hwrite", off, payload.hex(), paths_at=(), handle=data.draw(st.sampled_from(self.handles)))

    @rule(data=st.data(), off=st.integers(0, 6000), n=st.integers(1, 8000))
    def handle_read(self, data, off, n):
        if self.handles:
            self.both("hread", off, n, paths_at=(), handle=data.draw(st.sampled_from(self.handles)))

    @rule(data=st.data(), n=st.integers(0, 6000))
    def handle_truncate(self, data, n):
        if self.handles:
            self.both("htruncate", n, paths_at=(), handle=data.draw(st.sampled_from(self.handles)))

    @rule(data=st.data())
    def handle_fsync(self, data):
        if self.handles:
            self.both("hfsync", paths_at=(), handle=data.draw(st.sampled_from(self.handles)))

    @rule(data=st.data())
    def handle_close(self, data):
        if self.handles:
            h = data.draw(st.sampled_from(self.handles))
            self.handles.remove(h)
            self.both("hclose", paths_at=(), handle=h)

    @rule(d=st.sampled_from(DIRS))
    def listdir(self, d):
        self.both("listdir", d)

    @rule(data=st.data())
    def lstat(self, data):
        self.both("lstat", self.pick(data))

    def teardown(self):
        if not hasattr(self, "mnt"):
            return
        for h in list(self.handles):
            self.handles.remove(h)
            self.both("hclose", paths_at=(), handle=h)
        got = self.server.call("walk", self.mnt)
        want = local("walk", self.ref)
        assert got == want, f"trees differ:\nmount {got}\nmodel {want}\nsteps: " + "\n  ".join(self.steps)
        if "writeback" in self.ctx["mount"].options:
            sync_mount(self.ctx["mount"].path)      # closed files reach the bucket in the background
        # the bucket, directly: every file/link under its key, nothing left over
        s3, bucket = self.ctx["s3"], self.ctx["bucket"]
        tree = want[1]
        keys = set(bucket_keys(s3, bucket, self.rel + "/"))
        expected_objects = {f"{self.rel}/{p}" for p, info in tree.items() if info[0] != stat.S_IFDIR}
        dirs = {f"{self.rel}/{p}/" for p, info in tree.items() if info[0] == stat.S_IFDIR} | {self.rel + "/"}
        assert keys - dirs == expected_objects, \
            f"bucket keys {sorted(keys - dirs)} != files {sorted(expected_objects)}\nsteps: " + "\n  ".join(self.steps)
        for p, info in tree.items():
            key = f"{self.rel}/{p}"
            if info[0] == stat.S_IFREG:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                with open(os.path.join(self.ref, p), "rb") as f:
                    assert body == f.read(), f"{key}: the bucket holds other bytes\nsteps: " + "\n  ".join(self.steps)
            elif info[0] == stat.S_IFLNK:
                assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == info[3].encode()
            TOTALS["objects"] += 1


def sync_mount(path: str):
    """fsync of the mount's root: s3fuse answers once every closed file is uploaded."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.long(20)
@pytest.mark.parametrize("options,examples", [((), EXAMPLES), (("attr_ttl=0", "dir_ttl=0"), max(1, EXAMPLES // 2)),
                                              (("writeback",), max(1, EXAMPLES // 2))],
                         ids=["cached", "uncached", "writeback"])
def test_model(s3, bucket, mounter, tmp_path, options, examples, request):
    m = mounter(bucket, options=list(options))
    os.mkdir(tmp_path / "model")
    server = OpServer(OPS_SRC)
    MountModel.ctx = {"mount": m, "local": str(tmp_path / "model"), "server": server, "s3": s3, "bucket": bucket}
    before = dict(TOTALS)
    t0 = time.monotonic()
    try:
        run_state_machine_as_test(
            MountModel, settings=settings(max_examples=examples, stateful_step_count=STEPS, deadline=None,
                                          database=None, derandomize=False,
                                          suppress_health_check=list(HealthCheck)))
    finally:
        server.close()
        MountModel.ctx = {}
    log = m.log()
    assert "failed unexpectedly" not in log and "Traceback" not in log, log[-4000:]
    report(request.config, f"model ({'/'.join(options) or 'default TTLs'}): "
                           f"{TOTALS['examples'] - before['examples']} examples, "
          f"{TOTALS['ops'] - before['ops']} operations compared "
          f"({TOTALS['succeeded'] - before['succeeded']} succeeded, the others failed alike), "
          f"{TOTALS['objects'] - before['objects']} objects "
          f"checked in the bucket; {time.monotonic() - t0:.1f}s, {server.busy:.1f}s of it in mount calls")
