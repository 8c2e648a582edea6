"""Security at the edges (#22), without a mount: the status file's runtime directory in
/tmp (another user's directory or link), the metrics endpoint's connections (idle ones,
slow ones, too many), TLS to an https:// proxy, a given cache_dir's mode."""
from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import pwd
import random
import shutil
import socket
import ssl
import stat
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request

import pytest

from s3fuse import metrics
from s3fuse.app import statusfile as status
from s3fuse.errors import ConfigError
from s3fuse.fs.cachedir import CacheDir
from s3fuse.s3.endpoint import Network

from ..support.servers.tls import make_ca
from ..support.tlsproxy import TLSProxy

NOBODY = 65534          # the "other user" who made the directory first


# ---------------------------------------------------------------------------------------
# A forked child running as another uid (the victim), told when to go
# ---------------------------------------------------------------------------------------
class AsUser:
    """``func()`` in a forked child with uid and gid ``uid``, no supplementary groups and
    no XDG_RUNTIME_DIR; its ``s3fuse.app.statusfile`` warnings are kept.  The child waits
    for ``run()`` (its pid is known before: names can be planted for it)."""

    def __init__(self, uid: int, func):
        self._out_r, out_w = os.pipe()
        go_r, self._go_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.close(self._out_r)
                os.close(self._go_w)
                os.read(go_r, 1)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.environ.pop("XDG_RUNTIME_DIR", None)
                warnings = []
                handler = logging.Handler(logging.WARNING)
                handler.emit = lambda record: warnings.append(record.getMessage())
                logger = logging.getLogger(status.__name__)
                logger.handlers, logger.propagate = [handler], False
                logger.setLevel(logging.WARNING)
                out = {"result": func(), "warnings": warnings}
                code = 0
            except BaseException:
                out = {"error": traceback.format_exc()}
            try:
                os.write(out_w, json.dumps(out).encode())
            finally:
                os._exit(code)
        os.close(out_w)
        os.close(go_r)

    def run(self) -> dict:
        os.write(self._go_w, b"g")
        os.close(self._go_w)
        chunks = []
        while True:
            data = os.read(self._out_r, 65536)
            if not data:
                break
            chunks.append(data)
        os.close(self._out_r)
        os.waitpid(self.pid, 0)
        out = json.loads(b"".join(chunks) or b'{"error": "the child said nothing"}')
        assert "error" not in out, out["error"]
        return out


@pytest.fixture
def victim():
    """A uid of nobody else (no passwd entry) whose /tmp/s3fuse-UID does not exist yet;
    the directory (whoever made it) is removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to be another user in a child)")
    uids = {p.pw_uid for p in pwd.getpwall()}
    uid = next(u for u in (random.randrange(50000, 60000) for _ in range(1000))
               if u not in uids and not os.path.lexists(f"/tmp/s3fuse-{u}"))
    made = []
    yield uid, made
    for path in [f"/tmp/s3fuse-{uid}"] + made:
        if os.path.islink(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def own_dir(uid: int, mode: int = 0o755, owner=None) -> str:
    d = tempfile.mkdtemp(prefix="s3fuse-edge-")
    os.chown(d, owner if owner is not None else uid, owner if owner is not None else uid)
    os.chmod(d, mode)
    return d


def own_file(directory: str, name: str, uid: int, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, uid)
    os.chmod(path, 0o600)
    return path


def plant_link(target: str, link: str, owner: int = NOBODY):
    os.symlink(target, link)
    os.lchown(link, owner, owner)


MOUNTPOINT = "/mnt/s3fuse-edge-status"


def write_status():
    """In the child: a status writer's whole life; what it left."""
    w = status.StatusWriter(MOUNTPOINT, lambda: {"requests": 1}).start()
    w.write_now()
    seen = status.read(MOUNTPOINT)
    w.stop()
    return {"read": seen}


