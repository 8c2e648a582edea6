"""AWS Signature Version 4 for S3 requests, by hand (docs/design/transport.md says why:
botocore's ``S3SigV4Auth`` costs 2-3x the CPU per request, awscrt's signer needs its own
request objects and a future per request).  Credentials come from botocore's chain
(``get_frozen_credentials`` refreshes STS/SSO/instance-role credentials as they expire).

Signed: ``host``, ``content-md5``, ``content-type`` and every ``x-amz-*`` header.  Header
values are sent as given; only their canonical form (what the signature covers) is
trimmed, with runs of white space made one space, as SigV4 wants - so another tool's
metadata keeps its spaces through a chmod.  A value with a line break (CR, LF) or NUL is
refused (``errors.InvalidArgument``): it would end the header early.  Bodies are signed
by their SHA-256 over plain http (as botocore does: nothing else protects them from a
change on the way that also fixes Content-MD5) and sent ``UNSIGNED-PAYLOAD`` over https,
where TLS does (and Content-MD5, which the server checks, against corruption).

The time signed is ``clock()``: the server's time as the bucket's ``stats.RequestStats``
estimates it (the local clock, corrected once it is known to be minutes off).
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Callable

from .endpoint import quote
from .objects import check_header_value

UNSIGNED = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Signer:
    def __init__(self, credentials, clock: Callable[[], float] = time.time):
        self.credentials = credentials      # chain.Credentials: botocore's, refreshed in its windows
        self.clock = clock                  # seconds since the epoch, as the server counts them
        self._keys: dict = {}

    def _signing_key(self, secret: str, datestamp: str, region: str) -> bytes:
        cached = self._keys.get((secret, datestamp, region))
        if cached is None:
            k = hmac.new(("AWS4" + secret).encode(), datestamp.encode(), hashlib.sha256).digest()
            for part in (region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, datestamp, region): k}
            cached = k
        return cached

    def sign(self, region: str, method: str, host: str, path: str, query: dict, headers: dict,
             payload_hash: str) -> dict:
        """The headers to send: ``headers`` (lower-cased) plus host, date, payload hash,
        session token and Authorization."""
        creds = self.credentials.get_frozen_credentials()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        datestamp = amz_date[:8]
        headers = {k.lower(): str(v) for k, v in headers.items()}
        for name, value in headers.items():
            check_header_value(name, value)
        headers.update({"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date})
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        signed = sorted(k for k in headers if k in ("host", "content-md5", "content-type") or k.startswith("x-amz-"))
        canonical_query = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(query.items()))
        canonical_headers = "".join(f"{n}:{canonical_value(headers[n])}\n" for n in signed)
        canonical = "\n".join([method, path, canonical_query, canonical_headers, ";".join(signed), payload_hash])
        scope = f"{datestamp}/{region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(creds.secret_key, datestamp, region), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(signed)}, Signature={signature}")
        return headers


def canonical_value(value: str) -> str:
    """A header value as SigV4's canonical request has it: trimmed, each run of white
    space one space (botocore's rule too).  The value sent is not changed."""
    return " ".join(value.split())
