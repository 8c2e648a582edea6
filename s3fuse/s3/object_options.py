"""What every object the mount writes gets, and what every request carries: server-side
encryption (``sse=AES256|aws:kms``, ``sse_kms_key_id=``, ``sse_c_key=FILE``), storage
class, canned ACL, requester-pays.  As HTTP headers (``transport``) and as botocore
parameters (``s3``, filtered per operation by botocore's own model).

An SSE-C key is sent with every request that reads or writes object data (GET, HEAD,
UploadPart, CompleteMultipartUpload, ListParts) and as the copy source's key on copies;
it is never logged, never stored in the journal or the metadata store, and never sent
over plain http (a mount with ``sse_c_key`` and an ``http://`` endpoint is refused).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import urllib.parse
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError

SSE_CHOICES = ("AES256", "aws:kms")
# headers of an object's own encryption that a mount option replaces (objects.CONTENT_HEADERS)
OBJECT_SSE_HEADERS = ("x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id")


def read_sse_c_key(path: str) -> bytes:
    """The 256-bit SSE-C key in ``path`` (32 raw bytes, or its base64 or hex on one line);
    refused if group/other can read the file, like passwd_file."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError as exc:
        raise ConfigError(f"sse_c_key {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"sse_c_key {path} is readable by group or others; chmod 600 it")
    if len(raw) == 32:
        return raw
    text = raw.strip()
    for decode in (lambda t: base64.b64decode(t, validate=True), binascii.unhexlify):
        try:
            key = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(key) == 32:
            return key
    raise ConfigError(f"sse_c_key {path}: expected a 256-bit key (32 bytes, or their base64 or hex)")


@dataclass
class ObjectOptions:
    sse: Optional[str] = None
    sse_kms_key_id: Optional[str] = None
    sse_c_key: Optional[bytes] = None
    storage_class: Optional[str] = None
    acl: Optional[str] = None
    requester_pays: bool = False

    @classmethod
    def from_config(cls, cfg) -> "ObjectOptions":
        key = read_sse_c_key(cfg.sse_c_key) if getattr(cfg, "sse_c_key", None) else None
        opts = cls(getattr(cfg, "sse", None), getattr(cfg, "sse_kms_key_id", None), key,
                   getattr(cfg, "storage_class", None), getattr(cfg, "acl", None),
                   bool(getattr(cfg, "requester_pays", False)))
        if opts.sse_kms_key_id and opts.sse != "aws:kms":
            if opts.sse is not None:
                raise ConfigError("sse_kms_key_id needs sse=aws:kms")
            opts.sse = "aws:kms"
        if opts.sse_c_key is not None and opts.sse is not None:
            raise ConfigError("sse_c_key and sse= exclude each other (one encryption per object)")
        endpoint = getattr(cfg, "endpoint", None)
        opts.check_scheme(urllib.parse.urlparse(endpoint).scheme if endpoint else "https", endpoint)
        return opts

    def check_scheme(self, scheme: str, endpoint: Optional[str] = None):
        """An SSE-C key travels in every request that carries it: never over plain http
        (S3 and RGW refuse it there too; botocore would send it)."""
        if self.sse_c_key is not None and scheme != "https":
            raise ConfigError(f"sse_c_key needs an https endpoint, not {endpoint or scheme}: "
                              f"SSE-C keys must not travel in clear")

    # -- HTTP headers (transport) -------------------------------------------------------------
    def common(self) -> dict:
        return {"x-amz-request-payer": "requester"} if self.requester_pays else {}

    def customer_key(self, prefix: str = "x-amz-server-side-encryption-customer-") -> dict:
        if self.sse_c_key is None:
            return {}
        return {prefix + "algorithm": "AES256", prefix + "key": base64.b64encode(self.sse_c_key).decode(),
                prefix + "key-md5": base64.b64encode(hashlib.md5(self.sse_c_key).digest()).decode()}

    def write_headers(self, object_headers: Optional[dict] = None) -> dict:
        """Headers of a PutObject: the object's own ``object_headers`` (content headers,
        its encryption), then what the mount asks for."""
        out = dict(object_headers or {})
        if self.sse or self.sse_c_key is not None:
            for name in OBJECT_SSE_HEADERS:
                out.pop(name, None)
        if self.sse:
            out["x-amz-server-side-encryption"] = self.sse
        if self.sse_kms_key_id:
            out["x-amz-server-side-encryption-aws-kms-key-id"] = self.sse_kms_key_id
        if self.storage_class:
            out["x-amz-storage-class"] = self.storage_class
        if self.acl:
            out["x-amz-acl"] = self.acl
        out.update(self.customer_key())
        return out

    # -- botocore parameters ------------------------------------------------------------------
    def params(self) -> dict:
        """Every parameter the options mean; ``s3`` keeps those an operation takes."""
        out = {}
        if self.sse:
            out["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            out["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.storage_class:
            out["StorageClass"] = self.storage_class
        if self.acl:
            out["ACL"] = self.acl
        if self.requester_pays:
            out["RequestPayer"] = "requester"
        if self.sse_c_key is not None:
            out.update(SSECustomerAlgorithm="AES256", SSECustomerKey=self.sse_c_key,
                       CopySourceSSECustomerAlgorithm="AES256", CopySourceSSECustomerKey=self.sse_c_key)
        return out

    def describe(self) -> dict:
        """For ``s3fuse status`` (no key material)."""
        return {"sse": "SSE-C" if self.sse_c_key is not None else self.sse, "storage_class": self.storage_class,
                "acl": self.acl, "requester_pays": self.requester_pays}
