"""Reads of one pinned object version through the block cache, with read-ahead.

``BlockFetcher`` (shared by the mount) turns missing blocks into ranged GETs of whole
spans of blocks in a bounded thread pool; a block is fetched once however many readers
want it (in-flight futures).  ``Reader`` (one per open handle) detects sequential access
and grows a read-ahead window of blocks fetched in parallel; a random read fetches only
the blocks it touches.  Memory: a reader keeps one block; the fetcher holds at most
``threads`` spans in flight.  Nothing else is kept in memory, whatever the object size.

Lock order: Reader._lock -> BlockFetcher._lock (both held only around bookkeeping,
never while waiting for S3).
"""
from __future__ import annotations

import logging
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .. import errors
from .valuefiles import CacheFile

log = logging.getLogger(__name__)


def pinned_get(client, obj: "PinnedObject", start: int, end: int, **kwargs) -> bytes:
    """GET [start, end) of the pinned version.  The version can be gone two ways: replaced
    (412 on If-Match) or deleted (404); either way the descriptor's object no longer exists
    on the server, and both are ``ObjectChanged`` (ESTALE), never ENOENT from read()."""
    try:
        return client.get_range(obj.key, start, end, etag=obj.etag, **kwargs)
    except errors.NotFound as exc:
        raise errors.ObjectChanged(f"{obj.key!r}: deleted on the server since open") from exc


@dataclass(frozen=True)
class PinnedObject:
    key: str
    etag: str
    size: int


