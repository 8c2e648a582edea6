"""Credentials from an s3fs-style passwd file (``ACCESS:SECRET`` or ``BUCKET:ACCESS:SECRET``).

Anything else comes from boto3's standard chain (env vars, ~/.aws files, instance role).
Secrets are never logged or put in error messages.
"""
from __future__ import annotations

import os
import stat
from typing import Optional, Tuple

from ..errors import ConfigError


def parse_passwd_line(line: str, bucket: str) -> Optional[Tuple[str, str, bool]]:
    """One line -> (access, secret, bucket_specific) or None (blank, comment, other bucket).
    Raises ValueError for a malformed line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    fields = line.split(":")
    if len(fields) == 2:
        access, secret = fields
        specific = False
    elif len(fields) == 3:
        owner, access, secret = fields
        if owner != bucket:
            return None
        specific = True
    else:
        raise ValueError("expected ACCESS:SECRET or BUCKET:ACCESS:SECRET")
    if not access or not secret:
        raise ValueError("empty access key or secret")
    return access, secret, specific


def read_passwd_file(path: str, bucket: str) -> Tuple[str, str]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"passwd_file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"passwd_file {path} is readable by group or others; chmod 600 it")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"passwd_file {path}: cannot read ({exc.__class__.__name__})") from None
    default = None
    for number, line in enumerate(lines, 1):
        try:
            parsed = parse_passwd_line(line, bucket)
        except ValueError as exc:
            raise ConfigError(f"passwd_file {path} line {number}: {exc}") from None
        if parsed is None:
            continue
        access, secret, specific = parsed
        if specific:
            return access, secret
        default = default or (access, secret)
    if default is None:
        raise ConfigError(f"passwd_file {path} has no credentials for bucket {bucket!r}")
    return default
