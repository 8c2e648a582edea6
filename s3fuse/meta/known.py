"""What the mount knows of object versions: user metadata and content headers, kept in
``cache_dir/meta`` across mounts, so exact POSIX attributes need no HEAD per listing entry.

A version is (key, ETag, LastModified).  Not the ETag alone: a metadata-only change by
another client (``chmod`` on an s3fs-fuse mount, ``aws s3 cp --metadata-directive
REPLACE``) is a CopyObject that keeps the content, hence the ETag, but gives a new
LastModified; what the mount learnt of the old version must not answer for the new one.

- ``learn(key, etag, modified, ...)``: from a HEAD: exactly that version.
- ``wrote(key, etag, ..., window)``: the mount's own write (PutObject, CompleteMultipart-
  Upload, CopyObject), whose answer carries no LastModified.  ``window`` is the span of
  server time the write took; the first listing or HEAD that shows (key, etag) with a
  LastModified inside it adopts that LastModified.  Anything else is another version.
- ``get(key, etag, modified)``: the entry of that version, or None (the caller HEADs).

Writes are buffered in memory and flushed in one sqlite transaction per batch (a
transaction per entry would cost more than the HEAD it saves); ``get`` sees the buffer
first, then the batch being flushed.  ``_lock`` is a leaf lock guarding the buffer only;
``_flush_lock`` serialises flushes (the flusher thread and close()).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Optional, Tuple

import diskcache

from .. import errors

log = logging.getLogger(__name__)

SLACK = 2.0      # seconds: LastModified and Date have 1 s resolution; the clock offset is estimated


def same_time(a: Optional[float], b: Optional[float]) -> bool:
    """Two LastModified values of one version: a listing has milliseconds, a HEAD's
    Last-Modified header whole seconds."""
    return a is not None and b is not None and int(a) == int(b)


@dataclass
class Known:
    metadata: dict = field(default_factory=dict)     # user metadata (without x-amz-meta-)
    headers: dict = field(default_factory=dict)      # objects.CONTENT_HEADERS the version has
    modified: Optional[float] = None                 # LastModified, once seen
    window: Optional[Tuple[float, float]] = None     # own write: server time it took

    def matches(self, modified: Optional[float]) -> Optional[bool]:
        """True: that version; None: an own write seen the first time (adopt it); False: not."""
        if modified is None:
            return True
        if self.modified is not None:
            return same_time(self.modified, modified)
        if self.window is not None and self.window[0] - SLACK <= modified <= self.window[1] + SLACK:
            return None
        return False


class KnownMetadata:
    FLUSH_EVERY = 1.0
    VERSION = "v2"     # v1 entries (keyed by ETag only) are never read again; they age out

    def __init__(self, directory: str, bucket: str, size_limit: int = 256 << 20):
        self._bucket = bucket
        # cull_limit=0: no size check inside each set(); flush() culls once per batch.
        self._store = diskcache.Cache(directory, size_limit=size_limit,
                                      eviction_policy="least-recently-stored", cull_limit=0)
        self._lock = threading.Lock()
        self._buffer: dict = {}
        self._flushing: dict = {}       # the batch being written: still seen by get()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._flusher = threading.Thread(target=self._run, name="meta-flush", daemon=True)
        self._flusher.start()

    def _k(self, key: str, etag: str) -> str:
        return f"{self.VERSION}\0{self._bucket}\0{key}\0{etag}"

    def get(self, key: str, etag: str, modified: Optional[float] = None) -> Optional[Known]:
        if not etag:
            return None
        k = self._k(key, etag)
        with self._lock:
            entry = self._buffer.get(k) or self._flushing.get(k)
        if entry is None:
            raw = self._store.get(k)
            entry = Known(**raw) if isinstance(raw, dict) else None
        if entry is None:
            return None
        match = entry.matches(modified)
        if match is False:
            return None
        if match is None:                   # our own write, seen now: this is its LastModified
            entry = Known(entry.metadata, entry.headers, modified, None)
            self._put(k, entry)
        return entry

    def learn(self, key: str, etag: str, modified: Optional[float], metadata: Optional[dict],
              headers: Optional[dict] = None):
        """A HEAD of that version answered ``metadata`` and ``headers``."""
        if etag:
            self._put(self._k(key, etag), Known(dict(metadata or {}), dict(headers or {}), modified, None))

    def wrote(self, key: str, etag: str, metadata: dict, headers: Optional[dict], window: Tuple[float, float]):
        """The mount wrote this version itself, in ``window`` (server time)."""
        if etag:
            self._put(self._k(key, etag), Known(dict(metadata or {}), dict(headers or {}), None, tuple(window)))

    def _put(self, k: str, entry: Known):
        with self._lock:
            self._buffer[k] = entry
            big = len(self._buffer) >= 1000
        if big:
            self._wake.set()

    def flush(self):
        # A batch stays visible to get() until the store has it (a rename of 1,000 files
        # then listing the target found some entries in neither and HEADed them).
        with self._flush_lock:
            with self._lock:
                batch, self._buffer = self._buffer, {}
                self._flushing = batch
            try:
                if batch:
                    with self._store.transact():
                        for k, v in batch.items():
                            self._store.set(k, vars(v))
                    self._store.cull()
            finally:
                with self._lock:
                    self._flushing = {}

    def _run(self):
        full = False
        while not self._closed:
            self._wake.wait(self.FLUSH_EVERY)
            self._wake.clear()
            try:
                self.flush()
                full = False
            except Exception as exc:   # the store is an optimisation: never fatal
                if not (errors.is_no_space(exc) or "disk is full" in str(exc)):
                    log.warning("metadata store flush failed", exc_info=True)
                elif not full:         # once per full-disk episode, not every second
                    full = True
                    log.warning("metadata store: the cache disk is full; what this mount learnt of "
                                "objects is not kept meanwhile (later lookups HEAD them): %s", exc)

    def close(self):
        self._closed = True
        self._wake.set()
        self._flusher.join(5)
        self.flush()
        self._store.close()
