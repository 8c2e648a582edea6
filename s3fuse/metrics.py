"""Metrics of a mount in Prometheus text format: a small registry, its exposition, and
the HTTP server of ``-o metrics=ADDR:PORT`` (docs/design/observability.md).

The counters are process-wide (one mount per daemon): ``s3.ObjectClient`` counts S3
requests by operation and status and the bytes it sends and receives, ``boundary``
the errors by errno, ``fuse.operations`` every FUSE callback and its latency, the uploader
and the commit scheduler the uploads.  What a mount *is* at a moment (cache size,
uploads pending, journal records) is read when scraped, by collectors the daemon adds.

Costs: a FUSE callback pays two ``time.monotonic_ns()`` calls, a ``bisect`` and two
list increments on its own thread's shard (no lock: each shard has one writer, the
scrape only reads them).  S3 counters take a lock, once per request (a request costs
milliseconds, the lock well under a microsecond).
"""
from __future__ import annotations

import bisect
import http.server
import logging
import socket
import socketserver
import threading
import time
from typing import Callable, Iterable, Optional

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# FUSE callback latency buckets (seconds): 50 us (a getattr from memory) to 10 s.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple, values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


class Counter:
    """A counter with labels (``inc(*label_values, n=1)``), guarded by a lock."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._values: dict = {}
        self._lock = threading.Lock()

    def inc(self, *values, n=1):
        with self._lock:
            self._values[values] = self._values.get(values, 0) + n

    def get(self, *values):
        with self._lock:
            return self._values.get(values, 0)

    def total(self):
        with self._lock:
            return sum(self._values.values())

    def lines(self) -> list:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0)]
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class OpHistograms:
    """Per-operation latency histograms (FUSE callbacks).  ``recorder(op)`` returns a
    function ``record(nanoseconds)`` for one operation; each thread writes its own shard
    (a row per operation: bucket counts, then the sum in ns), so there is no lock and
    no lost increment on the hot path.  Shards outlive their threads (libfuse keeps its
    workers for the mount's life; a few ended threads cost a few rows)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, label: str = "op", buckets: tuple = LATENCY_BUCKETS):
        self.name, self.help, self.label = name, help, label
        self.buckets = buckets
        self._bounds_ns = [int(b * 1e9) for b in buckets]
        self._ops: list = []
        self._shards: list = []
        self._local = threading.local()
        self._lock = threading.Lock()       # shard creation and op registration only

    def _index(self, op: str) -> int:
        with self._lock:
            if op not in self._ops:
                self._ops.append(op)
            return self._ops.index(op)

    def _new_shard(self) -> list:
        width = len(self._bounds_ns) + 2     # buckets, +Inf, sum
        with self._lock:
            shard = [[0] * width for _ in range(max(64, len(self._ops)))]
            self._shards.append(shard)
        self._local.shard = shard
        return shard

    def recorder(self, op: str) -> Callable[[int], None]:
        index = self._index(op)
        local, bounds, new_shard = self._local, self._bounds_ns, self._new_shard
        find = bisect.bisect_left

        def record(ns: int):
            try:
                row = local.shard[index]
            except (AttributeError, IndexError):     # this thread's first call, or a new op
                row = new_shard()[index]
            row[find(bounds, ns)] += 1
            row[-1] += ns
        return record

    def snapshot(self) -> dict:
        """op -> (bucket counts incl. +Inf, sum in seconds), summed over the shards."""
        with self._lock:
            ops, shards = list(self._ops), list(self._shards)
        out = {}
        for i, op in enumerate(ops):
            rows = [s[i] for s in shards if i < len(s)]
            counts = [sum(r[j] for r in rows) for j in range(len(self._bounds_ns) + 1)]
            if sum(counts):
                out[op] = (counts, sum(r[-1] for r in rows) / 1e9)
        return out

    def count(self, op: str) -> int:
        found = self.snapshot().get(op)
        return sum(found[0]) if found else 0

    def lines(self) -> list:
        out = []
        for op, (counts, total) in sorted(self.snapshot().items()):
            label = f'{self.label}="{_escape(op)}"'
            running = 0
            for bound, n in zip(list(self.buckets) + [float("inf")], counts):
                running += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f'{self.name}_bucket{{{label},le="{le}"}} {running}')
            out.append(f"{self.name}_sum{{{label}}} {_number(total)}")
            out.append(f"{self.name}_count{{{label}}} {running}")
        return out


