"""Where requests go and how they get there: addressing, region, TLS trust, proxies.

One ``Endpoint`` serves both request paths of ``s3.ObjectClient`` (``transport`` and
botocore), so AWS and custom endpoints are addressed alike:

- AWS (no ``endpoint=``): ``https://s3.REGION.amazonaws.com``, virtual-hosted
  (``BUCKET.s3.REGION.amazonaws.com``) unless ``path_style`` is asked for or the bucket
  name is not a DNS label (dots break the TLS wildcard, as botocore also decides).
- A custom endpoint: path-style unless ``virtual_host`` is asked for.
- The region, when not given, is discovered from the first answer that names it
  (``x-amz-bucket-region`` on a 301 PermanentRedirect or 400 AuthorizationHeaderMalformed)
  and kept: ``set_region`` moves the AWS host with it.

``Network`` is what a connection needs besides the address: the TLS context (CA bundle
from ``-o ca_bundle=``, ``AWS_CA_BUNDLE`` or the profile's ``ca_bundle``), the proxy for
a host (``HTTP(S)_PROXY``/``NO_PROXY`` through the standard library's own parser, as
botocore does), and the connect and read timeouts.

Proxies: ``http://`` ones are spoken to in plain TCP (absolute URLs for HTTP, ``CONNECT``
for HTTPS); ``https://`` ones over TLS - its certificate checked with the same CA bundle
- so that Proxy-Authorization never crosses the network in clear: absolute URLs inside
it, or ``CONNECT`` inside it and the origin's TLS inside that (``tls_tunnel``).  botocore
(urllib3) does the same for both, so the two request paths go the same way.  Any other
scheme (``socks5://``) is refused when the mount starts.
"""
from __future__ import annotations

import base64
import http.client
import os
import re
import socket
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from .tls_tunnel import TLSInTLS

_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def aws_host(region: str) -> str:
    return f"s3.{region}.amazonaws.com"


@dataclass
class Endpoint:
    scheme: str
    host: str              # the service host (without the bucket)
    port: int
    base_path: str         # a custom endpoint's path prefix ("" for AWS)
    bucket: str
    region: str
    virtual: bool          # bucket in the host name
    aws: bool
    region_given: bool = False

    @classmethod
    def resolve(cls, bucket: str, endpoint: Optional[str], region: Optional[str],
                path_style: Optional[bool], default_region: Optional[str] = None) -> "Endpoint":
        """``path_style`` True/False forces the style, None picks the default."""
        chosen = region or default_region or "us-east-1"
        if not endpoint:
            virtual = path_style is not True and bool(_DNS_BUCKET.match(bucket))
            return cls("https", aws_host(chosen), 443, "", bucket, chosen, virtual, True, bool(region))
        u = urllib.parse.urlparse(endpoint)
        https = u.scheme == "https"
        return cls(u.scheme, u.hostname, u.port or (443 if https else 80), u.path.rstrip("/"), bucket, chosen,
                   path_style is False, False, bool(region))

    @property
    def https(self) -> bool:
        return self.scheme == "https"

    @property
    def style(self) -> str:
        return "virtual" if self.virtual else "path"

    def _netloc(self, host: str) -> str:
        default = 443 if self.https else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def connect_host(self) -> str:
        """The host name connections go to (the bucket's own with virtual hosts)."""
        return f"{self.bucket}.{self.host}" if self.virtual else self.host

    @property
    def host_header(self) -> str:
        return self._netloc(self.connect_host)

    def url(self) -> str:
        """The service URL (no bucket), as botocore's ``endpoint_url``."""
        return f"{self.scheme}://{self._netloc(self.host)}{self.base_path}"

    def path(self, key: Optional[str]) -> str:
        """The request path of ``key`` (None: the bucket itself), URI-encoded as SigV4 wants."""
        prefix = self.base_path + ("" if self.virtual else "/" + quote(self.bucket))
        if key is None:
            return prefix or "/"
        return prefix + "/" + quote(key, safe="/-_.~")

    def set_region(self, region: str):
        self.region = region
        if self.aws:
            self.host = aws_host(region)


def quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogateescape"), safe=safe)


