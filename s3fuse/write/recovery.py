"""After a crash: decide what each leftover journal record and staging file becomes.

- CLOSED record: close()/fsync() accepted the data -> resume the upload (ListParts, keep
  parts whose ETag equals the recorded one, send the rest, complete).  A record marked
  ``verify_md5`` (its staging file was not fsynced) is resumed only if the staging file
  still has the recorded whole-file MD5: after a power loss it may not, and then it goes
  to ``recovery/`` and its upload is aborted - never a damaged object in the bucket.
- WRITING record: the writer never reached close() -> never uploaded over the existing
  object; its multipart upload is aborted and its staging file moved to ``recovery/``.
- staging file no record points to (crash before any upload began) -> ``recovery/``.
- ``<id>.json.tmp`` without ``<id>.json`` (the crash cut the record's first save): a
  WRITING record (its multipart upload, if it has one, is aborted).
- CLOSED record of an edit in place whose old version is gone from the server: it can
  never complete (``abandon``): the record goes, the staging file to ``recovery/``.
- a pending CLOSED record whose key is deleted or replaced (unlink, rename over it,
  symlink, mknod, link) is cancelled (``cancel``): never resumed over what replaced it.
- several CLOSED records for one key (uploads that failed, then a later close of the
  same path): only the newest is resumed - resuming them in any other order would let an
  older version overwrite a newer one; the older staging files go to ``recovery/``.
Recovered files are named ``<time>-<key with / as %2F>`` and logged.
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.parse

from .. import errors, metrics
from .journal import CLOSED, WRITING, Entry, Journal
from .uploader import abort_unrecorded, file_md5

log = logging.getLogger(__name__)


def _recovery_path(recovery_dir: str, key: str) -> str:
    """A free name in ``recovery_dir`` for a file of ``key``."""
    os.makedirs(recovery_dir, mode=0o700, exist_ok=True)
    # a key from an older journal may hold surrogates (a name that was not UTF-8): quote its bytes
    name = time.strftime("%Y%m%dT%H%M%S-") + urllib.parse.quote(key.encode("utf-8", "surrogateescape"),
                                                                safe="")[:200]
    target = os.path.join(recovery_dir, name)
    n = 1
    while os.path.exists(target):
        target = f"{os.path.join(recovery_dir, name)}.{n}"
        n += 1
    return target


def _recover_file(staging: str, key: str, recovery_dir: str,
                  why: str = "writer never closed it") -> str:
    target = _recovery_path(recovery_dir, key)
    os.replace(staging, target)
    log.warning("unfinished write of %r (%s) kept in %s", key, why, target)
    return target


def _released_note(entry) -> str:
    """What a recovered copy lacks: ranges released from the full cache disk (release.py)."""
    if not getattr(entry, "released", None):
        return ""
    spans = ", ".join(f"{start}-{end}" for start, end in entry.released[:8])
    more = f" and {len(entry.released) - 8} more" if len(entry.released) > 8 else ""
    return (f"; bytes {spans}{more} had been uploaded and released from the full cache disk: "
            f"zeros in this copy")


def sort_out(journal: Journal, staging_dir: str, recovery_dir: str):
    """Local part of recovery (no network).  Returns (closed_entries, writing_entries);
    the staging files of WRITING entries and orphans are already moved to recovery."""
    entries = journal.entries()
    _drop_unreadable_records(journal, {e.id for e in entries})
    entries += _interrupted_saves(journal, {e.id for e in entries})
    closed = [e for e in entries if e.state == CLOSED and os.path.exists(e.staging)]
    writing = [e for e in entries if e.state == WRITING]
    closed.sort(key=lambda e: e.created)
    newest = {e.key: e for e in closed}
    for e in [e for e in closed if newest[e.key] is not e]:
        closed.remove(e)
        if e.staging != newest[e.key].staging:
            _recover_file(e.staging, e.key, recovery_dir, "superseded by a later close of the same path")
        writing.append(e)        # its upload is aborted and its record removed like a WRITING one
    # after the newest is chosen: a damaged newest must not let an older version win
    for e in [e for e in closed if e.verify_md5 and e.md5]:
        if not _staging_intact(e):
            closed.remove(e)
            _recover_file(e.staging, e.key, recovery_dir,
                          "its staging file no longer has the MD5 recorded at close (power loss?)")
            writing.append(e)     # its upload is aborted and its record removed
    for e in entries:
        if e.state == CLOSED and not os.path.exists(e.staging):
            log.error("journal record %s for %r lost its staging file; dropping it", e.id, e.key)
            journal.remove(e.id)
    referenced = {os.path.basename(e.staging) for e in closed}
    for e in writing:
        if os.path.exists(e.staging) and os.path.basename(e.staging) not in referenced:
            _recover_file(e.staging, e.key, recovery_dir, "writer never closed it" + _released_note(e))
            referenced.add(os.path.basename(e.staging))
    for name in os.listdir(staging_dir):
        if name not in referenced:
            path = os.path.join(staging_dir, name)
            if os.path.getsize(path) == 0:
                os.unlink(path)
            else:
                _recover_file(path, f"unknown/{name}", recovery_dir)
    return closed, writing


def _staging_intact(entry) -> bool:
    try:
        return os.path.getsize(entry.staging) == entry.size and file_md5(entry.staging, entry.size) == entry.md5
    except OSError:
        return False


def _drop_unreadable_records(journal: Journal, known: set):
    """A small file's record is written in place without fsync (Journal.save): a power
    loss may leave it cut.  Its close() never returned success, so nothing is resumed;
    the record goes, and its staging file is then an orphan kept in ``recovery/``."""
    for name in os.listdir(journal.dir):
        if name.endswith(".json") and not name.startswith("rename-") and name[:-5] not in known:
            log.error("journal record %s cannot be read; removing it (its staging file, if any, "
                      "goes to recovery/)", name)
            journal.remove(name[:-5], durable=False)


def _interrupted_saves(journal: Journal, known: set) -> list:
    """Records whose very first save was cut by the crash: only ``<id>.json.tmp`` exists.
    Their close() never returned, so they are never resumed; but such a record may hold
    the id of a multipart upload created just before (begin of a streamed write): it is
    saved as a WRITING record, so that its upload is aborted (not left on the server) and
    its staging file recovered under its real name.  Unreadable leftovers are removed."""
    found = []
    for name in os.listdir(journal.dir):
        if not name.endswith(".json.tmp") or name.startswith("rename-"):
            continue
        path = os.path.join(journal.dir, name)
        entry_id = name[:-len(".json.tmp")]
        entry = None
        if entry_id not in known:
            try:
                with open(path) as f:
                    entry = Entry(**json.load(f))
            except (OSError, ValueError, TypeError):
                entry = None
        if entry is not None and entry.id == entry_id:
            entry.state = WRITING
            journal.save(entry)           # replaces the .tmp by a complete record
            log.warning("journal record %s for %r was being written at the crash; its upload "
                        "is abandoned", entry.id, entry.key)
            found.append(entry)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return found


def abort_writing(client, journal: Journal, entry):
    try:
        abort_unrecorded(client, entry)
    except Exception:
        log.warning("could not look for an unrecorded upload of %r", entry.key, exc_info=True)
        return
    if entry.upload_id:
        try:
            client.abort_multipart(entry.key, entry.upload_id)
        except Exception:
            log.warning("could not abort upload %s of %r", entry.upload_id, entry.key, exc_info=True)
            return
    journal.remove(entry.id)


def supersede(client, journal: Journal, entry, recovery_dir: str):
    """A later close of ``entry.key`` succeeded: this older pending upload must never be
    resumed over it.  Its staging file goes to ``recovery/`` first (so even a crash right
    here cannot resume it), then its multipart upload is aborted and its record removed."""
    if os.path.exists(entry.staging):
        _recover_file(entry.staging, entry.key, recovery_dir, "superseded by a later close of the same path")
    if entry.upload_id:
        try:
            client.abort_multipart(entry.key, entry.upload_id)
        except Exception:
            log.warning("could not abort upload %s of %r", entry.upload_id, entry.key, exc_info=True)
    journal.remove(entry.id)


def cancel(client, journal: Journal, entry):
    """The key of pending upload ``entry`` was deleted or taken by another object: the
    upload must never happen.  Its record goes first (a crash right after cannot resume
    it), then its multipart upload is aborted and its staging file removed."""
    journal.remove(entry.id)
    if entry.upload_id:
        try:
            client.abort_multipart(entry.key, entry.upload_id)
        except Exception:
            log.warning("could not abort upload %s of %r", entry.upload_id, entry.key, exc_info=True)
    try:
        os.unlink(entry.staging)
    except FileNotFoundError:
        pass
    log.warning("pending upload of %r cancelled: the key was deleted or replaced meanwhile", entry.key)


def abandon(journal: Journal, entry, why: str):
    """An upload that can never complete (``errors.NeverCompletes``: an edit in place whose
    old version is gone, an upload whose released parts are gone): its record goes, its
    staging file (the bytes written) is kept in ``recovery/`` beside the journal, and the
    reason is logged."""
    journal.remove(entry.id)
    log.error("upload of %r abandoned: %s", entry.key, why)
    if os.path.exists(entry.staging):
        _recover_file(entry.staging, entry.key, os.path.join(os.path.dirname(journal.dir), "recovery"),
                      "its upload was abandoned; the bytes written are at their offsets" + _released_note(entry))


def keep_written(journal: Journal, staging: str, key: str, why: str) -> str:
    """A file whose edit can never be uploaded (its old version changed on the server
    before the bytes it lacks were staged): a hard link to its staging file (the bytes
    written, at their offsets; the file stays open) is kept in ``recovery/``."""
    target = _recovery_path(os.path.join(os.path.dirname(journal.dir), "recovery"), key)
    os.link(staging, target)
    log.error("upload of %r abandoned: %s; the bytes written are kept in %s", key, why, target)
    return target


def resume(uploader, journal: Journal, entry) -> str:
    """Finish one CLOSED upload; on success the record and staging file are removed."""
    if abort_unrecorded(uploader.client, entry):
        journal.save(entry)     # ``creating`` cleared: a new upload is begun below
    try:
        etag = uploader.upload(entry, verify_server_parts=True)
    except errors.NeverCompletes as exc:
        abandon(journal, entry, str(exc))
        raise
    journal.remove(entry.id)
    try:
        os.unlink(entry.staging)
    except FileNotFoundError:
        pass
    metrics.UPLOADS_RESUMED.inc()
    log.warning("resumed upload of %r completed (%d bytes): it is in the bucket", entry.key, entry.size)
    return etag
