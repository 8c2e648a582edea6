"""The unit tests' fake S3 client: an in-memory bucket with ``s3.ObjectClient``'s API
(``test_fakes_match_object_client`` keeps the two in step).

It applies S3's own checks where the code under test relies on them (Content-MD5, the 5
MiB minimum of all parts but the last, part ETags in Complete, If-Match on GET), records
every call as ``(method, detail)`` in ``calls``, counts requests like the real client
(``request_counts``), and injects failures: ``fail[method]`` is a list of exceptions the
next calls raise, ``fail_when(method, detail)`` may return one, ``block(method, detail)``
may wait (threading tests), ``fail_gets`` fails that many GETs, ``get_delay`` slows them.
"""
from __future__ import annotations

import base64
import hashlib
import threading
import time

from s3fuse import errors
from s3fuse.s3.objects import ListPage, ObjectInfo, Part, error_kind
from s3fuse.s3.versions import ObjectVersion, VersionPage

from .probes import md5  # noqa: F401  (the unit tests import it from here)

MIN_PART = 5 << 20
MTIME = 1_700_000_000.0


def multipart_etag(part_md5s: list) -> str:
    joined = b"".join(bytes.fromhex(m) for m in part_md5s)
    return f"{hashlib.md5(joined).hexdigest()}-{len(part_md5s)}"


def content_etag(data: bytes, metadata: dict) -> str:
    """A seeded object's ETag: a metadata-only change gives a new one (as a CopyObject does)."""
    return hashlib.md5(data + repr(sorted(metadata.items())).encode()).hexdigest()


# ObjectClient method -> the S3 operation it counts in request_counts (as ``s3fuse status``)
S3_OPERATION = {"list_page": "list_objects_v2", "head": "head_object", "get_range": "get_object",
                "put": "put_object", "copy": "copy_object", "delete": "delete_object",
                "delete_many": "delete_objects", "delete_batch": "delete_objects", "create_multipart": "create_multipart_upload",
                "upload_part": "upload_part", "upload_part_copy": "upload_part_copy",
                "complete_multipart": "complete_multipart_upload", "abort_multipart": "abort_multipart_upload",
                "list_parts": "list_parts", "list_uploads": "list_multipart_uploads",
                "list_versions_page": "list_object_versions", "head_version": "head_object",
                "get_version_range": "get_object", "copy_version": "copy_object"}


