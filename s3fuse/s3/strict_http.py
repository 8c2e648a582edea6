"""Refuse HTTP responses whose header block was cut off by the connection closing.

``http.client`` (used by urllib3, hence botocore, and by ``s3fuse.transport``) takes end of
file inside the response headers as the end of the headers: a response cut there looks
complete, with the headers after the cut missing and an empty body.  For S3 that is a
wrong answer, not an error: an empty ListObjectsV2 (a directory that seems not to exist
-> ENOENT), a 200 HEAD without Content-Length or ETag (a 0-byte file).  ``install()``
makes such a response raise ``RemoteDisconnected`` - a connection error that botocore
retries like any other, and that ``transport`` answers as a connection error too.
"""
from __future__ import annotations

import email.parser
import http.client

_installed = False


def _strict_parse_headers(fp, _class=http.client.HTTPMessage):
    headers = []
    while True:
        line = fp.readline(http.client._MAXLINE + 1)
        if len(line) > http.client._MAXLINE:
            raise http.client.LineTooLong("header line")
        if not line:
            raise http.client.RemoteDisconnected("connection closed inside the response headers")
        headers.append(line)
        if len(headers) > http.client._MAXHEADERS:
            raise http.client.HTTPException(f"got more than {http.client._MAXHEADERS} headers")
        if line in (b"\r\n", b"\n"):
            break
    return email.parser.Parser(_class=_class).parsestr(b"".join(headers).decode("iso-8859-1"))


def install():
    """Idempotent; affects the whole process (the daemon talks HTTP only to S3)."""
    global _installed
    if not _installed:
        http.client.parse_headers = _strict_parse_headers
        _installed = True
