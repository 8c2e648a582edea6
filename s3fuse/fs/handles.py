"""The handle table: open handles, files open for writing, deferred deletes and what
the kernel page cache holds - everything that follows a path while it is open.

Invariants
- ``_files[path]`` is the one ``OpenFile`` of ``path`` while any handle has it open for
  writing (refcounted by ``OpenFile.refs``); an unlinked file is never in ``_files``.
- ``_deferred[path]``: an object unlinked (or renamed away) while open for reading; the
  name is hidden at once and the key deleted when the last of its handles closes,
  unless a new object took over the key meanwhile (``cancelled``).
- ``_kernel_cached[path]`` is the ETag whose pages the kernel may still cache for
  ``path`` (open keeps them only if the ETag is unchanged).  It is an LRU of at most
  ``KERNEL_CACHE_ENTRIES``: forgetting an entry only costs the kernel a re-read.

Lock: ``_lock`` guards all four maps and the handles' ``path``/``deferred`` fields.  It
is a leaf: taken after ``OpenFile.lock`` (rename), never held across S3 or disk I/O,
and nothing is called under it.  Every reader of the maps goes through a method here.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import cachetools

from .. import errors

KERNEL_CACHE_ENTRIES = 65_536


@dataclass
class DeferredDelete:
    key: str
    fhs: set
    cancelled: bool = False


@dataclass
class Handle:
    path: str
    flags: int
    reader: Optional[object] = None     # data.reader.Reader of a read-only handle
    file: Optional[object] = None       # write.openfile.OpenFile when open for writing
    writable: bool = False
    deferred: Optional[DeferredDelete] = None
    verify: Optional[object] = None     # data.verify.WholeReadDigest (-o verify, object with an MD5)


@dataclass
class DirView:
    """What the open files change in a listing of one directory (a snapshot)."""
    hidden: set = field(default_factory=set)      # names waiting for their deferred delete
    writing: set = field(default_factory=set)     # names open for writing (attributes in flux)
    new: list = field(default_factory=list)       # names created here, not uploaded yet


def _below(path: str, top: str) -> bool:
    return path.startswith(top.rstrip("/") + "/")


class HandleTable:
    def __init__(self):
        self._lock = threading.Lock()
        self._handles: dict = {}                # fh -> Handle
        self._files: dict = {}                  # path -> OpenFile
        self._deferred: dict = {}               # path -> DeferredDelete
        self._kernel_cached = cachetools.LRUCache(KERNEL_CACHE_ENTRIES)   # path -> etag
        self._counter = itertools.count(1)

    # -- handles ---------------------------------------------------------------------------
    def add(self, handle: Handle) -> int:
        with self._lock:
            fh = next(self._counter)
            self._handles[fh] = handle
        return fh

    def get(self, fh: int) -> Handle:
        with self._lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise errors.BadHandle(f"bad file handle {fh}")
        return handle

    def count(self) -> int:
        with self._lock:
            return len(self._handles)

    def release(self, fh: int):
        """Forget handle ``fh``.  Returns (handle or None, key to delete now or None,
        paths whose deferred delete this ends).  Those paths stay hidden until the caller
        has deleted the key and updated the caches (``end_deferred``): a listing in between
        must not show a name whose object is gone."""
        with self._lock:
            handle = self._handles.pop(fh, None)
            d = handle.deferred if handle is not None else None
            if d is None:
                return handle, None, []
            d.fhs.discard(fh)
            if d.fhs:
                return handle, None, []
            ended = [p for p, v in self._deferred.items() if v is d]
            return handle, (None if d.cancelled else d.key), ended

    def end_deferred(self, paths: list):
        """The deferred deletes of ``paths`` are done: their names are no longer hidden."""
        with self._lock:
            for p in paths:
                d = self._deferred.get(p)
                if d is not None and not d.fhs:
                    del self._deferred[p]

    # -- files open for writing --------------------------------------------------------------
    def live_file(self, path: str):
        """The OpenFile of ``path`` if it is open for writing (and not unlinked)."""
        with self._lock:
            f = self._files.get(path)
        return f if f is not None and not f.unlinked else None

    def acquire_file(self, path: str, make: Callable):
        """The OpenFile of ``path`` with one more reference; ``make()`` builds one (outside
        the lock) when there is none.  A concurrent builder that wins keeps its own."""
        with self._lock:
            f = self._files.get(path)
            if f is not None and not f.unlinked:
                f.refs += 1
                return f
        made = make()
        with self._lock:
            other = self._files.get(path)
            if other is None or other.unlinked:
                made.refs = 1
                self._files[path] = made
                return made
            other.refs += 1
        made.discard()
        return other

    def adopt_file(self, path: str, f) -> bool:
        """A file with no descriptor (its upload pending, from the journal) takes ``path``
        if no other file has it.  True if it did."""
        with self._lock:
            if path in self._files:
                return False
            f.refs = 0
            self._files[path] = f
            return True

    def drop_file_ref(self, f, keep: bool = False) -> bool:
        """One reference less; True if it was the last.  The file then leaves the table,
        unless ``keep`` (writeback: it stays, for lookups and reads, until uploaded)."""
        with self._lock:
            f.refs -= 1
            last = f.refs <= 0
            if last and not keep and self._files.get(f.path) is f:
                del self._files[f.path]
        return last

    def forget_file(self, f, force: bool = False) -> bool:
        """Writeback: ``f``'s upload is done; it leaves the table unless it was opened
        again (or, unless ``force``, written) meanwhile.  True if it left (the caller
        discards it)."""
        with self._lock:
            if f.refs > 0 or (f.dirty and not f.unlinked and not force):
                return False
            if self._files.get(f.path) is f:
                del self._files[f.path]
            return True

    def unlink_file(self, path: str):
        """``path`` is unlinked: its OpenFile (returned, or None) leaves the table marked
        unlinked; its descriptors go on working on it."""
        with self._lock:
            f = self._files.pop(path, None)
            if f is not None:
                f.unlinked = True
        return f

    def open_files(self) -> list:
        with self._lock:
            return list(self._files.values())

    def files_below(self, path: str) -> list:
        with self._lock:
            return [f for p, f in self._files.items() if _below(p, path) and not f.unlinked]

    def dir_view(self, path: str) -> DirView:
        view = DirView()
        with self._lock:
            for p in self._deferred:
                if _below(p, path) and "/" not in p[len(path.rstrip("/")) + 1:]:
                    view.hidden.add(p.rsplit("/", 1)[1])
            for p, f in self._files.items():
                if _below(p, path) and "/" not in p[len(path.rstrip("/")) + 1:]:
                    name = p.rsplit("/", 1)[1]
                    view.writing.add(name)
                    if not f.unlinked:
                        view.new.append(name)
        return view

    # -- renames -----------------------------------------------------------------------------
    def retarget_file(self, old: str, new: str, new_key: str):
        """A file rename: an OpenFile at ``new`` becomes unlinked (replaced); the one at
        ``old`` (returned, or None) and its writing handles follow to ``new``."""
        with self._lock:
            f = self._files.get(old)
            if f is not None and f.unlinked:
                f = None
            replaced = self._files.pop(new, None)
            if replaced is not None and replaced is not f:
                replaced.unlinked = True
            if f is not None:
                del self._files[old]
                f.path, f.key = new, new_key
                self._files[new] = f
                for h in self._handles.values():
                    if h.file is f:
                        h.path = new
            return f

    def retarget_tree(self, old: str, new: str, key_of: Callable[[str], str]):
        """A directory rename: open files, handles and deferred deletes below ``old``
        follow to ``new`` (their keys were moved with the tree)."""
        def moved(p):
            return new + p[len(old):]
        with self._lock:
            for p, f in [(p, f) for p, f in self._files.items() if _below(p, old)]:
                del self._files[p]
                f.path = moved(p)
                f.key = key_of(f.path)
                self._files[f.path] = f
            for h in self._handles.values():
                if _below(h.path, old):
                    h.path = moved(h.path)
            for p, d in [(p, d) for p, d in self._deferred.items() if _below(p, old)]:
                del self._deferred[p]
                d.key = key_of(moved(p))
                self._deferred[moved(p)] = d

    # -- deferred deletes --------------------------------------------------------------------
    def is_hidden(self, path: str) -> bool:
        with self._lock:
            return path in self._deferred

    def defer_delete(self, path: str, key: str) -> bool:
        """If handles still read the object ``key`` of ``path`` (readers, or writers whose
        unstaged bytes come from it), hide ``path`` and delete ``key`` at their last close:
        returns True.  False: nobody reads it, the caller deletes now."""
        with self._lock:
            fhs = {fh for fh, h in self._handles.items() if h.path == path and
                   (h.file is None or (h.file.base is not None and h.file.base.key == key))}
            if not fhs:
                return False
            d = DeferredDelete(key, fhs)
            for fh in fhs:
                self._handles[fh].deferred = d
            self._deferred[path] = d
            return True

    def claim_name(self, path: str, same_key: bool):
        """A new object takes ``path``: it is no longer hidden, and if it has the key of
        one still waiting for its deferred delete, that delete must not happen."""
        with self._lock:
            d = self._deferred.pop(path, None)
            if d is not None and same_key:
                d.cancelled = True

    # -- the kernel page cache ----------------------------------------------------------------
    def keep_kernel_cache(self, path: str, etag: str) -> bool:
        """At open for reading: may the kernel keep its cached pages of ``path``?  Yes if
        they are of this ETag.  Records ``etag`` as what it caches from now on."""
        with self._lock:
            keep = self._kernel_cached.get(path) == etag
            self._kernel_cached[path] = etag
        return keep

    def forget_kernel_cache(self, *paths: str):
        with self._lock:
            for p in paths:
                self._kernel_cached.pop(p, None)

    def kernel_cache_entries(self) -> int:
        with self._lock:
            return len(self._kernel_cached)
