"""Multipart part plan: which byte range each part number covers.

S3 allows 5 MiB..5 GiB per part (the last may be smaller) and at most 10,000 parts.
Parts 1..1000 have the base size, parts 1001..2000 twice that, and so on (capped at
5 GiB), so the plan is fixed by the base size alone - a sequential writer can upload
parts before the final size is known.  The last thousand parts (9001..10000) double
twice: with plain doubling a 5 MiB base reaches only 1023 x 5000 MiB = 4.88 TiB, short
of S3's 5 TiB object limit; with the extra doubling it reaches 7.3 TiB (an 8 MiB base
~9 TiB).  Parts need not be equal in S3, only >= 5 MiB.
"""
from __future__ import annotations

import bisect
import functools

from ..s3.objects import MAX_PART, MAX_PARTS, MIN_PART
GROUP = 1000


class PartPlan:
    @staticmethod
    @functools.lru_cache(maxsize=16)
    def for_base(base: int) -> "PartPlan":
        """Plans are immutable: one per base size (building one walks 10,000 parts)."""
        return PartPlan(base)

    def __init__(self, base: int):
        self.base = max(MIN_PART, min(base, MAX_PART))
        self._ends = []          # _ends[i] = end offset of part i+1
        total = 0
        for n in range(1, MAX_PARTS + 1):
            total += self.size_of(n)
            self._ends.append(total)
        self.capacity = total

    def size_of(self, number: int) -> int:
        shift = (number - 1) // GROUP
        if shift == MAX_PARTS // GROUP - 1:
            shift += 1      # the last group: see the module docstring
        return min(MAX_PART, self.base << shift)

    def range_of(self, number: int):
        end = self._ends[number - 1]
        return end - self.size_of(number), end

    def number_at(self, offset: int) -> int:
        """Part number holding byte ``offset``."""
        return bisect.bisect_right(self._ends, offset) + 1

    def parts(self, size: int) -> list:
        """[(number, start, end)] covering ``size`` bytes (one empty part for size 0)."""
        if size > self.capacity:
            raise ValueError(f"{size} bytes exceed {MAX_PARTS} parts")
        if size == 0:
            return [(1, 0, 0)]
        last = self.number_at(size - 1)
        out = []
        for n in range(1, last + 1):
            start, end = self.range_of(n)
            out.append((n, start, min(end, size)))
        return out