class Registry:
    def __init__(self):
        self.metrics: list = []
        self._collectors: list = []
        self._lock = threading.Lock()

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def counter(self, name: str, help: str, labels: tuple = ()) -> Counter:
        return self.add(Counter(name, help, labels))

    def add_collector(self, collect: Callable[[], Iterable[tuple]]):
        """``collect()`` yields (name, kind, help, value) or (name, kind, help,
        [(labels dict, value), ...]) when scraped (gauges of a mount's state)."""
        with self._lock:
            self._collectors.append(collect)

    def remove_collector(self, collect):
        with self._lock:
            if collect in self._collectors:
                self._collectors.remove(collect)

    def names(self) -> list:
        """(name, kind, help) of every metric, collectors' included (the man page's list)."""
        out = [(m.name, m.kind, m.help) for m in self.metrics]
        out += [(name, kind, help) for name, kind, help, _ in STATE_METRICS]
        return out

    def exposition(self) -> str:
        lines = []
        for m in self.metrics:
            lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}"] + m.lines()
        with self._lock:
            collectors = list(self._collectors)
        for collect in collectors:
            try:
                samples = list(collect())
            except Exception:
                log.warning("metrics collector failed", exc_info=True)
                continue
            for name, kind, help, value in samples:
                lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
                if isinstance(value, list):
                    for labels, v in value:
                        names = tuple(labels)
                        lines.append(f"{name}{_labels(names, tuple(labels[n] for n in names))} {_number(v)}")
                else:
                    lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"


REGISTRY = Registry()
S3_REQUESTS = REGISTRY.counter("s3fuse_s3_requests_total",
                               "S3 requests by operation and HTTP status (unreachable/timeout: no answer)",
                               ("op", "status"))
S3_RETRIES = REGISTRY.counter("s3fuse_s3_retries_total", "S3 requests tried again after a transient failure",
                              ("op",))
S3_SENT = REGISTRY.counter("s3fuse_s3_sent_bytes_total", "bytes of request bodies sent to S3 (up)")
S3_RECEIVED = REGISTRY.counter("s3fuse_s3_received_bytes_total", "bytes of object data received from S3 (down)")
FUSE_OPS = REGISTRY.add(OpHistograms("s3fuse_fuse_op_seconds", "FUSE callbacks by operation, and their latency"))
FUSE_ERRORS = REGISTRY.counter("s3fuse_fuse_errors_total", "FUSE callbacks answered with an errno",
                               ("op", "errno"))
UPLOADS = REGISTRY.counter("s3fuse_uploads_total", "uploads that completed or failed (failed ones stay in "
                           "the journal and are retried)", ("result",))
UPLOADS_RESUMED = REGISTRY.counter("s3fuse_uploads_resumed_total",
                                   "uploads finished from the journal after a failure or a crash")
UPLOADED_BYTES = REGISTRY.counter("s3fuse_uploaded_bytes_total", "bytes of files whose upload completed")
JOURNAL_WRITES = REGISTRY.counter("s3fuse_journal_writes_total", "upload journal records written")

# Read when scraped, from the mount (``mount_collector``): (name, kind, help, attribute path)
STATE_METRICS = [
    ("s3fuse_cache_hits_total", "counter", "block lookups answered by the block cache", None),
    ("s3fuse_cache_misses_total", "counter", "block lookups the block cache could not answer (a read "
     "waited for S3; blocks read ahead are counted in s3fuse_cache_fetched_bytes_total)", None),
    ("s3fuse_cache_bytes", "gauge", "bytes in the block cache on disk", None),
    ("s3fuse_cache_fetched_bytes_total", "counter", "bytes fetched from S3 into the block cache", None),
    ("s3fuse_uploads_in_progress", "gauge", "uploads being sent now", None),
    ("s3fuse_uploads_pending", "gauge", "failed uploads waiting in the journal for their next try", None),
    ("s3fuse_journal_records", "gauge", "records in the upload journal (uploads not yet in the bucket)", None),
    ("s3fuse_open_handles", "gauge", "open file handles", None),
    ("s3fuse_info", "gauge", "the mount (value 1): version, bucket, prefix, mountpoint, FUSE binding", None),
]


