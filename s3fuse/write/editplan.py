"""The part plan of an edit in place: which parts of the new version are copied from the
old one on the server (UploadPartCopy) and which are uploaded from the staging file.

An existing object opened for writing keeps only what was written in its staging file
(``OpenFile.present``); the rest of the new version is the old version's bytes at the
same offsets (up to ``base_end``: a truncate cuts them).  ``edit_plan`` covers
[0, size) with parts that S3 accepts:

- every part but the last is at least 5 MiB, none is over 5 GiB, at most 10,000 parts;
- a clean stretch (bytes of the old version) shorter than the minimum between two
  written ones is uploaded with them (its bytes are fetched into staging); a written
  stretch shorter than the minimum takes the bytes it lacks from its clean neighbour
  (the right one first, the left one if the right one would fall below the minimum,
  else the whole right one); the last part may be of any size, so an append costs only
  what was appended;
- clean stretches become copy parts of at most ``copy_part`` bytes, written ones upload
  parts of about ``upload_part`` bytes (never below the minimum but for the last part);
- over 10,000 parts (a huge object with edits everywhere, or small copy parts): the
  minimum and both part sizes double until the plan fits.

The result is [(number, start, end, copy)], or None when under 5 MiB would be copied
(the edit rewrote about everything the old version had): the ordinary upload then costs
at most 5 MiB more and keeps the whole-object MD5 header that an edit in place loses.
"""
from __future__ import annotations

from ..s3.objects import MAX_PART, MAX_PARTS, MIN_PART


def _segments(size: int, base_end: int, present) -> list:
    """[start, end, dirty] covering [0, size): dirty = written (or past the old version)."""
    clean_end = min(base_end, size)
    segs: list = []
    pos = 0
    for lo, hi in present.missing(0, clean_end):
        if lo > pos:
            segs.append([pos, lo, True])
        segs.append([lo, hi, False])
        pos = hi
    if pos < size:
        segs.append([pos, size, True])
    return segs


def _merge(segs: list) -> list:
    out: list = []
    for s in segs:
        if s[1] <= s[0]:
            continue
        if out and out[-1][2] == s[2]:
            out[-1][1] = s[1]
        else:
            out.append(list(s))
    return out


def _shape(segs: list, minimum: int) -> list:
    """Segments whose every member but the last is at least ``minimum`` bytes long (one
    pass: a huge object may have many)."""
    # clean stretches too short to be a part (and not last) are uploaded with their neighbours
    segs = _merge([[s, e, d or (e - s < minimum and i < len(segs) - 1)] for i, (s, e, d) in enumerate(segs)])
    out: list = []
    j = 0
    while j < len(segs):
        s, e, dirty = segs[j]
        if not dirty:
            out.append([s, e, False])
            j += 1
            continue
        while j < len(segs) - 1 and e - s < minimum:
            nxt = segs[j + 1]                  # clean: at least ``minimum``, or the last segment
            need = minimum - (e - s)
            room = nxt[1] - nxt[0] - need
            prev = out[-1] if out else None    # clean, if any
            if room >= minimum or (j + 1 == len(segs) - 1 and room > 0):
                e += need
                nxt[0] += need
            elif prev is not None and prev[1] - prev[0] - need >= minimum:
                s -= need
                prev[1] -= need
            else:                              # the whole right neighbour goes up with it
                e = nxt[1]
                j += 1
                if j + 1 < len(segs):          # and the written stretch after it
                    j += 1
                    e = segs[j][1]
        out.append([s, e, True])
        j += 1
    return out


def _split(start: int, end: int, pieces: int) -> list:
    step, extra = divmod(end - start, pieces)
    out, pos = [], start
    for k in range(pieces):
        nxt = pos + step + (1 if k < extra else 0)
        out.append((pos, nxt))
        pos = nxt
    return out


def edit_plan(size: int, base_end: int, present, upload_part: int = 8 << 20,
              copy_part: int = 1 << 30, minimum: int = MIN_PART):
    """[(number, start, end, copy)] for a new version of ``size`` bytes whose bytes outside
    ``present`` (a RangeSet) and below ``base_end`` are the old version's; None if no part
    would be copied."""
    if size <= 0 or base_end <= 0:
        return None
    raw = _segments(size, base_end, present)
    while True:
        # a piece is at least ``minimum`` and below twice it: ``minimum`` stays <= 2.5 GiB
        upload_part = max(minimum, min(upload_part, MAX_PART // 2))
        copy_part = max(minimum, min(copy_part, MAX_PART))
        plan = []
        for s, e, dirty in _shape([list(x) for x in raw], minimum):
            n = e - s
            wanted = round(n / upload_part) if dirty else -(-n // copy_part)
            pieces = max(1, min(wanted, n // minimum))
            plan += [(a, b, not dirty) for a, b in _split(s, e, pieces)]
        if len(plan) <= MAX_PARTS or minimum >= MAX_PART // 2:
            break
        minimum, upload_part, copy_part = min(minimum * 2, MAX_PART // 2), upload_part * 2, copy_part * 2
    if sum(b - a for a, b, copy in plan if copy) < MIN_PART:
        return None         # copying under 5 MiB saves less than the whole-object MD5 is worth
    return [(n, s, e, copy) for n, (s, e, copy) in enumerate(plan, start=1)]
