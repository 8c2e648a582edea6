"""Fixtures: a real S3 server process, fresh buckets, and real FUSE mounts of them.

Every test that uses ``s3_server`` (directly or through ``s3``, ``bucket``, ``mounter``)
runs once per server named in ``S3FUSE_TEST_SERVERS`` (default ``moto,rgw``): test ids
end in ``[moto]`` / ``[rgw]``.  ``@pytest.mark.servers("moto")`` pins a test (or a
module, with ``pytestmark``) to the servers named.  A server starts when the first test
of its kind needs it and lives until the session ends (``ServerPool``): a session - or
each pytest-xdist worker - has at most one of each kind, however its tests alternate.

Parallel runs (pytest-xdist, ``-n N --dist loadgroup``, as scripts/test.sh does): every
worker has its own servers, mounts and tmp_path; tests that share something global
carry ``pytest.mark.xdist_group`` (one worker runs the whole group), and tests marked
``long`` are handed out first so that none of them ends the run alone.

RGW needs the Ceph packages (tests/support/servers/install-rgw.sh, also run by
``scripts/install.sh --test``).  Without them the ``[rgw]`` tests are skipped with the
reason - except in CI (``CI=true``), where a missing RGW is a usage error.
"""
from __future__ import annotations

import signal
import sys
import time
import uuid

import pytest

from .support.faultproxy import FaultProxy
from .support.mounts import Mount, in_ci, make_boto, wanted_servers
from .support.report import collected_figures, figures_file
from .support.servers import make_server, rgw_missing_binaries


def pytest_configure(config):
    config.addinivalue_line("markers", "servers(*kinds): run only on these S3 test servers "
                                       "(moto, rgw); default: every server of S3FUSE_TEST_SERVERS")
    config.addinivalue_line("markers", "long(seconds): takes 15 s or more (mostly waiting): run first, "
                                       "longest first")
    config.addinivalue_line("markers", "server_group(name): under xdist, the tests of this name run on "
                                       "one worker per server (they share a costly module fixture)")
    config.pluginmanager.register(_Order(), "s3fuse-test-order")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist runs the tests of a group on "
                                       "one worker (they share something global: /etc/hosts, a user)")
    kinds = wanted_servers()
    if "rgw" in kinds and in_ci():
        missing = rgw_missing_binaries()
        if missing:
            raise pytest.UsageError(f"CI=true and S3FUSE_TEST_SERVERS includes rgw, but Ceph RGW is not "
                                    f"installed (missing {' '.join(missing)}): run scripts/install.sh --test")
    # `timeout`, CI runners and kill(1) send SIGTERM: turn it into KeyboardInterrupt so the
    # session's teardown still unmounts and stops the servers (Ceph daemons outlive us).
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, interrupt)


def pytest_generate_tests(metafunc):
    if "s3_server" not in metafunc.fixturenames:
        return
    kinds = wanted_servers()
    marker = metafunc.definition.get_closest_marker("servers")
    if marker is not None:
        kinds = [k for k in kinds if k in marker.args]
    metafunc.parametrize("s3_server", kinds, indirect=True, scope="session", ids=kinds)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """``server_group(name)`` -> ``xdist_group(name-KIND)``: the tests of one name and
    server share a module fixture that is costly to build, one worker builds it.  (First:
    xdist reads the groups in its own hook.)"""
    for item in items:
        marker = item.get_closest_marker("server_group")
        if marker is not None:
            callspec = getattr(item, "callspec", None)
            kind = callspec.params.get("s3_server", "none") if callspec is not None else "none"
            item.add_marker(pytest.mark.xdist_group(f"{marker.args[0]}-{kind}"))