@pytest.mark.parametrize("made_by", ["another user", "a link to another user's directory", "the user, mode 0755"])
def test_status_file_is_not_written_into_a_runtime_dir_others_control(victim, made_by):
    """The daemon of a user without XDG_RUNTIME_DIR writes /tmp/s3fuse-UID/HASH.json; a
    local user who made that directory first (or a link of that name) and put a link at
    the temporary file's name (HASH.json.PID.tmp: the pid is the daemon's) made the daemon
    write its JSON over any file the victim owns.  Now such a directory is not used: the
    mount runs without a status file and the log says why."""
    uid, made = victim
    rundir = f"/tmp/s3fuse-{uid}"
    home = own_dir(uid, 0o755)
    made.append(home)
    precious = own_file(home, "precious", uid, b"the victim's own file\n")
    if made_by == "another user":
        os.mkdir(rundir)
        os.chown(rundir, NOBODY, NOBODY)
        os.chmod(rundir, 0o777)
        trap = rundir
    elif made_by == "the user, mode 0755":
        os.mkdir(rundir)
        os.chown(rundir, uid, uid)
        os.chmod(rundir, 0o755)
        trap = rundir
    else:
        trap = own_dir(uid, 0o777, owner=NOBODY)
        made.append(trap)
        plant_link(trap, rundir)
    child = AsUser(uid, write_status)
    name = os.path.basename(status.status_path(MOUNTPOINT))
    plant_link(precious, os.path.join(trap, f"{name}.{child.pid}.tmp"))
    planted = sorted(os.listdir(trap))
    out = child.run()
    with open(precious, "rb") as f:
        assert f.read() == b"the victim's own file\n", "the status JSON went through the planted link"
    assert sorted(os.listdir(trap)) == planted, "nothing is written in a directory others control"
    assert out["result"]["read"] is None
    assert any("no status file" in w and rundir in w for w in out["warnings"]), out["warnings"]


def test_status_file_in_a_fresh_runtime_dir(victim):
    """No directory yet: made 0700 by the daemon, the file 0600, read back, removed at stop."""
    uid, _ = victim
    rundir = f"/tmp/s3fuse-{uid}"

    def life():
        w = status.StatusWriter(MOUNTPOINT, lambda: {"requests": 1}).start()
        st_dir, st_file = os.lstat(rundir), os.lstat(w.path)
        seen, listed = status.read(MOUNTPOINT), status.read_all()
        w.stop()
        return {"dir": [st_dir.st_uid, st_dir.st_mode & 0o7777], "file": [st_file.st_uid, st_file.st_mode & 0o7777],
                "read": seen, "all": listed, "left": os.listdir(rundir)}

    out = AsUser(uid, life).run()["result"]
    assert out["dir"] == [uid, 0o700] and out["file"] == [uid, 0o600]
    assert out["read"]["requests"] == 1 and out["read"]["mountpoint"] == MOUNTPOINT
    assert [e["mountpoint"] for e in out["all"]] == [MOUNTPOINT]
    assert out["left"] == []


def test_status_command_reads_nothing_from_a_runtime_dir_others_control(victim):
    """``s3fuse status`` read the same directory: another user's files there (or links to
    the victim's) were shown as mounts."""
    uid, made = victim
    rundir = f"/tmp/s3fuse-{uid}"
    os.mkdir(rundir)
    os.chown(rundir, NOBODY, NOBODY)
    os.chmod(rundir, 0o777)
    name = os.path.basename(status.status_path(MOUNTPOINT))
    forged = own_file(rundir, name, NOBODY, json.dumps({"pid": 1, "mountpoint": MOUNTPOINT}).encode())
    os.chmod(forged, 0o644)
    out = AsUser(uid, lambda: {"read": status.read(MOUNTPOINT), "all": status.read_all()}).run()
    assert out["result"] == {"read": None, "all": []}
    assert any(rundir in w for w in out["warnings"]), out["warnings"]


def test_status_command_does_not_follow_links_in_its_own_dir(victim):
    """Entries are opened with O_NOFOLLOW: a link named *.json is not an entry."""
    uid, made = victim
    rundir = f"/tmp/s3fuse-{uid}"
    home = own_dir(uid, 0o755)
    made.append(home)
    elsewhere = own_file(home, "other.json", uid, json.dumps({"pid": 1, "mountpoint": "/elsewhere"}).encode())

    def look():
        os.mkdir(rundir, 0o700)
        os.symlink(elsewhere, os.path.join(rundir, "0123456789abcdef.json"))
        return {"all": status.read_all()}

    assert AsUser(uid, look).run()["result"] == {"all": []}