def mount_collector(fs, mountpoint: str, version: str, binding: str) -> Callable:
    """The collector of a mounted ``Filesystem`` (``fs.gauges()``): its cache, uploads and journal."""
    help_of = {name: (kind, help) for name, kind, help, _ in STATE_METRICS}

    def collect():
        g = fs.gauges()
        values = {
            "s3fuse_cache_hits_total": g["cache_hits"],
            "s3fuse_cache_misses_total": g["cache_misses"],
            "s3fuse_cache_bytes": g["cache_bytes"],
            "s3fuse_cache_fetched_bytes_total": g["bytes_fetched"],
            "s3fuse_uploads_in_progress": len(g["uploads"]),
            "s3fuse_uploads_pending": g["uploads_pending"],
            "s3fuse_journal_records": g["journal_records"],
            "s3fuse_open_handles": g["open_handles"],
            "s3fuse_info": [({"version": version, "bucket": g["bucket"], "prefix": g["prefix"],
                              "mountpoint": mountpoint, "binding": binding}, 1)],
        }
        for name, value in values.items():
            kind, help = help_of[name]
            yield name, kind, help, value
    return collect


# -- the HTTP endpoint ----------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "s3fuse-metrics"
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.request_timeout      # each receive and send (StreamRequestHandler)
        super().setup()

    def handle_one_request(self):
        self.server.waiting(self.connection, True)      # for the next request: its deadline starts now
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()                    # the request line and headers are in
        self.server.waiting(self.connection, False)
        return ok

    def do_GET(self):
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self._send(404, b"not found: try /metrics\n", "text/plain")
            return
        started = time.monotonic()
        body = self.server.registry.exposition().encode()
        self._send(200, body, CONTENT_TYPE)
        log.debug("metrics scraped in %.1f ms", (time.monotonic() - started) * 1000)

    def _send(self, code: int, body: bytes, ctype: str):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):     # no line per scrape in the mount's log
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One thread per connection, at most ``max_connections`` of them; each request must
    arrive whole within ``request_timeout`` seconds of the previous answer (or of the
    connection), however slowly its bytes trickle in.  A connection past its deadline is
    shut down by the serving thread (``service_actions``, every poll); when all the
    threads are taken, the connection waiting longest for its request makes room for the
    new one - idle or slow clients cannot pin threads or keep a scrape out."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128      # listen() backlog (5 by default: a burst of connects waited for SYN retries)
    max_connections = 16
    request_timeout = 10.0

    def __init__(self, address, registry, family):
        self.address_family = family
        self.registry = registry
        self._room = threading.Condition()
        self._open: dict = {}     # connection -> [deadline, waiting for a request?]
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self._room:
            if not self._make_room():
                self.shutdown_request(request)
                return
            self._open[request] = [time.monotonic() + self.request_timeout, True]
        try:
            super().process_request(request, client_address)
        except BaseException:           # no thread for it
            self._forget(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request):
        with self._room:
            self._open.pop(request, None)
            self._room.notify_all()

    def _make_room(self, wait: float = 1.0) -> bool:
        """(Holding ``_room``) a thread free for one more connection: else the one waiting
        longest for its request is shut down and its thread awaited."""
        deadline = time.monotonic() + wait
        while len(self._open) >= self.max_connections:
            idle = [(state[0], conn) for conn, state in self._open.items() if state[1]]
            if idle:
                conn = min(idle, key=lambda pair: pair[0])[1]
                self._open[conn][1] = False
                _shut(conn)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._room.wait(left)
        return True

    def waiting(self, conn, waiting: bool):
        """A handler starts reading a request (its deadline starts now) or has read one."""
        with self._room:
            state = self._open.get(conn)
            if state is not None:
                state[:] = [time.monotonic() + self.request_timeout, waiting]

    def service_actions(self, now: Optional[float] = None):
        now = time.monotonic() if now is None else now
        with self._room:
            late = [conn for conn, state in self._open.items() if state[0] <= now]
            for conn in late:
                self._open[conn][1] = False
                _shut(conn)


def _shut(conn):
    """End a connection another thread is reading (its read returns at once; that thread
    closes it)."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class MetricsServer:
    """``-o metrics=HOST:PORT``: GET /metrics on a daemon thread.  Binding happens in
    the constructor, so a taken port fails the mount with one line (OSError)."""

    def __init__(self, host: str, port: int, registry: Optional[Registry] = None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server((host, port), registry or REGISTRY, family)
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.service_actions(now=float("inf"))     # every connection still open ends
        self._server.server_close()
