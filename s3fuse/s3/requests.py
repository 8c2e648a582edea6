"""What every S3 request of one bucket goes through: the two request paths (the
hand-signed ``transport.Transport`` for the data path, ``boto.Botocore`` for the control
requests and the transport's fallbacks), one ``retry.RetryPolicy``, the mount's
``ObjectOptions`` and one ``stats.RequestStats``.  ``client.ObjectClient``,
``reads.RangeReads`` and ``multipart.MultipartRequests`` share one ``Requests``."""
from __future__ import annotations

import logging
from typing import Callable, Optional

from .. import errors
from .boto import Botocore
from .endpoint import Endpoint, Network, ca_bundle_from
from .object_options import ObjectOptions
from .retry import RetryPolicy
from .static_keys import resolve as static_keys
from .stats import RequestStats
from .transport import Transport

log = logging.getLogger("s3fuse.s3")


class Requests:
    def __init__(self, bucket: str, *, endpoint: Optional[str] = None, region: Optional[str] = None,
                 profile: Optional[str] = None, access_key: Optional[str] = None,
                 secret_key: Optional[str] = None, path_style: Optional[bool] = None,
                 max_connections: int = 32, max_attempts: int = 5,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 ca_bundle: Optional[str] = None, options: Optional[ObjectOptions] = None):
        self.bucket = bucket
        self.options = options or ObjectOptions()
        self.stats = RequestStats()
        # Attempts never start later than ``attempts`` request timeouts after the first.
        self.retry = RetryPolicy(attempts=max_attempts, budget=max_attempts * read_timeout)
        # The mount-time probe: 2 attempts of at most 3 s each.
        self.probe_retry = RetryPolicy(attempts=2, first_delay=0.5, budget=8.0)
        # A static key pair found without botocore (static_keys.py) leaves boto3 unimported
        # until a request needs it; anything else is botocore's chain.
        self.boto = Botocore(bucket, profile=profile, access_key=access_key, secret_key=secret_key, region=region,
                             params=self.options.params(), observe=self.stats.record,
                             clock_offset=lambda: self.stats.signing_offset,
                             static=static_keys(profile, access_key, secret_key))
        self.endpoint = Endpoint.resolve(bucket, endpoint, region, path_style, self.boto.region_name)
        self.options.check_scheme(self.endpoint.scheme, self.endpoint.url())
        self.ca_bundle = ca_bundle_from(ca_bundle, self.boto.chain_ca_bundle)
        self._timeouts = (connect_timeout, read_timeout)
        self._max_connections = max_connections
        self.boto.connect(self.endpoint, self.ca_bundle, self._timeouts, max_connections)
        self.credentials = self.boto.credentials      # chain.Credentials, None for anonymous access
        # fast: the data path; probe_fast: the mount-time probe, which fails within seconds
        # even against a server that accepts connections and never answers.  None without
        # credentials (anonymous access goes through botocore).
        self.fast = self.probe_fast = None
        credentials = self.boto.credentials
        if credentials is not None:
            self.fast = Transport(self.endpoint, Network(self.ca_bundle, connect_timeout, read_timeout),
                                  credentials, on_region=self._region_moved, observe=self.stats.record,
                                  clock=self.stats.signing_time)
            self.probe_fast = Transport(self.endpoint, Network(self.ca_bundle, min(connect_timeout, 3.0),
                                                               min(read_timeout, 3.0)),
                                        credentials, on_region=self._region_moved, observe=self.stats.record,
                                        clock=self.stats.signing_time)
            for t in (self.fast, self.probe_fast):
                t.common_headers = self.options.common()
                t.read_headers = self.options.customer_key()
            self.credentials.probe = lambda: self.probe_fast.list_objects({"max-keys": "1"})

    def _region_moved(self, region: str):
        log.warning("bucket %r is in region %s: requests go there from now on", self.bucket, region)
        self.boto.connect(self.endpoint, self.ca_bundle, self._timeouts, self._max_connections)

    def call(self, op: str, what: str, probe: bool = False, **kwargs) -> dict:
        """One botocore request, no retry."""
        return self.boto.call(op, what, probe=probe, **kwargs)

    def in_server_time(self, attempt: Callable):
        """``attempt()``, once more if it was refused for the local clock: a 403 (or
        RequestTimeTooSkewed) whose answer shows the server's clock minutes away from the
        time signed corrects the signing clock (``stats.server_time_is`` warns), and the
        request is sent again, once.  Likewise once more with other keys when it was
        refused for its credentials and they were renewed meanwhile or at once
        (``chain.Credentials.renewed_after_refusal``); a refusal that stays is logged
        once per access key (``chain.Credentials.refused``)."""
        signed_offset = self.stats.signing_offset
        creds = self.credentials
        signed_access = creds.last_access if creds is not None else None
        try:
            result = attempt()
        except errors.AccessDenied as exc:
            if not self.stats.clock_refused(exc, signed_offset):
                why = creds.diagnose(exc) if creds is not None else exc
                if creds is None or not creds.renewed_after_refusal(signed_access, why):
                    if creds is not None:
                        creds.refused(why)
                    raise
            try:
                result = attempt()
            except errors.AccessDenied as again:
                if creds is not None:
                    creds.refused(again)
                raise
        if creds is not None:
            creds.worked()
        return result

    def run(self, op: str, what: str, attempt: Callable):
        """``attempt`` (requests of S3 operation ``op``) under the retry policy (and the
        clock correction of ``in_server_time``); the operations that failed in the end
        are counted (a 404 is an answer, not a failure)."""
        try:
            return self.retry.run(lambda: self.in_server_time(attempt), what, op)
        except errors.NotFound:
            raise
        except errors.FsError:
            self.stats.failed()
            raise

    def op(self, op: str, what: str, **kwargs) -> dict:
        """A botocore request under the retry policy."""
        return self.run(op, what, lambda: self.call(op, what, **kwargs))

    def describe(self) -> dict:
        """How requests travel, for ``s3fuse status``: endpoint, addressing, region,
        connections opened by the transport, fallbacks to botocore per operation."""
        ep = self.endpoint
        fallbacks = self.stats.fallback_counts()
        return {"endpoint": ep.url(), "addressing": ep.style, "region": ep.region,
                "transport": "s3fuse" if self.fast is not None else "botocore",
                "connections_opened": self.fast.connections_opened if self.fast is not None else 0,
                "fallbacks": fallbacks, "fallback_total": sum(fallbacks.values()), **self.options.describe()}