class _Order:
    """The order tests are run (serially) or handed out (xdist), registered as a plugin
    (a conftest has one function per hook)."""

    @staticmethod
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(config, items):
        """After pytest's own fixture-scope ordering (a stable sort, so the order within
        each rank is kept): the tests marked ``long(seconds)`` first, longest first, then
        the others, by server.  Under xdist the controller hands tests out in this order
        (the ``xdist_group`` groups before all), so the long ones start at once instead
        of ending the run alone; serially, a server kind's tests stay together."""
        kinds = wanted_servers()

        def rank(item):
            long = item.get_closest_marker("long")
            if long is not None:
                return (0, -(long.args[0] if long.args else 15), 0)
            callspec = getattr(item, "callspec", None)
            kind = callspec.params.get("s3_server") if callspec is not None else None
            return (1, 0, kinds.index(kind) if kind in kinds else 0)
        items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist (controller): each worker appends its figures lines to one file."""
    node.workerinput["s3fuse_figures"] = figures_file(node.config)


def pytest_terminal_summary(terminalreporter, config):
    """The figures lines that xdist workers wrote (a worker's own output is not shown)."""
    lines = collected_figures(config)
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)


class ServerPool:
    """The S3 servers of this session (or xdist worker), started on first use, stopped at
    the end of the session.  A start that failed fails every later test of that kind at
    once (as a failed session fixture would), without another try."""

    def __init__(self):
        self.servers: dict = {}
        self.failed: dict = {}

    def get(self, kind: str):
        if kind in self.failed:
            raise self.failed[kind]
        if kind not in self.servers:
            t0 = time.monotonic()
            try:
                self.servers[kind] = make_server(kind).start()
            except Exception as exc:
                self.failed[kind] = exc
                raise
            sys.stderr.write(f"\n[{kind} server at {self.servers[kind].endpoint}, started in "
                             f"{time.monotonic() - t0:.1f} s]\n")
        return self.servers[kind]

    def stop(self):
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="session")
def server_pool():
    pool = ServerPool()
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="session")
def s3_server(request, server_pool):
    """The S3 server of this test's parameter (``moto`` or ``rgw``), one per session.
    pytest tears this fixture down whenever the parameter changes from one test to the
    next; the server itself lives on in ``server_pool``."""
    kind = request.param
    if kind == "rgw":
        missing = rgw_missing_binaries()
        if missing:      # in CI this was already a usage error (pytest_configure)
            pytest.skip(f"Ceph RGW not installed (missing {' '.join(missing)}): run "
                        f"tests/support/servers/install-rgw.sh, or S3FUSE_TEST_SERVERS=moto")
    return server_pool.get(kind)


@pytest.fixture(scope="session")
def s3(s3_server):
    return make_boto(s3_server)


@pytest.fixture
def bucket(s3):
    name = "t-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def mounter(s3_server, tmp_path):
    """mounter(bucket, prefix="", options=()) -> a live Mount; all unmounted at teardown,
    and the test fails if a daemon logged a traceback it should not have."""
    mounts = []

    def make(bucket, prefix="", options=(), name=None):
        m = Mount(s3_server, bucket, str(tmp_path), prefix, options, name or f"mnt{len(mounts)}")
        mounts.append(m)
        return m.mount()

    yield make
    for m in mounts:
        m.unmount()
    for m in mounts:
        log = m.log()
        assert "failed unexpectedly" not in log, f"unexpected exception in {m.log_file}:\n{log[-4000:]}"
        # every request of the data path went through the transport (s3fuse/s3_stats.py logs each kind)
        assert "through botocore (" not in log, f"fallback to botocore in {m.log_file}:\n{log[-4000:]}"


@pytest.fixture
def make_fs(tmp_path):
    """``make_fs(client, **options)``: a Filesystem (no mount) around a fake client."""
    from s3fuse.config import MountConfig
    from s3fuse.fs import Filesystem
    made = []

    def make(client, **options):
        cfg = MountConfig(bucket=client.bucket, cache_dir=str(tmp_path / f"cache{len(made)}"), uid=0, gid=0,
                          **options)
        fs = Filesystem.for_mount(cfg, client)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.close()


@pytest.fixture
def proxy(s3_server):
    """A FaultProxy (tests/support/faultproxy.py) in front of the test's server."""
    p = FaultProxy(s3_server.endpoint)
    yield p
    p.close()
