"""What the tests look at: polling, MD5s, the bucket (objects, keys, multipart uploads),
a daemon (its status JSON, request counts, its journal, its death), and its Prometheus
endpoint.  One definition each: the test modules import them from here, never from one
another."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from s3fuse.app import statusfile as status

MiB = 1 << 20


# -- polling and processes ------------------------------------------------------------------
def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """``predicate()``'s first true value, asked every ``interval`` s (and once more at the
    deadline); AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def kill_daemon(m) -> int:
    """SIGKILL the daemon of mount ``m`` and wait until it is dead (gone or a zombie)."""
    pid = m.daemon_pid()
    assert pid, "daemon not found"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, "daemon death", 0.02)
    return pid


# -- bytes and the bucket -------------------------------------------------------------------
def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def bucket_md5(s3, bucket: str, key: str) -> Optional[tuple]:
    """(md5, size, metadata) of the object as the bucket has it now, or None if absent."""
    try:
        r = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return None
    h, n = hashlib.md5(), 0
    for chunk in r["Body"].iter_chunks(8 * MiB):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n, r["Metadata"]


def bucket_keys(s3, bucket: str, prefix: str = "") -> list:
    keys, token = [], None
    while True:
        kw = dict(Bucket=bucket, Prefix=prefix)
        if token:
            kw["ContinuationToken"] = token
        r = s3.list_objects_v2(**kw)
        keys += [o["Key"] for o in r.get("Contents", [])]
        if not r.get("IsTruncated"):
            return keys
        token = r["NextContinuationToken"]


def put_many(s3, bucket, items, threads=16):
    """items: [(key, body, metadata)] uploaded in parallel."""
    def put(item):
        key, body, meta = item
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta or {})
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, items))


def s3fs_meta(mode, uid=None, gid=None, mtime=None) -> dict:
    """The x-amz-meta-* headers s3fs-fuse gives an object of that mode/owner/mtime."""
    meta = {"mode": str(mode)}
    if uid is not None:
        meta["uid"] = str(uid)
    if gid is not None:
        meta["gid"] = str(gid)
    if mtime is not None:
        meta["mtime"] = str(mtime)
    return meta


def uploads_of(s3, bucket) -> list:
    """The multipart uploads in progress in ``bucket``."""
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def server_parts(s3, bucket, key) -> list:
    """Part numbers the server holds for the (latest) multipart upload of ``key``."""
    uploads = [u for u in uploads_of(s3, bucket) if u["Key"] == key]
    if not uploads:
        return []
    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=uploads[-1]["UploadId"]).get("Parts", [])
    return [p["PartNumber"] for p in parts]


# -- a daemon's status file and journal -----------------------------------------------------
# Request kinds that requests() always reports (0 when the daemon made none), so that a
# delta() of two snapshots has them too.
COUNTED = ("list_objects_v2", "head_object", "get_object", "put_object", "upload_part",
           "create_multipart_upload", "complete_multipart_upload", "copy_object")


def daemon_stats(m, after: float = None, timeout: float = 5.0) -> dict:
    """The daemon's status JSON, taken after ``after`` (default: now).  The daemon rewrites
    it every 0.5 s, so this waits up to ~0.6 s for a snapshot newer than the caller's
    last action."""
    after = time.time() if after is None else after
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = status.read(m.path)
        if entry and entry.get("updated", 0) > after + 0.01:
            return entry
        time.sleep(0.05)
    raise AssertionError(f"no fresh status for {m.path} within {timeout}s: {status.read(m.path)}")


def requests(m) -> dict:
    """The daemon's request counts per S3 operation, from a status snapshot taken now
    (every kind of ``COUNTED`` present)."""
    return {op: 0 for op in COUNTED} | daemon_stats(m, timeout=10)["requests"]


def delta(after: dict, before: dict) -> dict:
    """Requests made between two ``requests()`` (or status ``requests``) snapshots."""
    return {op: after.get(op, 0) - before.get(op, 0) for op in set(after) | set(before) | set(COUNTED)}


def journal_records(cache_dir: str) -> list:
    """The upload journal records (JSON) in ``cache_dir``/journal."""
    out = []
    jdir = os.path.join(cache_dir, "journal")
    for name in (os.listdir(jdir) if os.path.isdir(jdir) else []):
        if name.endswith(".json"):
            try:
                with open(os.path.join(jdir, name)) as f:
                    out.append(json.load(f))
            except (OSError, ValueError):
                pass
    return out


# -- the metrics endpoint -------------------------------------------------------------------
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict:
    """Prometheus text format -> {(name, frozenset(labels)): value}; checks every line
    is a comment or a well-formed sample and every sample's family has HELP and TYPE."""
    out, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample line: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or family in typed, f"{name} has no # TYPE line"
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        out[(name, labels)] = float(m.group(4))
    return out


def value(samples: dict, name: str, **labels) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_metrics(resp.read().decode())


def proc_status(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of process ``pid``, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


def settled_memory(m) -> tuple:
    """(pid, proc_status) of mount ``m``'s daemon after one listing and a second's rest."""
    pid = m.daemon_pid()
    assert pid, "no daemon process"
    os.listdir(m.path)
    time.sleep(1.0)
    return pid, proc_status(pid)