def ca_bundle_from(option: Optional[str], session_value: Optional[str]) -> Optional[str]:
    """The CA bundle: ``-o ca_bundle=``, else AWS_CA_BUNDLE / the profile's ``ca_bundle``
    (botocore's ``session.get_config_variable('ca_bundle')`` covers both)."""
    path = option or session_value
    if path and not os.path.isfile(path):
        raise ConfigError(f"ca_bundle {path}: no such file")
    return path or None


class Network:
    def __init__(self, ca_bundle: Optional[str] = None, connect_timeout: float = 5.0, read_timeout: float = 30.0):
        self.ca_bundle = ca_bundle
        self.connect_timeout = min(connect_timeout, read_timeout)
        self.read_timeout = read_timeout
        self._ssl: Optional[ssl.SSLContext] = None
        self.proxies = urllib.request.getproxies()
        for scheme in ("http", "https"):
            url = self.proxies.get(scheme)
            if url and "://" in url and urllib.parse.urlparse(url).scheme not in ("http", "https"):
                raise ConfigError(f"{scheme.upper()}_PROXY={_masked(url)}: only http:// and https:// proxies "
                                  "are supported")

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            try:
                self._ssl = ssl.create_default_context(cafile=self.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"ca_bundle {self.ca_bundle}: {exc}") from None
        return self._ssl

    def proxy_for(self, scheme: str, host: str) -> Optional[urllib.parse.ParseResult]:
        """The proxy URL for ``scheme://host`` (``HTTP_PROXY``/``HTTPS_PROXY``), or None
        (none set, or ``NO_PROXY`` names the host)."""
        url = self.proxies.get(scheme)
        if not url or urllib.request.proxy_bypass_environment(host, self.proxies):
            return None
        if "://" not in url:
            url = "http://" + url
        return urllib.parse.urlparse(url)

    def connect(self, scheme: str, host: str, port: int):
        """A connected ``http.client`` connection to ``host``: directly, or through the
        proxy (``CONNECT`` tunnel for HTTPS; for HTTP the caller sends absolute URLs,
        see ``absolute``).  Connect timeout first, then the read timeout."""
        proxy = self.proxy_for(scheme, host)
        https = scheme == "https"
        if proxy is None:
            conn = (http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=self.ssl_context())
                    if https else http.client.HTTPConnection(host, port, timeout=self.connect_timeout))
        else:
            auth = {}
            if proxy.username:
                token = f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
                auth["Proxy-Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
            tls_proxy = proxy.scheme == "https"
            pport = proxy.port or (443 if tls_proxy else 80)
            if https:
                tunnel = _TunnelInTLS if tls_proxy else http.client.HTTPSConnection
                conn = tunnel(proxy.hostname, pport, timeout=self.connect_timeout, context=self.ssl_context())
                conn.set_tunnel(host, port, headers=auth)
            elif tls_proxy:
                conn = _ForwardInTLS(proxy.hostname, pport, timeout=self.connect_timeout, context=self.ssl_context())
                conn.proxy_headers = auth
            else:
                conn = http.client.HTTPConnection(proxy.hostname, pport, timeout=self.connect_timeout)
                conn.proxy_headers = auth
        conn.connect()
        conn.sock.settimeout(self.read_timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def absolute(self, scheme: str, host: str) -> bool:
        """Requests to ``host`` carry absolute URLs (plain HTTP through a proxy)."""
        return scheme == "http" and self.proxy_for(scheme, host) is not None


def _masked(url: str) -> str:
    u = urllib.parse.urlparse(url)
    return u._replace(netloc=f"***@{u.hostname}" + (f":{u.port}" if u.port else "")).geturl() if u.username else url


class _TunnelInTLS(http.client.HTTPSConnection):
    """HTTPS through an ``https://`` proxy: TLS to the proxy, the CONNECT (and its
    Proxy-Authorization) inside it, then TLS to the origin inside the tunnel."""

    def connect(self):
        raw = socket.create_connection((self.host, self.port), self.timeout, self.source_address)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        try:
            self._tunnel()
            self.sock = TLSInTLS(self.sock, self._context, self._tunnel_host)
        except BaseException:
            self.close()
            raise


class _ForwardInTLS(http.client.HTTPConnection):
    """Plain HTTP through an ``https://`` proxy: the absolute-URL requests (and their
    Proxy-Authorization) go inside TLS to the proxy."""

    def __init__(self, host, port, timeout, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout)
        self._context = context

    def connect(self):
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)
