"""botocore for the control requests: the only module of s3fuse that imports boto3 or
botocore.

``Botocore`` holds the session (credentials, profile, CA bundle of the AWS chain) and two
clients for the endpoint as it is now - the everyday one and the mount-time probe's
(3 s timeouts) - made again when the bucket turns out to live in another region.  Its
clients use the endpoint URL, addressing style, region, CA bundle and proxies of the
transport (botocore reads the same environment), CRC checksums only when required, and
botocore's own retries off: ``retry.RetryPolicy`` decides.

Every botocore exception - session and client creation included - leaves this module
as an error kind of ``s3fuse.errors``, with its ``status`` set: callers never see one.
"""
from __future__ import annotations

import datetime
import sys
import threading
import types
from typing import Callable, Optional

from .. import errors
from . import strict_http
from .chain import Credentials
from .objects import CONTENT_HEADERS, error_kind, refusal_time

strict_http.install()     # a response cut inside its headers is an error, not an empty answer

# botocore signs with the local clock and has no setting for another (boto3 issue 1252).
# Once the local clock is known to be minutes off the server's, the clients' own
# choose-signer hook picks this signer: botocore's S3 SigV4 with the request time moved by
# the offset its request context carries (the time botocore read, plus the offset).
SERVER_CLOCK_SIGNER = "s3fuse-s3v4"
_OFFSET = "s3fuse_clock_offset"

# boto3/botocore are imported on first use (``_lib``), not with this module: an idle
# mount whose requests all go through the transport never pays their ~25 MiB.
_lib_lock = threading.Lock()
_LIB: Optional[types.SimpleNamespace] = None


def _lib() -> types.SimpleNamespace:
    global _LIB
    with _lib_lock:
        if _LIB is None:
            _LIB = _load()
        return _LIB


def _load() -> types.SimpleNamespace:
    import boto3
    import botocore.auth
    import botocore.exceptions
    import botocore.handlers
    from botocore.config import Config

    class ServerClockS3SigV4Auth(botocore.auth.S3SigV4Auth):
        def _modify_request_before_signing(self, request):
            offset = request.context.get(_OFFSET)
            if offset:
                stamp = datetime.datetime.strptime(request.context["timestamp"], botocore.auth.SIGV4_TIMESTAMP)
                request.context["timestamp"] = (stamp + datetime.timedelta(seconds=offset)).strftime(
                    botocore.auth.SIGV4_TIMESTAMP)
            super()._modify_request_before_signing(request)

    botocore.auth.AUTH_TYPE_MAPS.setdefault(SERVER_CLOCK_SIGNER, ServerClockS3SigV4Auth)
    exc = botocore.exceptions
    # Connection trouble, including a body cut after botocore handed it over.
    unreachable = tuple(getattr(exc, name) for name in
                        ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                         "ConnectionClosedError", "ResponseStreamingError", "IncompleteReadError",
                         "ProxyConnectionError", "HTTPClientError", "SSLError", "ConnectionError")
                        if hasattr(exc, name))
    timeouts = tuple(getattr(exc, name) for name in ("ConnectTimeoutError", "ReadTimeoutError") if hasattr(exc, name))
    return types.SimpleNamespace(boto3=boto3, exceptions=exc, handlers=botocore.handlers, Config=Config,
                                 unreachable=unreachable, timeouts=timeouts)


# A content header as botocore's request parameter.
_PARAM = {"content-type": "ContentType", "cache-control": "CacheControl", "content-disposition": "ContentDisposition",
          "content-encoding": "ContentEncoding", "content-language": "ContentLanguage", "expires": "Expires",
          "x-amz-storage-class": "StorageClass", "x-amz-website-redirect-location": "WebsiteRedirectLocation",
          "x-amz-server-side-encryption": "ServerSideEncryption",
          "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId"}


def header_params(headers: Optional[dict]) -> dict:
    """Content headers (CONTENT_HEADERS names) as botocore request parameters."""
    return {_PARAM[name]: value for name, value in (headers or {}).items() if name in _PARAM and value}


def http_headers(resp: dict) -> dict:
    """The (lower-case) HTTP headers of a botocore answer."""
    return resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}


def content_headers(headers: dict) -> dict:
    """The CONTENT_HEADERS of an answer's (lower-case) HTTP headers."""
    return {name: headers[name] for name in CONTENT_HEADERS if headers.get(name)}


