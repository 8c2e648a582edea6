"""The multipart-upload requests, sent through the bucket's ``requests.Requests`` (the
same retry policy, options and error kinds as every other request).  Create, UploadPart,
Complete and Abort go through the transport (a file written through the mount never
imports botocore); part copies and the listings of parts and uploads (edits in place,
recovery) through botocore."""
from __future__ import annotations

import logging
from typing import Optional

from .. import errors
from xml.sax.saxutils import escape

from .boto import header_params
from .objects import Part, answer_error, check_headers, datetime_timestamp, strip_etag, xml_text
from .transport import ascii_headers

log = logging.getLogger("s3fuse.s3")


class MultipartRequests:
    def __init__(self, requests, head):
        self.requests = requests
        self.bucket = requests.bucket
        self._head = head             # ObjectClient.head: the ETag an answer left out

    def create_multipart(self, key: str, metadata: Optional[dict] = None,
                         headers: Optional[dict] = None) -> str:
        """CreateMultipartUpload.  An attempt that failed may have created an upload on
        the server all the same (its answer lost): after a retry, those are aborted."""
        check_headers(metadata, headers)
        sent = self.requests.options.write_headers(headers)
        kwargs = dict(Key=key, Metadata=metadata or {}, **header_params(sent))
        tries = []
        fast = self.requests.fast
        fast_headers = ascii_headers(metadata, sent) if fast is not None else None

        def once():
            tries.append(self.requests.stats.server_now())
            if fast_headers is not None:
                _, _, data = fast._request("POST", key, query={"uploads": ""}, headers=fast_headers, ok=(200,))
                upload_id = xml_text(data, "UploadId")
                if not upload_id:
                    raise errors.BackendError(f"create upload {key!r}: the answer has no UploadId")
                return upload_id
            return self.requests.call("create_multipart_upload", f"create upload {key!r}", **kwargs)["UploadId"]
        upload_id = self.requests.run("create_multipart_upload", f"create upload {key!r}", once)
        if len(tries) > 1:
            self._abort_strays(key, keep=upload_id, since=tries[0])
        return upload_id

    CLOCK_SLACK = 300.0     # seconds of clock difference allowed between us and the server

    def _abort_strays(self, key: str, keep: str, since: float):
        try:
            for other_key, upload_id, initiated in self.list_uploads(key):
                if other_key == key and upload_id != keep and initiated >= since - self.CLOCK_SLACK:
                    self.abort_multipart(key, upload_id)
                    log.warning("aborted upload %s of %r left by a failed CreateMultipartUpload", upload_id, key)
        except errors.FsError:
            log.warning("could not look for uploads of %r left by a failed attempt", key, exc_info=True)

    def upload_part(self, key: str, upload_id: str, number: int, body, content_md5: Optional[str]) -> str:
        """UploadPart with Content-MD5 (the server checks the bytes; None where the
        signature covers them: ``ObjectClient.signs_bodies``).  Returns the part's
        ETag as the server answered: an MD5 of the part only on some servers and for
        some encryptions (not SSE-KMS or SSE-C on AWS)."""
        def once():
            fast = self.requests.fast
            if fast is not None and isinstance(body, (bytes, bytearray)):
                answer = fast.put(key, bytes(body), content_md5, headers=self.requests.options.customer_key(),
                                        query={"partNumber": str(number), "uploadId": upload_id})
                if answer is not None:
                    return answer[0]
            kwargs = dict(ContentMD5=content_md5) if content_md5 else {}
            resp = self.requests.call("upload_part", f"upload part {number} of {key!r}", Key=key, UploadId=upload_id,
                                      PartNumber=number, Body=body, **kwargs)
            return strip_etag(resp.get("ETag"))
        return self.requests.run("upload_part", f"upload part {number} of {key!r}", once)

    def upload_part_copy(self, key: str, upload_id: str, number: int, src: str, start: int, end: int,
                         src_etag: Optional[str] = None) -> str:
        kwargs = dict(Key=key, UploadId=upload_id, PartNumber=number,
                      CopySource={"Bucket": self.bucket, "Key": src},
                      CopySourceRange=f"bytes={start}-{end - 1}")
        if src_etag:
            kwargs["CopySourceIfMatch"] = f'"{src_etag}"'
        resp = self.requests.op("upload_part_copy", f"copy part {number} of {src!r} -> {key!r}", **kwargs)
        return strip_etag(resp.get("CopyPartResult", {}).get("ETag"))

    def complete_multipart(self, key: str, upload_id: str, parts: list) -> str:
        if self.requests.fast is not None:
            etag = self.requests.run("complete_multipart_upload", f"complete upload {key!r}",
                                     lambda: self._complete_fast(key, upload_id, parts))
            return etag or self._head(key).etag
        resp = self.requests.op("complete_multipart_upload", f"complete upload {key!r}", Key=key, UploadId=upload_id,
                        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in parts]})
        # Ceph RGW (Pacific) answers an empty ETag here; the ETag keys caches: ask for it.
        return strip_etag(resp.get("ETag")) or self._head(key).etag

    def _complete_fast(self, key: str, upload_id: str, parts: list) -> str:
        """One CompleteMultipartUpload through the transport: the ETag answered ("" if
        none).  An error inside a 200 answer (S3 may fail a completion that way, after
        minutes) raises its kind."""
        body = ('<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + "".join(
            f"<Part><PartNumber>{int(n)}</PartNumber><ETag>&quot;{escape(e)}&quot;</ETag></Part>" for n, e in parts)
            + "</CompleteMultipartUpload>").encode()
        _, answer, data = self.requests.fast._request("POST", key, query={"uploadId": upload_id}, body=body,
                                                      headers=self.requests.options.customer_key(), ok=(200,))
        answer_error(data, f"complete upload {key!r}")
        return strip_etag(xml_text(data, "ETag") or answer.get("etag"))

    def abort_multipart(self, key: str, upload_id: str):
        fast = self.requests.fast
        what = f"abort upload {key!r}"
        try:
            if fast is not None:
                self.requests.run("abort_multipart_upload", what, lambda: fast._request(
                    "DELETE", key, query={"uploadId": upload_id}, ok=(200, 204)))
            else:
                self.requests.op("abort_multipart_upload", what, Key=key, UploadId=upload_id)
        except errors.UploadGone:
            pass

    def list_parts(self, key: str, upload_id: str) -> list:
        parts, marker = [], None
        while True:
            kwargs = dict(Key=key, UploadId=upload_id)
            if marker:
                kwargs["PartNumberMarker"] = marker
            try:
                resp = self.requests.op("list_parts", f"list parts {key!r}", **kwargs)
            except errors.NotFound as exc:
                # Ceph RGW answers NoSuchKey (404), not NoSuchUpload, for an upload id it
                # does not know (completed or aborted): for ListParts that means the same.
                raise errors.UploadGone(str(exc)) from exc
            for p in resp.get("Parts", ()):
                parts.append(Part(int(p["PartNumber"]), strip_etag(p.get("ETag")), int(p.get("Size", 0))))
            if not resp.get("IsTruncated"):
                return parts
            marker = resp.get("NextPartNumberMarker")

    def list_uploads(self, prefix: str = "") -> list:
        """[(key, upload_id, initiated_timestamp)] of multipart uploads in progress."""
        out, key_marker, id_marker = [], None, None
        while True:
            kwargs = dict(Prefix=prefix)
            if key_marker:
                kwargs.update(KeyMarker=key_marker, UploadIdMarker=id_marker or "")
            resp = self.requests.op("list_multipart_uploads", f"list uploads {prefix!r}", **kwargs)
            for u in resp.get("Uploads", ()):
                out.append((u["Key"], u["UploadId"], datetime_timestamp(u.get("Initiated"))))
            if not resp.get("IsTruncated"):
                return out
            key_marker, id_marker = resp.get("NextKeyMarker"), resp.get("NextUploadIdMarker")