class BlockFetcher:
    def __init__(self, client, cache, block_size: int, threads: int = 8, span_blocks: int = 8,
                 pool=None, window_cap: int = 1 << 30, fill_limit: int = 0):
        self.client = client
        self.fill_limit = fill_limit             # objects up to this size: filled after random reads
        # block buffers come from the pool (memory.BufferPool) when its buffers are blocks
        self._alloc = pool.get if pool is not None and pool.size == block_size else None
        self.window_cap = max(1, window_cap)     # read-ahead blocks per reader (the budget's share)
        self._readers: weakref.WeakSet = weakref.WeakSet()   # for reclaim_current
        self.cache = cache
        self.block_size = block_size
        self.span_blocks = span_blocks
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")
        self._lock = threading.Lock()
        self._inflight: dict = {}
        self.bytes_fetched = 0

    def close(self):
        self._pool.shutdown(wait=False, cancel_futures=True)

    def reclaim_current(self, nbytes: int) -> int:
        """A memory budget reclaimer: readers forget the block they keep for their next
        read (an idle open handle must not pin a buffer; a reader using it right now holds
        its own reference), about ``nbytes`` of them."""
        dropped = 0
        for reader in list(self._readers):
            if dropped >= nbytes:
                break
            dropped += reader.forget_current()
        return dropped

    def block(self, obj: PinnedObject, index: int) -> bytes:
        """Block ``index`` of ``obj``: from a fetch in flight, the disk cache, or a GET now."""
        with self._lock:
            future = self._inflight.get((obj.key, obj.etag, index))
        if future is None:
            data = self.cache.get(obj.key, obj.etag, index)
            if data is not None:
                return data
            future = self._schedule(obj, [index])[index]
        return future.result()

    def prefetch(self, obj: PinnedObject, first: int, last: int, skip=None):
        """Start fetching blocks first..last (inclusive) that are neither cached nor in flight,
        but those in ``skip`` (a range a reader handed to prefetch before: not asked again)."""
        last = min(last, self.last_index(obj))
        skip = skip or range(0)
        with self._lock:
            fresh = [i for i in range(first, last + 1)
                     if i not in skip and (obj.key, obj.etag, i) not in self._inflight]
        # In-flight blocks are skipped before asking the cache: a cache miss is an sqlite
        # query, and the read-ahead window is re-offered on every top-up.
        wanted = [i for i in fresh if not self.cache.contains(obj.key, obj.etag, i)]
        if wanted:
            self._schedule(obj, wanted)

    def fetch_piece(self, obj: PinnedObject, start: int, end: int) -> bytes:
        """GET [start, end) of ``obj`` now, bypassing the cache (a small random read)."""
        data = pinned_get(self.client, obj, start, end)
        with self._lock:
            self.bytes_fetched += len(data)
        return data

    def cached_part(self, obj: PinnedObject, index: int, lo: int, hi: int):
        """Bytes [lo, hi) of block ``index`` if it is cached and not in flight, else None: a
        random read copies only what it returns from the cache file, not the whole block."""
        if self.in_flight(obj, index):
            return None
        return self.cache.get(obj.key, obj.etag, index, part=(lo, hi))

    def open_block(self, obj: PinnedObject, index: int):
        """Block ``index`` unread (``BlockCache.open_block``: a buffer, an opened
        ``CacheFile``, or None), None too while a fetch of it is in flight."""
        if self.in_flight(obj, index):
            return None
        return self.cache.open_block(obj.key, obj.etag, index)

    def in_flight(self, obj: PinnedObject, index: int) -> bool:
        with self._lock:
            return (obj.key, obj.etag, index) in self._inflight

    def last_index(self, obj: PinnedObject) -> int:
        return max(0, (obj.size - 1) // self.block_size)

    def _schedule(self, obj: PinnedObject, indexes) -> dict:
        """Create futures for ``indexes`` not yet in flight, grouped into contiguous spans."""
        futures, new = {}, []
        with self._lock:
            for i in indexes:
                f = self._inflight.get((obj.key, obj.etag, i))
                if f is None:
                    f = Future()
                    self._inflight[(obj.key, obj.etag, i)] = f
                    new.append(i)
                futures[i] = f
        # A span that finished between the caller's cache check and the claim above has put
        # its blocks in the cache before leaving _inflight: serve those from the cache
        # instead of fetching them a second time.
        missing = []
        for i in new:
            data = self.cache.get(obj.key, obj.etag, i) if self.cache.contains(obj.key, obj.etag, i) else None
            if data is None:
                missing.append(i)
            else:
                self._resolve(obj, i, {i: futures[i]}, result=data)
        span: list = []
        for i in missing:
            if span and (i != span[-1] + 1 or len(span) >= self.span_blocks):
                self._submit(obj, span, futures)
                span = []
            span.append(i)
        if span:
            self._submit(obj, span, futures)
        return futures

    def _submit(self, obj, span, futures):
        self._pool.submit(self._fetch_span, obj, span[0], span[-1], {i: futures[i] for i in span})

    def _fetch_span(self, obj: PinnedObject, first: int, last: int, futures: dict):
        bs = self.block_size

        def sink(offset: int, chunk: bytes):
            index = offset // bs
            try:
                self.cache.put(obj.key, obj.etag, index, chunk)
            except Exception:   # a full or broken cache disk must not fail the read
                log.warning("block cache write failed for %r block %d", obj.key, index, exc_info=True)
            self._resolve(obj, index, futures, result=chunk)

        try:
            pinned_get(self.client, obj, first * bs, min(obj.size, (last + 1) * bs), chunk_size=bs, sink=sink,
                       alloc=self._alloc)
            with self._lock:
                self.bytes_fetched += min(obj.size, (last + 1) * bs) - first * bs
        except BaseException as exc:
            for index in list(futures):
                self._resolve(obj, index, futures, error=exc)
        else:
            for index in list(futures):   # a short body: never leave a waiter hanging
                self._resolve(obj, index, futures, error=EOFError(f"{obj.key!r}: block {index} missing"))

    def _resolve(self, obj, index, futures, result=None, error=None):
        future = futures.pop(index, None)
        if future is None:
            return
        with self._lock:
            self._inflight.pop((obj.key, obj.etag, index), None)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class Reader:
    """Sequential-aware reads of one pinned object for one open handle."""

    def __init__(self, fetcher: BlockFetcher, obj: PinnedObject, max_readahead_blocks: int = 64):
        self.fetcher = fetcher
        self.obj = obj
        self.max_window = max(1, min(max_readahead_blocks, fetcher.window_cap))
        self._lock = threading.Lock()
        self._last_block = -2
        self._window = 0
        self._ahead_upto = -1      # highest block index already handed to prefetch
        self._current = (-1, b"")  # the last block served, kept for the next small read
        self._file = (-1, None)    # the cache file of the last block served unread (regions)
        self._touched: dict = {}   # block index -> random reads seen (small-read policy)
        self._random = 0           # random reads of this handle (the whole-object fill)
        self._fill_next = -1       # the next block the fill hands to prefetch (-1: no fill)
        fetcher._readers.add(self)

    def forget_current(self) -> int:
        index, data = self._current
        self._current = (-1, b"")
        self._file = (-1, None)
        return len(data) if index >= 0 else 0

    def read(self, offset: int, size: int) -> bytes:
        """The bytes at [offset, offset + size): one buffer (a block, or a view of one), or
        the pieces joined when the read spans blocks."""
        pieces = self.read_pieces(offset, size)
        if not pieces:
            return b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_pieces(self, offset: int, size: int, regions: bool = False) -> list:
        """The bytes at [offset, offset + size) as a list of buffers in order, one per block
        touched (blocks or views of them, never copies): the FUSE adapter copies each into
        libfuse's buffer.  The kernel's 1 MiB requests start half a block in, so most
        sequential reads span two blocks, and joining them would copy 1 MiB under the GIL.
        With ``regions``, a block cached on disk comes as a ``FileRegion`` of its file, not
        read at all: libfuse reads it from the file itself (fuse/bufvec.py)."""
        obj = self.obj
        if offset >= obj.size or size <= 0:
            return []
        end = min(offset + size, obj.size)
        bs = self.fetcher.block_size
        first, last = offset // bs, (end - 1) // bs
        fill = False
        with self._lock:
            # The kernel sends read-ahead requests concurrently, so they arrive slightly out
            # of order: anything inside the window already handed out still counts as
            # sequential; a jump elsewhere is random.
            sequential = (offset == 0) or (
                self._last_block - 1 <= first <= max(self._last_block, self._ahead_upto) + 1)
            self._last_block = max(self._last_block, last) if sequential else last
            if sequential:
                self._window = min(self.max_window, max(2, self._window * 2))
                ahead_from = max(last + 1, self._ahead_upto + 1)
                ahead_to = last + self._window
                if self._ahead_upto - last > self._window // 2:
                    # Top the window up in batches of at least half a window: topping a full
                    # window up by one block per read would make every GET a single block.
                    ahead_to = ahead_from - 1
                if ahead_to >= ahead_from:
                    self._ahead_upto = ahead_to
            else:
                self._window = 0
                self._ahead_upto = last
                ahead_from, ahead_to = 1, 0
                self._random += 1
                if self._random == self.RANDOM_FILL and obj.size <= self.fetcher.fill_limit:
                    self._fill_next = 0
                # the next spans only once the last ones are in: a queue of fill spans
                # growing faster than the reads would make every read wait behind all of it
                fill = 0 <= self._fill_next <= self.fetcher.last_index(obj) and not (
                    self._fill_next and self.fetcher.in_flight(obj, self._fill_next - 1))
                if fill:
                    fill_from = self._fill_next
                    self._fill_next += self.FILL_SPANS * self.fetcher.span_blocks
                    fill_to = self._fill_next - 1
        if ahead_to >= ahead_from:
            # The blocks this read needs go first, then the read-ahead window; the blocks
            # between were handed out before (each check may be an sqlite query).
            self.fetcher.prefetch(obj, first, ahead_to, skip=range(last + 1, ahead_from))
        elif (not sequential and first == last and end - offset <= self.SMALL_READ
              and self.fetcher.block_size >= 4 * self.PIECE_ALIGN):
            piece = self._small_random_read(first, offset, end)
            if piece is not None:
                if fill:
                    self.fetcher.prefetch(obj, fill_from, fill_to)
                return [piece]
        pieces = []
        for index in range(first, last + 1):
            lo = max(offset, index * bs) - index * bs
            hi = min(end, (index + 1) * bs) - index * bs
            if regions and (self._current[0] != index or hi - lo >= self.REGION_MIN):
                piece = self._unread(index, lo, hi)
                if piece is not None:
                    pieces.append(piece)
                    continue
            elif not sequential and hi - lo < bs and self._current[0] != index:
                part = self.fetcher.cached_part(obj, index, lo, hi)
                if part is not None:
                    pieces.append(part)
                    continue
            data = self._block(index)
            # a view, not a copy: blocks fetched by transport GETs are bytearrays
            pieces.append(memoryview(data)[lo:hi] if (lo, hi) != (0, len(data)) else data)
        if fill:
            # Random reads all over an object that fits the cache well (an index, a database
            # file, a data loader's shuffled samples): each one, once this read has its bytes,
            # fetches the next FILL_SPANS spans of the whole object in the background (when
            # the last ones are in), so a read whose block is not cached yet waits behind
            # FILL_SPANS spans at most, never the whole object.  First reads of a block do not
            # wait at all: they GET their own 64 KiB on the calling thread.
            self.fetcher.prefetch(obj, fill_from, fill_to)
        return pieces

    SMALL_READ = 128 << 10
    RANDOM_FILL = 8            # the random read that starts fetching a small enough object whole
    FILL_SPANS = 8             # spans of it each later random read starts (when the last ones are in):
    # as many as read_threads' default, so the fill keeps every fetch thread busy (bench
    # random_read_4KiB_x200 at +20 ms: 2 spans 1.39 s, 4 spans 0.94 s, 8 spans 0.82-0.87 s)
    PIECE_ALIGN = 64 << 10
    REGION_MIN = 64 << 10      # a piece of the block in memory this long still comes from its file

    def _small_random_read(self, index: int, offset: int, end: int):
        """A small random read of a block not cached: fetch only the 64 KiB-aligned range
        it needs (a whole-block GET costs several times a small one).  The second random
        read of the same block fetches and caches the block instead."""
        obj = self.obj
        if self._current[0] == index or self.fetcher.cache.contains(obj.key, obj.etag, index) \
                or self.fetcher.in_flight(obj, index):
            return None
        with self._lock:
            touches = self._touched.get(index, 0) + 1
            self._touched[index] = touches
            if len(self._touched) > 4096:
                self._touched.clear()
        if touches > 1:
            return None
        lo = offset - offset % self.PIECE_ALIGN
        hi = min(obj.size, -(-end // self.PIECE_ALIGN) * self.PIECE_ALIGN)
        data = self.fetcher.fetch_piece(obj, lo, hi)
        return data[offset - lo:end - lo]

    def _unread(self, index: int, lo: int, hi: int):
        """Bytes [lo, hi) of cached block ``index`` unread: a region of its cache file (the
        file is kept for the next read of the same block), or a view of it in memory; None
        if it is not cached."""
        held_index, held = self._file
        if held_index != index:
            held = self.fetcher.open_block(self.obj, index)
            if held is None:
                return None
            if not isinstance(held, CacheFile):
                return memoryview(held)[lo:hi] if (lo, hi) != (0, len(held)) else held
            self._file = (index, held)
        if hi > held.size:
            return None
        return held.region(lo, hi)

    def _block(self, index: int) -> bytes:
        cur_index, cur_data = self._current
        if cur_index == index:
            return cur_data
        data = self.fetcher.block(self.obj, index)
        self._current = (index, data)
        return data