def _status(exc: Exception, lib) -> str:
    """The status of a failed botocore request, as metrics and logs give it: the HTTP
    status, or "timeout"/"unreachable" when no answer came."""
    if isinstance(exc, lib.exceptions.ClientError):
        return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                   or exc.response.get("Error", {}).get("Code") or "error")
    if isinstance(exc, lib.timeouts):
        return "timeout"
    if isinstance(exc, lib.unreachable):
        return "unreachable"
    return "error"


def translate(exc: Exception, what: str) -> Exception:
    """A botocore exception as one of ours (the only place that knows botocore's), with
    its ``status`` set; any other exception unchanged."""
    if "botocore.exceptions" not in sys.modules:
        return exc          # botocore never imported: not one of its exceptions
    lib = _lib()
    out = _kind_of(exc, what, lib)
    if out is not exc:
        out.status = _status(exc, lib)
    return out


def _kind_of(exc: Exception, what: str, lib) -> Exception:
    if isinstance(exc, lib.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        out = error_kind(code, status)(f"{what}: {code or status} {err.get('Message', '')}".strip())
        refusal_time(out, http_headers(exc.response).get("date"), str(err.get("ServerTime") or ""))
        return out
    if isinstance(exc, lib.exceptions.NoCredentialsError):
        return errors.NoCredentials(f"{what}: no AWS credentials found (env, ~/.aws, instance role)")
    if isinstance(exc, lib.unreachable):
        return errors.Unreachable(f"{what}: {exc}")
    if isinstance(exc, lib.exceptions.BotoCoreError):
        return errors.BackendError(f"{what}: {exc}")
    return exc


class Botocore:
    """The session and the botocore clients of one bucket, made on first use.

    ``static`` (``static_keys.Resolved``): credentials, region and CA bundle found
    without botocore; then no session is made until a request needs botocore (a copy,
    a batch delete, a fallback), and it gets the same keys.  Without it the session is
    made at once: botocore's chain finds the credentials (roles, SSO, processes...)."""

    def __init__(self, bucket: str, *, profile=None, access_key=None, secret_key=None, region=None,
                 params: Optional[dict] = None, observe: Callable[[str, object, int], None] = None,
                 clock_offset: Callable[[], float] = lambda: 0.0, static=None):
        self.bucket = bucket
        self._clock_offset = clock_offset     # seconds to add to the local clock when signing
        self._params = params or {}           # the mount's ObjectOptions as botocore parameters
        self._op_params: dict = {}            # operation -> the part of _params it takes
        self._observe = observe or (lambda op, status, sent: None)
        self._lock = threading.Lock()         # guards the session and the two clients
        self._profile, self._region = profile or None, region or None
        self._keys = (access_key or None, secret_key or None, None)
        self.static = static
        self._session = None
        self._where = None                    # connect()'s arguments: clients are made from them
        self._clients = None                  # (everyday client, probe client)
        self._generation = 0                  # connect() calls: clients made before the last one are stale
        if static is not None:
            c = static.credentials
            self._keys = (c.access_key, c.secret_key, c.token)
            self.credentials = Credentials(c, profile)    # never expire: refusals still said once
            self.chain_ca_bundle = static.ca_bundle
            self.region_name = self._region or static.region
        else:
            session = self.session
            try:
                found = session.get_credentials()
                # every request path takes its keys from this one (refreshable) object
                self.credentials = Credentials(found, profile) if found is not None else None
                self.chain_ca_bundle = session._session.get_config_variable("ca_bundle")   # AWS_CA_BUNDLE, profile
            except _lib().exceptions.BotoCoreError as exc:
                raise errors.ConfigError(f"AWS configuration: {exc}") from None
            self.region_name = session.region_name

    @property
    def session(self):
        with self._lock:
            if self._session is None:
                self._session = self._make_session()
            return self._session

    def _make_session(self):
        lib = _lib()
        access, secret, token = self._keys
        try:
            return lib.boto3.session.Session(profile_name=self._profile, aws_access_key_id=access,
                                             aws_secret_access_key=secret, aws_session_token=token,
                                             region_name=self._region)
        except lib.exceptions.ProfileNotFound:
            raise errors.ConfigError(f"profile {self._profile!r} is not in ~/.aws/config or ~/.aws/credentials") \
                from None
        except lib.exceptions.BotoCoreError as exc:
            raise errors.ConfigError(f"AWS configuration: {exc}") from None

    def connect(self, endpoint, ca_bundle: Optional[str], timeouts: tuple, max_connections: int):
        """Make the clients for ``endpoint`` (``endpoint.Endpoint``) as it will be at their
        first request (a region move calls this again: the clients are made anew)."""
        with self._lock:
            self._where = (endpoint, ca_bundle, timeouts, max_connections)
            self._clients = None
            self._generation += 1

    @property
    def _client(self):
        return self._clients_now()[0]

    def _clients_now(self) -> tuple:
        session = self.session
        with self._lock:
            if self._clients is not None:
                return self._clients
            endpoint, ca_bundle, timeouts, max_connections = self._where
            generation = self._generation
        lib = _lib()
        connect_timeout, read_timeout = timeouts
        cfg = dict(max_pool_connections=max_connections, retries={"mode": "standard", "total_max_attempts": 1},
                   connect_timeout=connect_timeout, read_timeout=read_timeout,
                   s3={"addressing_style": endpoint.style}, request_checksum_calculation="when_required",
                   response_checksum_validation="when_required")
        kwargs = dict(endpoint_url=endpoint.url(), region_name=endpoint.region, verify=ca_bundle or None)
        try:
            client = session.client("s3", config=lib.Config(**cfg), **kwargs)
            # The mount-time probe fails within seconds even against a server that accepts
            # connections and never answers.
            probe = session.client("s3", config=lib.Config(**dict(
                cfg, connect_timeout=min(connect_timeout, 3.0), read_timeout=min(read_timeout, 3.0))), **kwargs)
        except lib.exceptions.BotoCoreError as exc:
            raise errors.ConfigError(f"AWS configuration: {exc}") from None
        for c in (client, probe):
            c.meta.events.register("choose-signer.s3", self._choose_signer)
        with self._lock:
            if self._clients is None and self._generation == generation:
                self._clients = (client, probe)
            return self._clients or (client, probe)

    def _choose_signer(self, signing_name=None, signature_version=None, context=None, **kwargs):
        """botocore's choice of signer (its own handler decides first), but S3 SigV4 with
        the server's clock while the local one is known to be off."""
        offset = self._clock_offset()
        if not offset or context is None:
            return None
        chosen = _lib().handlers.set_operation_specific_signer(context=context, signing_name=signing_name) \
            or signature_version
        if chosen != "s3v4":
            return chosen
        context[_OFFSET] = offset
        return SERVER_CLOCK_SIGNER

    def _extra(self, client, op: str) -> dict:
        """The mount's options that botocore operation ``op`` takes."""
        extra = self._op_params.get(op)
        if extra is None and op == "create_bucket":
            extra = {}
        if extra is None:
            model = client.meta.service_model.operation_model(client.meta.method_to_api_mapping[op])
            extra = self._op_params[op] = {k: v for k, v in self._params.items() if k in model.input_shape.members}
        return extra

    def call(self, op: str, what: str, probe: bool = False, **kwargs) -> dict:
        """One botocore request (no retry: the caller's policy decides), counted through
        ``observe``; its failure raised as an error kind."""
        client = self._clients_now()[1 if probe else 0]
        for name, value in self._extra(client, op).items():
            kwargs.setdefault(name, value)
        body = kwargs.get("Body")
        size = len(body) if isinstance(body, (bytes, bytearray)) else 0
        try:
            resp = getattr(client, op)(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            translated = translate(exc, what)
            status = str(getattr(translated, "status", None) or "error")
            self._observe(op, status, size if status.isdigit() else 0)
            if translated is exc:
                raise
            raise translated from exc
        self._observe(op, resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 200, size)
        return resp

    def read_body(self, resp: dict, what: str, chunk_size: int, deliver: Callable[[int, bytes], None],
                  offset: int) -> int:
        """Stream a GetObject answer's body to ``deliver(offset, chunk)`` in ``chunk_size``
        pieces; returns the offset reached.  A connection broken inside the body raises
        an error kind."""
        body = resp["Body"]
        try:
            pending = b""
            while True:
                chunk = body.read(chunk_size - len(pending))
                if not chunk:
                    break
                pending += chunk
                if len(pending) >= chunk_size:
                    deliver(offset, pending)
                    offset += len(pending)
                    pending = b""
            if pending:
                deliver(offset, pending)
                offset += len(pending)
        except Exception as exc:
            translated = translate(exc, what)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            body.close()
        return offset
