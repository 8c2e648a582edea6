"""A set of half-open byte ranges [start, end), kept sorted and merged."""
from __future__ import annotations

import bisect


class RangeSet:
    def __init__(self, ranges=()):
        self._r: list = []
        for s, e in ranges:
            self.add(s, e)

    def __iter__(self):
        return iter(list(self._r))

    def __bool__(self):
        return bool(self._r)

    def __repr__(self):
        return f"RangeSet({self._r})"

    def add(self, start: int, end: int):
        if end <= start:
            return
        r = self._r
        i = bisect.bisect_left(r, (start, start))
        if i > 0 and r[i - 1][1] >= start:
            i -= 1
        j = i
        while j < len(r) and r[j][0] <= end:
            start = min(start, r[j][0])
            end = max(end, r[j][1])
            j += 1
        r[i:j] = [(start, end)]

    def clip(self, limit: int):
        """Keep only what lies below ``limit``."""
        self._r = [(s, min(e, limit)) for s, e in self._r if s < limit]

    def missing(self, start: int, end: int) -> list:
        """The sub-ranges of [start, end) not in the set."""
        out, pos = [], start
        for s, e in self._r:
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                out.append((pos, min(s, end)))
            pos = max(pos, e)
            if pos >= end:
                break
        if pos < end:
            out.append((pos, end))
        return out

    def contiguous_from_zero(self) -> int:
        return self._r[0][1] if self._r and self._r[0][0] == 0 else 0