# ---------------------------------------------------------------------------------------
# 15. cache_dir: a given one keeps its mode; what s3fuse keeps in it is checked and 0700
# ---------------------------------------------------------------------------------------
def test_cache_dir_made_by_s3fuse_is_0700_a_given_one_keeps_its_mode(tmp_path):
    made = CacheDir(str(tmp_path / "new" / "cache"))
    made.prepare()
    assert stat.S_IMODE(os.stat(made.root).st_mode) == 0o700
    for d in (made.journal, made.staging, made.recovery, made.blocks, made.meta):
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    given = tmp_path / "given"
    given.mkdir()
    os.chmod(given, 0o750)
    CacheDir(str(given)).prepare()
    assert stat.S_IMODE(os.stat(given).st_mode) == 0o750
    own = tmp_path / "own"          # the default per-mount directory: s3fuse's, made 0700
    own.mkdir()
    os.chmod(own, 0o755)
    CacheDir(str(own), own=True).prepare()
    assert stat.S_IMODE(os.stat(own).st_mode) == 0o700


@pytest.mark.parametrize("case", ["journal is a link", "staging of another user", "root of another user",
                                  "root group-writable"])
def test_cache_dir_others_could_change_is_refused(tmp_path, case):
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    root = tmp_path / "c"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if case == "journal is a link":
        os.symlink(elsewhere, root / "journal")
    elif case == "staging of another user":
        (root / "staging").mkdir()
        os.chown(root / "staging", NOBODY, NOBODY)
    elif case == "root of another user":
        os.chown(root, NOBODY, NOBODY)
    else:
        os.chmod(root, 0o770)
    with pytest.raises(ConfigError) as exc:
        CacheDir(str(root)).prepare()
    assert str(root) in str(exc.value)
    assert os.listdir(elsewhere) == []


# ---------------------------------------------------------------------------------------
# 12. The metrics endpoint: idle and slow connections, and too many of them
# ---------------------------------------------------------------------------------------
def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def closed_by_server(sock, within: float) -> bool:
    """The server ended the connection (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.fixture
def endpoint(monkeypatch):
    """A metrics server of its own registry, with a 0.5 s request timeout and room for 4
    connections; stopped at the end (stop must not wait for the clients)."""
    monkeypatch.setattr(metrics._Server, "request_timeout", 0.5, raising=False)
    monkeypatch.setattr(metrics._Server, "max_connections", 4, raising=False)
    registry = metrics.Registry()
    registry.counter("edge_scrapes_total", "a counter to see").inc()
    server = metrics.MetricsServer("127.0.0.1", 0, registry).start()
    yield server
    stopper = threading.Thread(target=server.stop, daemon=True)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "stop() waits for the clients' connections"


def test_metrics_idle_connections_are_closed_after_the_timeout(endpoint):
    socks = [socket.create_connection(("127.0.0.1", endpoint.port)) for _ in range(3)]
    try:
        assert all(closed_by_server(s, 10) for s in socks)
    finally:
        for s in socks:
            s.close()


def test_metrics_slow_request_is_cut_at_its_deadline(endpoint):
    """A client sending a header byte every 0.1 s (slowloris) never lets a per-receive
    timeout fire: the request as a whole must arrive within the timeout."""
    s = socket.create_connection(("127.0.0.1", endpoint.port))
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        for _ in range(100):            # 10 s of trickle at most
            time.sleep(0.1)
            try:
                s.sendall(b"a")
            except OSError:
                break
            if closed_by_server(s, 0.001):
                break
        else:
            pytest.fail("a request trickling in for 10 s was still being read")
    finally:
        s.close()


def test_metrics_connections_cannot_pin_threads_or_keep_a_scrape_out(endpoint):
    """50 idle connections held 50 threads; now at most max_connections (4) threads,
    the oldest idle one makes room, and a scrape is answered while they are open."""
    before = threading.active_count()
    socks = [socket.create_connection(("127.0.0.1", endpoint.port)) for _ in range(50)]
    try:
        time.sleep(0.2)
        assert threading.active_count() <= before + 4
        assert "edge_scrapes_total 1" in scrape(endpoint.url)
        # a keep-alive client that asks again is served on its connection
        conn = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=10)
        for _ in range(2):
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200 and b"edge_scrapes_total 1" in resp.read()
        conn.close()
        assert threading.active_count() <= before + 4
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------------------
# 11. An https:// proxy is spoken to over TLS
# ---------------------------------------------------------------------------------------
class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    BIG = bytes(range(256)) * 4096          # 1 MiB

    def do_GET(self):
        body = self.BIG if self.path == "/big" else f"origin saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_ca(str(tmp_path_factory.mktemp("tls")), ["localhost", "127.0.0.1"])


@pytest.fixture
def origins(tls):
    """(plain HTTP port, HTTPS port) of a small web server."""
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    secure = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls["cert"], tls["key"])
    secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
    for server in (plain, secure):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield plain.server_address[1], secure.server_address[1]
    for server in (plain, secure):
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy_env(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def read_whole(resp, size: int) -> bytes:
    """The body through readinto (as transport.get reads it)."""
    buf = bytearray(size)
    got = 0
    while got < size:
        n = resp.readinto(memoryview(buf)[got:])
        assert n, "body cut"
        got += n
    return bytes(buf)


def test_https_origin_through_an_https_proxy_is_tls_in_tls(tls, origins, proxy_env):
    """HTTPS_PROXY=https://user:pw@proxy: the CONNECT and its Proxy-Authorization went in
    plain TCP to a proxy that speaks TLS (the handshake failed, the password crossed the
    network in clear).  Now TLS to the proxy (checked with the CA bundle), the CONNECT
    inside, the origin's TLS inside the tunnel; keep-alive and readinto work through it."""
    _, secure_port = origins
    proxy = TLSProxy(tls, auth=("s3user", "pr0xy"))
    try:
        proxy_env.setenv("HTTPS_PROXY", proxy.url)
        conn = Network(ca_bundle=tls["ca"]).connect("https", "localhost", secure_port)
        try:
            for path in ("/big", "/again"):
                conn.request("GET", path, headers={"Host": f"localhost:{secure_port}"})
                resp = conn.getresponse()
                want = _Origin.BIG if path == "/big" else b"origin saw /again"
                assert resp.status == 200 and read_whole(resp, len(want)) == want
                assert resp.read() == b""
            conn.sock.sendall(b"GET /raw HTTP/1.1\r\nHost: localhost\r\n\r\n")      # as transport.head_many
            got = b""
            while b"origin saw /raw" not in got:
                data = conn.sock.recv(1 << 16)
                assert data
                got += data
        finally:
            conn.close()
        assert proxy.plain == 0
        assert proxy.requests == [("CONNECT", f"localhost:{secure_port}", proxy.auth)]
    finally:
        proxy.close()


