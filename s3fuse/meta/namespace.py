"""Lookups and directory listings: turns keys into files and directories.

Rules (docs/SEMANTICS.md): ``a/b/c`` makes ``a`` and ``a/b`` directories (implied);
a ``dir/`` marker object makes ``dir`` a directory and carries its metadata; when a key
``x`` and keys below ``x/`` both exist, the directory wins and the object ``x`` is hidden.

Cost of ``ls -l`` on a cold directory of N objects: ceil(N/1000) ListObjectsV2 requests.
With ``meta=exact`` (default) each object whose (key, ETag) is not yet in the persistent
metadata store also costs one HEAD, issued in parallel right after its listing page
arrives (pipelined, 16 per connection, on 8 threads), so ``stat`` calls that follow
mostly find the answer ready; objects s3fuse
uploaded itself and objects seen by an earlier mount cost nothing.  With ``meta=list``
no HEAD is made: attributes come from the listing and the mount defaults.

A lookup never waits behind that prefetch: its directory probe has a pool of its own, and
a name still queued in a batch is taken out of it and asked for at once.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import cachetools

from .. import errors
from ..paths import NAME_MAX, KeyMapper, is_utf8, join, split, valid_name
from .attrs import Attr, Defaults, apply_metadata, default_attr
from .cache import DirListing, MetaCache
from .known import KnownMetadata, same_time

log = logging.getLogger(__name__)

FOLDER_SUFFIX = "_$folder$"


class Namespace:
    def __init__(self, client, mapper: KeyMapper, cache: MetaCache, known: KnownMetadata,
                 defaults: Defaults, exact: bool = True, head_threads: int = 8):
        self.client = client
        self.mapper = mapper
        self.cache = cache
        self.known = known
        self.defaults = defaults
        self.exact = exact
        self.mount_time = time.time()
        # Two pools: the listings' HEAD prefetch (background, may queue thousands of
        # batches) and the lookups' directory probes (foreground: never queued behind a
        # big listing's prefetch).
        self._heads = ThreadPoolExecutor(max_workers=head_threads, thread_name_prefix="head")
        self._probes = ThreadPoolExecutor(max_workers=head_threads, thread_name_prefix="lookup")
        self._pending_lock = threading.Lock()   # leaf lock, guards _pending and _folder_markers
        self._pending: dict = {}                 # path -> its _Batch: HEAD queued or in flight
        self._warned: set = set()
        self._folder_markers = cachetools.LRUCache(100_000)    # dir path -> its "dir_$folder$" key

    def close(self):
        self._heads.shutdown(wait=False, cancel_futures=True)
        self._probes.shutdown(wait=False, cancel_futures=True)

    # -- attributes ---------------------------------------------------------------------
    def root_attr(self) -> Attr:
        attr = self.cache.get_attr("/")
        if attr is None:
            attr = default_attr(True, 0, self.mount_time, self.defaults)
            marker = self.mapper.prefix
            if marker and self.exact:
                try:
                    info = self.client.head(marker)
                    attr = apply_metadata(attr, info.metadata, True)
                except errors.NotFound:
                    pass
            self.cache.put_attr("/", attr)
        return attr

    def lookup(self, path: str) -> Attr:
        """Attributes of ``path``; raises NotFound."""
        if path == "/":
            return self.root_attr()
        attr = self.cache.get_attr(path)
        if attr is not None:
            if self.exact and not attr.exact:
                return self._exact(path, attr)
            return attr
        if self.cache.is_missing(path):
            raise errors.NotFound(path)
        parent, name = split(path)
        if not is_utf8(path):
            raise errors.NotFound(f"{path!r}: not UTF-8, so no S3 key")     # no request: S3 answers 400
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise errors.NameTooLong(path)
        if not valid_name(name) or name.endswith(FOLDER_SUFFIX):
            raise errors.NotFound(path)
        if self.cache.listed_absent(parent, name):
            raise errors.NotFound(path)
        if self.cache.absent_from_stale_listing(parent, name) and self._revalidate(parent) and \
                self.cache.listed_absent(parent, name):
            raise errors.NotFound(path)
        return self._lookup_remote(path)

    def _revalidate(self, parent: str) -> bool:
        """The cached listing of ``parent`` is older than negative_ttl: one ListObjectsV2
        page re-checks every name it lacks at once (an untar asks for one missing name per
        file: this costs a LIST every negative_ttl, not a HEAD and a LIST per file).  False
        for a directory of more than one page (each missing name is then looked up)."""
        started = time.monotonic()
        prefix = self.mapper.dir_prefix(parent)
        page = self.client.list_page(prefix)
        if page.next_token:
            return False
        entries = {name: True for name in self._names(prefix, page.prefixes, is_dir=True)}
        for obj in page.objects:
            if obj.key.endswith(FOLDER_SUFFIX):
                entries[obj.key[len(prefix):-len(FOLDER_SUFFIX)]] = True
            elif obj.key != prefix:
                for name in self._names(prefix, [obj.key], is_dir=False):
                    entries.setdefault(name, False)
        self.cache.revalidate(parent, entries, started)
        return True

    def _lookup_remote(self, path: str) -> Attr:
        key = self.mapper.key(path)
        # The directory probe and the file HEAD go out together; the directory wins.
        dir_future = self._probes.submit(self.client.list_page, key + "/", None, "/", 2)
        try:
            info = self.client.head(key)
        except errors.NotFound:
            info = None
        page = dir_future.result()
        if page.objects or page.prefixes:
            attr = default_attr(True, 0, self.mount_time, self.defaults)
            if page.objects and page.objects[0].key == key + "/":
                marker = page.objects[0]
                attr = self._dir_marker_attr(key + "/", marker.etag, attr, marker.mtime)
            else:
                # The probe lists a "dir/" marker first if there is one: without it the
                # defaults are the directory's exact attributes (no HEAD of "dir/" later).
                attr = attr.copy(exact=True)
            self.cache.put_attr(path, attr)
            return attr
        if info is None:
            self.cache.put_missing(path)
            raise errors.NotFound(path)
        attr = self._file_attr(info)
        self.cache.put_attr(path, attr)
        return attr

    def _file_attr(self, info) -> Attr:
        """Attributes of the object ``info`` (s3.ObjectInfo): from its own metadata (a
        HEAD), else from what is known of that version (key, ETag, LastModified), else
        the defaults (exact only with ``meta=list``: a HEAD will tell)."""
        attr = default_attr(False, info.size, info.mtime, self.defaults, info.etag)
        if info.metadata is not None:
            self.known.learn(info.key, info.etag, info.mtime, info.metadata, info.headers)
            return apply_metadata(attr, info.metadata, False)
        known = self.known.get(info.key, info.etag, info.mtime)
        if known is not None:
            return apply_metadata(attr, known.metadata, False)
        return attr if self.exact else attr.copy(exact=True)

    def _dir_marker_attr(self, marker_key: str, etag: str, attr: Attr, modified=None) -> Attr:
        known = self.known.get(marker_key, etag, modified)
        if known is not None or not self.exact:
            return apply_metadata(attr, known.metadata if known is not None else None, True)
        try:
            info = self.client.head(marker_key)
        except errors.NotFound:
            return attr.copy(exact=True)
        self.known.learn(marker_key, info.etag, info.mtime, info.metadata, info.headers)
        return apply_metadata(attr, info.metadata, True)

    def _exact(self, path: str, attr: Attr) -> Attr:
        """Wait for (or make) the HEAD that gives ``path`` its exact POSIX attributes."""
        with self._pending_lock:
            batch = self._pending.get(path)
            if batch is None:
                # A batch may have settled it between the caller's cache read and now.
                settled = self.cache.get_attr(path)
                if settled is not None and settled is not attr and settled.exact:
                    return settled
            elif not batch.started:
                # Still queued behind a big listing's prefetch: do this one now instead
                # (its batch skips it).
                del self._pending[path]
                batch = None
        try:
            if batch is not None:
                return batch.result(path)
            return self._head_entry(path, attr)
        except errors.NotFound:
            self.cache.put_missing(path)
            raise

    def _prefetch(self, items: list):
        """Queue HEADs for (path, listed attr) pairs, ``HEAD_BATCH`` per pipelined batch.
        One Future per batch, not per entry: a listing of N entries queues N/16 of them."""
        batch = None
        with self._pending_lock:
            for path, attr in items:
                if path in self._pending:
                    continue
                if batch is None or len(batch.items) >= self.HEAD_BATCH:
                    if batch is not None:
                        self._heads.submit(self._run_batch, batch)
                    batch = _Batch()
                batch.items.append((path, attr))
                self._pending[path] = batch
        if batch is not None:
            self._heads.submit(self._run_batch, batch)

    HEAD_BATCH = 16

    def _run_batch(self, batch: "_Batch"):
        with self._pending_lock:
            batch.started = True
            items = [(p, a) for p, a in batch.items if self._pending.get(p) is batch]
        results = batch.results
        try:
            files = [(p, a) for p, a in items if not a.is_dir]
            infos = self.client.head_many([self.mapper.key(p) for p, _ in files]) if files else []
            answers = [info if isinstance(info, Exception) else
                       self._file_attr(info) for info in infos]
            self.cache.settle([(path, listed, exact) for (path, listed), exact in zip(files, answers)
                               if not isinstance(exact, Exception)])
            for (path, _), answer in zip(files, answers):
                results[path] = answer
            for path, listed in items:
                if listed.is_dir:
                    try:
                        results[path] = self._head_entry(path, listed)
                    except errors.FsError as exc:
                        results[path] = exc
        except BaseException as exc:
            if not isinstance(exc, errors.FsError):
                log.warning("HEAD batch failed", exc_info=True)
            for path, _ in items:
                results.setdefault(path, exc)
        finally:
            with self._pending_lock:
                for path, _ in items:
                    if self._pending.get(path) is batch:
                        del self._pending[path]
            batch.done.set()

    def _head_entry(self, path: str, listed: Attr) -> Attr:
        if listed.is_dir:
            exact = self._dir_marker_attr(self.mapper.dir_prefix(path), listed.etag or "", listed)
        else:
            info = self.client.head(self.mapper.key(path))
            exact = self._file_attr(info)
        return self._settle(path, listed, exact)

    def _settle(self, path: str, listed: Attr, exact: Attr) -> Attr:
        self.cache.settle([(path, listed, exact)])
        return exact

    # -- listings -------------------------------------------------------------------------
    CHUNK = 1000           # entries per chunk of a cached listing handed out

    def list_dir(self, path: str) -> DirListing:
        """The whole listing of ``path`` (tests; readdir streams ``iter_dir``)."""
        listing = DirListing()
        for chunk in self.iter_dir(path, listing):
            listing.entries.update(chunk)
        return listing

    def iter_dir(self, path: str, seen: Optional[DirListing] = None):
        """The entries of ``path``, as lists of (name, is_dir): the cached listing in
        chunks, else one list per ListObjectsV2 page as it comes, never the whole
        directory at once.  A complete listing of at most ``cache.max_entries`` entries
        is cached; a bigger one is not kept (docs/design/memory.md): only the names of
        its directories, which hide files of the same name.  ``seen.marker`` is set
        when a "dir/" marker object exists."""
        cached = self.cache.get_dir(path)
        if cached is not None:
            if seen is not None:
                seen.marker = cached.marker
            items = list(cached.entries.items())
            for i in range(0, len(items), self.CHUNK):
                yield items[i:i + self.CHUNK]
            return
        started = self.cache.listing_started()
        prefix = self.mapper.dir_prefix(path)
        listing: Optional[DirListing] = DirListing()      # None once too big to cache
        dirs: set = set()
        held: dict = {}          # file name -> its object: a "name/" may come on a later page
        marker, count = False, 0
        for page in self.client.list_all(prefix):
            out = []
            for name in self._names(prefix, page.prefixes, is_dir=True):
                self._add_dir(path, name, dirs, held, out)
            for obj in page.objects:
                if obj.key == prefix:
                    marker = True
                elif obj.key.endswith(FOLDER_SUFFIX) and valid_name(obj.key[len(prefix):-len(FOLDER_SUFFIX)]):
                    # another tool's directory marker: a directory, the object hidden
                    name = obj.key[len(prefix):-len(FOLDER_SUFFIX)]
                    self._add_dir(path, name, dirs, held, out)
                    with self._pending_lock:
                        self._folder_markers[join(path, name)] = obj.key
                else:
                    for name in self._names(prefix, [obj.key], is_dir=False):
                        if name in dirs:
                            self._warn_once(f"{obj.key!r} is hidden by the directory of the same name")
                        else:
                            held[name] = obj
            # Keys come in order: a file whose "name/" sorts before this page's last key
            # has no directory of its name.
            last = max([o.key for o in page.objects[-1:]] + page.prefixes[-1:], default="")
            done = [n for n in held if page.next_token is None or prefix + n + "/" < last]
            files = {n: held.pop(n) for n in done}
            self._fill_files(path, files)
            out.extend((n, False) for n in files)
            count += len(out)
            if listing is not None:
                listing.entries.update(out)
                if len(listing.entries) > self.cache.max_entries:
                    listing = None
            if out:
                yield out
        if seen is not None:
            seen.marker = marker
        if not count and not marker and path != "/":
            # Nothing under the prefix: the directory exists only if lookup says so.
            attr = self.lookup(path)
            if not attr.is_dir:
                raise errors.NotADirectory(path)
        if listing is not None:
            listing.marker = marker
            self.cache.put_dir(path, listing, started)

    def _add_dir(self, path: str, name: str, dirs: set, held: dict, out: list):
        if name in dirs:
            return
        dirs.add(name)
        obj = held.pop(name, None)
        if obj is not None:
            self._warn_once(f"{obj.key!r} is hidden by the directory of the same name")
        out.append((name, True))
        child = join(path, name)
        cached = self.cache.get_attr(child)
        if cached is None or not cached.is_dir:
            attr = default_attr(True, 0, self.mount_time, self.defaults)
            if not self.exact:
                attr = attr.copy(exact=True)
            self.cache.put_attr(child, attr)
            if self.exact:
                self._prefetch([(child, attr)])

    def folder_marker(self, path: str) -> Optional[str]:
        """The ``dir_$folder$`` key a listing showed for directory ``path``, if any (old
        s3fs-fuse, Hadoop S3N/EMR): removed with the directory, never written."""
        with self._pending_lock:
            return self._folder_markers.get(path)

    def forget_folder_marker(self, path: str):
        with self._pending_lock:
            self._folder_markers.pop(path, None)

    def _fill_files(self, path: str, files: dict):
        wanted = []
        for name, obj in files.items():
            child = join(path, name)
            cached = self.cache.get_attr(child)
            if cached is not None and cached.etag == obj.etag and cached.exact and \
                    (cached.modified is None or same_time(cached.modified, obj.mtime)):
                continue      # the same version (a metadata change keeps the ETag, not LastModified)
            attr = self._file_attr(obj)
            self.cache.put_attr(child, attr)
            if self.exact and not attr.exact:
                wanted.append((child, attr))
        self._prefetch(wanted)

    def _names(self, prefix: str, keys, is_dir: bool):
        for key in keys:
            name = key[len(prefix):]
            if is_dir:
                name = name[:-1]
            if valid_name(name):
                yield name
            else:
                self._warn_once(f"skipping key {key!r}: {name!r} cannot be a file name")

    def _warn_once(self, message: str):
        if message not in self._warned and len(self._warned) < 10_000:
            self._warned.add(message)
            log.warning(message)


class _Batch:
    """HEADs sent together on one pipelined connection; ``started`` once a thread took it,
    ``done`` once ``results`` (path -> Attr or the exception of its HEAD) are all in."""
    __slots__ = ("items", "started", "results", "done")

    def __init__(self):
        self.items: list = []        # (path, listed Attr)
        self.started = False
        self.results: dict = {}
        self.done = threading.Event()

    def result(self, path: str) -> Attr:
        self.done.wait()
        answer = self.results.get(path)
        if answer is None:
            raise errors.BackendError(f"{path}: its HEAD batch gave no answer")
        if isinstance(answer, BaseException):
            raise answer
        return answer