class FakeS3:
    # ObjectClient.signs_bodies: True stands for plain http, where parts go without Content-MD5
    signs_bodies = False

    def __init__(self, bucket="fake", page_size=1000, get_delay=0.0):
        self.bucket = bucket
        self.objects: dict = {}          # key -> (data, metadata, etag)
        self.mtimes: dict = {}           # key -> LastModified (seconds)
        self.headers: dict = {}          # key -> content headers (objects.CONTENT_HEADERS)
        self.uploads: dict = {}          # upload id -> {"key", "metadata", "parts": {n: (data, etag)}, "initiated"}
        self.page_size = page_size
        self.get_delay = get_delay
        self.calls: list = []            # (method, detail)
        self.request_counts: dict = {}
        self.error_count = 0
        self.fail: dict = {}
        self.fail_when = None
        self.block = None
        self.fail_gets = 0
        self.delete_errors: dict = {}    # key -> [S3 error code, ...] DeleteObjects answers for it
        self.part_etags = "md5"          # "kms": part ETags are not MD5s (SSE-KMS, SSE-C on AWS)
        self.active_gets = 0
        self.max_active_gets = 0
        self._lock = threading.Lock()
        self._ids = 0
        self.versioning_status = ""      # "Enabled": every seed/put/copy/delete adds a version
        self.history: dict = {}          # key -> [ObjectVersion, newest first]
        self.version_data: dict = {}     # version id -> (data, metadata, etag)

    # -- setup and inspection ----------------------------------------------------------------
    def seed(self, key, data=b"", metadata=None, mtime=MTIME, etag=None) -> str:
        meta = dict(metadata or {})
        self.objects[key] = (data, meta, etag or content_etag(data, meta))
        self.mtimes[key] = mtime
        if self.versioning_status == "Enabled":
            self._add_version(key, mtime, self.objects[key])
        return self.objects[key][2]

    def _add_version(self, key, mtime, content=None):
        self._ids += 1
        version_id = f"v{self._ids}"
        for v in self.history.get(key, ()):
            v.latest = False
        entry = ObjectVersion(key=key, version_id=version_id, mtime=mtime, latest=True, deleted=content is None,
                              size=len(content[0]) if content else 0, etag=content[2] if content else "")
        self.history.setdefault(key, []).insert(0, entry)
        if content is not None:
            self.version_data[version_id] = content
        return version_id

    def count(self, method=None, detail=None) -> int:
        return sum(1 for m, d in self.calls if (method is None or m == method) and (detail is None or d == detail))

    def details(self, method) -> list:
        return [d for m, d in self.calls if m == method]

    def transport_stats(self) -> dict:
        return {"transport": "fake", "connections_opened": 0, "fallbacks": {}, "fallback_total": 0}

    def _enter(self, method, detail=None):
        with self._lock:
            self.calls.append((method, detail))
            op = S3_OPERATION.get(method)
            if op:
                self.request_counts[op] = self.request_counts.get(op, 0) + 1
            queue = self.fail.get(method)
            exc = queue.pop(0) if queue else None
        if exc is None and self.fail_when is not None:
            exc = self.fail_when(method, detail)
        if exc is not None:
            raise exc
        if self.block is not None:
            self.block(method, detail)

    @staticmethod
    def _check_md5(data, content_md5):
        if content_md5 is not None and base64.b64decode(content_md5) != hashlib.md5(data).digest():
            raise errors.BackendError("BadDigest")

    def _info(self, key, with_metadata: bool) -> ObjectInfo:
        data, meta, etag = self.objects[key]
        return ObjectInfo(key=key, size=len(data), etag=etag, mtime=self.mtimes.get(key, MTIME),
                          metadata=dict(meta) if with_metadata else None,
                          headers=dict(self.headers.get(key, {})) if with_metadata else None)

    # -- reads -----------------------------------------------------------------------------------
    def list_page(self, prefix, token=None, delimiter="/", max_keys=1000):
        self._enter("list_page", (prefix, token))
        max_keys = min(max_keys, self.page_size)
        with self._lock:
            objects = dict(self.objects)
        entries, seen = [], set()   # sorted (key or common prefix, is_prefix)
        for key in sorted(objects):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                cp = prefix + rest[:rest.index(delimiter) + 1]
                if cp not in seen:
                    seen.add(cp)
                    entries.append((cp, True))
            else:
                entries.append((key, False))
        start = int(token) if token else 0
        page = ListPage()
        for name, is_prefix in entries[start:start + max_keys]:
            if is_prefix:
                page.prefixes.append(name)
            else:
                data, _, etag = objects[name]
                page.objects.append(ObjectInfo(key=name, size=len(data), etag=etag,
                                               mtime=self.mtimes.get(name, MTIME)))
        if start + max_keys < len(entries):
            page.next_token = str(start + max_keys)
        return page

    def list_all(self, prefix, delimiter="/"):
        token = None
        while True:
            page = self.list_page(prefix, token, delimiter)
            yield page
            token = page.next_token
            if not token:
                return

    def head(self, key):
        self._enter("head", key)
        if key not in self.objects:
            raise errors.NotFound(key)
        return self._info(key, with_metadata=True)

    def head_many(self, keys):
        self._enter("head_many", len(keys))
        out = []
        for key in keys:
            try:
                out.append(self.head(key))
            except errors.FsError as exc:
                out.append(exc)
        return out

    def get_range(self, key, start, end, etag=None, chunk_size=1 << 20, sink=None, alloc=None):
        self._enter("get_range", (key, start, end, etag))
        with self._lock:
            self.active_gets += 1
            self.max_active_gets = max(self.max_active_gets, self.active_gets)
            fail = self.fail_gets > 0
            if fail:
                self.fail_gets -= 1
        try:
            if self.get_delay:
                time.sleep(self.get_delay)
            if fail:
                raise errors.BackendError(f"get {key!r}: injected failure")
            if key not in self.objects:
                raise errors.NotFound(key)
            data, _, current = self.objects[key]
            if etag and etag != current:
                raise errors.ObjectChanged(f"get {key!r}: 412")
            body = data[start:end]
            if sink is None:
                return body
            for off in range(0, len(body), chunk_size):
                piece = body[off:off + chunk_size]
                if alloc is not None and len(piece) == chunk_size:
                    buf = alloc()           # a pool buffer, filled like the transport fills it
                    buf[:] = piece
                    piece = buf
                sink(start + off, piece)
            return b""
        finally:
            with self._lock:
                self.active_gets -= 1

    # -- writes ----------------------------------------------------------------------------------
    def put(self, key, body, metadata=None, content_md5=None, headers=None):
        self._enter("put", key)
        data = bytes(body)
        self._check_md5(data, content_md5)
        self.headers[key] = dict(headers or {})
        return self.seed(key, data, metadata, mtime=time.time())

    def copy(self, src, dst, metadata=None, headers=None, if_match=None):
        self._enter("copy", (src, dst))
        if src not in self.objects:
            raise errors.NotFound(src)
        data, meta, etag = self.objects[src]
        if if_match and if_match != etag:
            raise errors.ObjectChanged(f"copy from {src!r}: 412")
        self.headers[dst] = dict(headers or {}) if metadata is not None else dict(self.headers.get(src, {}))
        # the same content keeps its ETag (S3: a metadata-only change is a copy onto itself)
        return self.seed(dst, data, dict(metadata) if metadata is not None else meta, mtime=time.time(), etag=etag)

    def server_now(self) -> float:
        return time.time()

    def delete(self, key):
        self._enter("delete", key)
        with self._lock:
            self.objects.pop(key, None)
            if self.versioning_status == "Enabled":
                self._add_version(key, time.time())

    def delete_many(self, keys):
        self._enter("delete_many", len(keys))
        for k in keys:
            self.objects.pop(k, None)
            if self.versioning_status == "Enabled":
                self._add_version(k, time.time())

    # -- versions -------------------------------------------------------------------------------
    def versioning(self):
        return self.versioning_status

    def list_versions_page(self, prefix, key_marker=None, version_marker=None, max_keys=1000):
        self._enter("list_versions_page", (prefix, key_marker, version_marker))
        flat = [v for key in sorted(self.history) if key.startswith(prefix) for v in self.history[key]]
        start = 0
        if key_marker:
            start = next((i for i, v in enumerate(flat) if v.key > key_marker), len(flat))
            if version_marker:
                start = next((i + 1 for i, v in enumerate(flat) if (v.key, v.version_id) == (key_marker, version_marker)),
                             start)
        page = VersionPage(versions=[ObjectVersion(**vars(v)) for v in flat[start:start + min(max_keys, self.page_size)]])
        if start + len(page.versions) < len(flat):
            page.next_key, page.next_version = page.versions[-1].key, page.versions[-1].version_id
        return page

    def _version(self, key, version_id):
        entry = next((v for v in self.history.get(key, ()) if v.version_id == version_id), None)
        if entry is None or entry.deleted:
            raise errors.NotFound(f"{key!r} version {version_id}")
        return entry, self.version_data[version_id]

    def head_version(self, key, version_id):
        self._enter("head_version", (key, version_id))
        entry, (data, meta, etag) = self._version(key, version_id)
        return ObjectInfo(key=key, size=len(data), etag=etag, mtime=entry.mtime, metadata=dict(meta), headers={})

    def get_version_range(self, key, version_id, start, end, chunk_size=1 << 20, sink=None):
        self._enter("get_version_range", (key, version_id, start, end))
        _, (data, _, _) = self._version(key, version_id)
        body = data[start:end]
        if sink is None:
            return body
        for off in range(0, len(body), chunk_size):
            sink(start + off, body[off:off + chunk_size])
        return b""

    def copy_version(self, key, version_id, dst):
        self._enter("copy_version", (key, version_id, dst))
        _, (data, meta, etag) = self._version(key, version_id)
        return self.seed(dst, data, meta, mtime=time.time(), etag=etag)

    def delete_batch(self, keys):
        """DeleteObjects: ``delete_errors[key]`` is a list of S3 error codes the next
        requests answer for that key (the key stays); NoSuchKey counts as deleted."""
        self._enter("delete_batch", len(keys))
        assert len(keys) <= 1000
        failed = {}
        with self._lock:
            for k in keys:
                codes = self.delete_errors.get(k)
                code = codes.pop(0) if codes else None
                if code is not None and code != "NoSuchKey":
                    exc = error_kind(code, 0)(f"delete {k!r}: {code}")
                    exc.code = code
                    failed[k] = exc
                    continue
                self.objects.pop(k, None)
                if self.versioning_status == "Enabled":
                    self._add_version(k, time.time())
        return failed

    # -- multipart -------------------------------------------------------------------------------
    def create_multipart(self, key, metadata=None, headers=None):
        self._enter("create_multipart", key)
        with self._lock:
            self._ids += 1
            uid = f"up{self._ids}"
            self.uploads[uid] = {"key": key, "metadata": dict(metadata or {}), "parts": {}, "initiated": time.time(),
                                 "headers": dict(headers or {})}
        return uid

    def list_uploads(self, prefix=""):
        self._enter("list_uploads", prefix)
        return [(u["key"], uid, u["initiated"]) for uid, u in sorted(self.uploads.items())
                if u["key"].startswith(prefix)]

    def upload_part(self, key, upload_id, number, body, content_md5):
        self._enter("upload_part", number)
        if upload_id not in self.uploads:
            raise errors.UploadGone(upload_id)
        data = bytes(body)
        self._check_md5(data, content_md5)
        etag = md5(data) if self.part_etags == "md5" else self.kms_etag(data)
        self.uploads[upload_id]["parts"][number] = (data, etag)
        return etag

    @staticmethod
    def kms_etag(data: bytes) -> str:
        """An ETag as AWS answers for an SSE-KMS part: 32 hex digits, not the MD5."""
        return hashlib.sha256(data).hexdigest()[:32]

    def upload_part_copy(self, key, upload_id, number, src, start, end, src_etag=None):
        self._enter("upload_part_copy", number)
        if upload_id not in self.uploads:
            raise errors.UploadGone(upload_id)
        data, _, etag = self.objects[src]
        if src_etag and src_etag != etag:
            raise errors.ObjectChanged(f"copy part from {src!r}: 412")
        self.uploads[upload_id]["parts"][number] = (data[start:end], md5(data[start:end]))
        return md5(data[start:end])

    def list_parts(self, key, upload_id):
        self._enter("list_parts", upload_id)
        if upload_id not in self.uploads:
            raise errors.UploadGone(upload_id)
        parts = self.uploads[upload_id]["parts"]
        return [Part(n, parts[n][1], len(parts[n][0])) for n in sorted(parts)]

    def complete_multipart(self, key, upload_id, parts):
        self._enter("complete_multipart", key)
        up = self.uploads.get(upload_id)
        if up is None:
            raise errors.UploadGone(upload_id)
        numbers = [n for n, _ in parts]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), "parts in ascending order"
        chunks = []
        for i, (n, etag) in enumerate(parts):
            data, server_etag = up["parts"][n]
            if etag != server_etag:
                raise errors.BackendError(f"InvalidPart {n}")
            if i < len(parts) - 1 and len(data) < MIN_PART:
                raise errors.BackendError(f"EntityTooSmall part {n}")
            chunks.append(data)
        del self.uploads[upload_id]
        etag = multipart_etag([md5(up["parts"][n][0]) for n, _ in parts])
        self.objects[key] = (b"".join(chunks), up["metadata"], etag)
        self.headers[key] = up["headers"]
        self.mtimes[key] = time.time()
        return etag

    def abort_multipart(self, key, upload_id):
        self._enter("abort_multipart", upload_id)
        self.uploads.pop(upload_id, None)