def test_http_origin_through_an_https_proxy_goes_inside_tls(tls, origins, proxy_env):
    plain_port, _ = origins
    proxy = TLSProxy(tls, auth=("s3user", "pr0xy"))
    try:
        proxy_env.setenv("HTTP_PROXY", proxy.url)
        net = Network(ca_bundle=tls["ca"])
        assert net.absolute("http", "127.0.0.1")
        conn = net.connect("http", "127.0.0.1", plain_port)
        try:
            conn.request("GET", f"http://127.0.0.1:{plain_port}/x", headers=dict(conn.proxy_headers))
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b"origin saw /x"
        finally:
            conn.close()
        assert proxy.plain == 0
        assert proxy.requests == [("GET", f"http://127.0.0.1:{plain_port}/x", proxy.auth)]
    finally:
        proxy.close()


def test_an_https_proxy_with_an_untrusted_certificate_is_not_talked_to(tls, origins, proxy_env):
    """The proxy's certificate is checked (here against the system's CAs, which do not
    know the test CA): no CONNECT, no credentials sent."""
    _, secure_port = origins
    proxy = TLSProxy(tls, auth=("s3user", "pr0xy"))
    try:
        proxy_env.setenv("HTTPS_PROXY", proxy.url)
        with pytest.raises(ssl.SSLCertVerificationError):
            Network().connect("https", "localhost", secure_port)
        assert proxy.requests == []
    finally:
        proxy.close()


def test_a_proxy_scheme_neither_http_nor_https_is_refused(proxy_env):
    proxy_env.setenv("HTTPS_PROXY", "socks5://s3user:pr0xy@127.0.0.1:1080")
    with pytest.raises(ConfigError) as exc:
        Network()
    assert "HTTPS_PROXY=socks5://***@127.0.0.1:1080: only http:// and https:// proxies" in str(exc.value)
    assert "pr0xy" not in str(exc.value)
