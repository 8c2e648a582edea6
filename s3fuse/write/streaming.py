"""The close of a streamed upload (``close_stream``): a file written sequentially from
offset 0 has streamed its full parts while written (``openfile.OpenFile._after_write``);
at close its WRITING record becomes the CLOSED record of the upload."""
from __future__ import annotations

from .journal import CLOSED, Entry


def close_stream(f, md5, metadata: dict, headers: dict) -> Entry:
    """The CLOSED record of the stream of OpenFile ``f`` (its lock held), saved."""
    # close() is reached and f.lock is held: the staging file is final, so the
    # record turns CLOSED now, before waiting for the streamed parts - a crash while
    # they upload must resume them, not treat the file as never closed.  Parts
    # rewritten after they were streamed are waited for first: no MD5 of their old
    # content may reach a CLOSED record.
    entry, f._stream = f._stream, None
    begin_failed = f._stream_begin.exception() is not None
    f._wait_stream(only=set(f._redo_parts))
    last = f._plan.number_at(f.size - 1) if f.size else 1

    def close_record(e):       # under the uploader's bookkeeping lock (parts change under it)
        if begin_failed:
            e.upload_id, e.parts = None, {}
        for n in f._redo_parts:
            e.parts.pop(str(n), None)
        for n in [int(k) for k in e.parts if int(k) > last]:
            e.parts.pop(str(n))
        if f._plan.range_of(last)[1] != f.size or f.size == 0:
            e.parts.pop(str(last), None)    # the last part changed size
        e.state, e.size, e.md5, e.metadata, e.headers = CLOSED, f.size, md5, metadata, headers
        e.verify_md5 = md5 is not None and not e.released    # a released file is fsynced
    f.uploader.save_record(entry, close_record)
    f._wait_stream()
    with f.uploader.lock:
        for n in f._redo_parts:          # streamed parts that failed
            entry.parts.pop(str(n), None)
    f._redo_parts.clear()
    return entry
