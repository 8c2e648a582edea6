"""One open directory's entries handed to libfuse by offset.

libfuse's high-level readdir buffers the whole directory when entries carry no offset:
the first entry of a 100,000-object directory waited for the last LIST page.  With an
offset on every entry each READDIR takes what fits in its buffer and the next one goes
on from there, so entries reach the kernel page by page as S3 lists them.

Invariants
- Entry i (0-based, "." and ".." first) carries offset i + 1; a READDIR at offset k
  serves entries k, k + 1, ...
- Offset 0 (the first READDIR, rewinddir) lists the directory again (POSIX: rewinddir
  shows entries added since).  An offset before the kept window (seekdir back) also
  lists again, skipping to it.  An error while listing drops the listing: the next
  READDIR lists again from its offset instead of ending the directory early.
- Only the entries from the last READDIR's offset on are kept (the one that did not fit,
  the ones served since: the kernel may ask again from inside them), never the
  directory, and kept as listed (a name and a reference to its cached attributes);
  ``render`` makes the stat dict only when an entry is handed out.

Lock: ``_lock`` (a leaf) serialises the READDIRs of one handle; the kernel sends them
one at a time already.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterator, Optional

_END = object()


class DirStream:
    def __init__(self, open_entries: Callable[[], Iterator], render: Callable = lambda entry: entry):
        self._open = open_entries          # () -> iterator of (name, entry)
        self._render = render              # entry -> what ``take`` gets
        self._lock = threading.Lock()
        self._entries: Optional[Iterator] = None
        self._base = 0                     # offset of _window[0]
        self._window: list = []

    def serve(self, offset: int, take: Callable[[str, dict, int], bool]):
        """Hand entries from ``offset`` on to ``take(name, attrs, next_offset)`` until it
        answers False (the READDIR buffer is full) or the directory ends."""
        with self._lock:
            try:
                self._serve(offset, take)
            except BaseException:
                self._drop()
                raise

    def _serve(self, offset: int, take):
        if self._entries is None or offset == 0 or offset < self._base:
            self._drop()
            self._entries = self._open()
        drop = min(offset - self._base, len(self._window))
        del self._window[:drop]
        self._base += drop
        while self._base < offset:             # seekdir past what is kept
            if next(self._entries, _END) is _END:
                return
            self._base += 1
        i = 0
        while True:
            if i < len(self._window):
                name, entry = self._window[i]
            else:
                item = next(self._entries, _END)
                if item is _END:
                    return
                self._window.append(item)
                name, entry = item
            if not take(name, self._render(entry), self._base + i + 1):
                return
            i += 1

    def _drop(self):
        entries, self._entries = self._entries, None
        self._base, self._window = 0, []
        close = getattr(entries, "close", None)
        if close is not None:
            close()

    def close(self):
        with self._lock:
            self._drop()
