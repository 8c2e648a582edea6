"""From a parsed command line to a checked configuration and a client: the mount
configuration of a command that names a bucket, the ObjectClient of that
configuration, and the one-line wording of what stops a command from reaching the bucket."""
from __future__ import annotations

import os

from .. import errors
from ..config import MountConfig, apply_option, parse_source, resolve_cache_dir
from ..s3 import ObjectClient
from ..s3.credentials import read_passwd_file
from ..s3.object_options import ObjectOptions
from ..s3.snapshot import SnapshotClient
from .commandline import Parsed


def mount_config(parsed: Parsed) -> MountConfig:
    """The MountConfig of ``BUCKET[:/PREFIX] [MOUNTPOINT] -o ...`` (commands that do not
    mount have no mountpoint)."""
    cfg = MountConfig()
    cfg.foreground = bool(parsed.get("foreground") or parsed.get("debug"))
    cfg.debug = bool(parsed.get("debug"))
    cfg.bucket, cfg.prefix = parse_source(parsed.positionals[0])
    if len(parsed.positionals) > 1:
        cfg.mountpoint = os.path.abspath(parsed.positionals[1])
    for option in parsed.options:
        apply_option(cfg, option)
    if cfg.allow_other:
        cfg.default_permissions = True
    if cfg.snapshot is not None:
        cfg.ro = True                     # a bucket as it was: nothing written (also the kernel's ro)
    resolve_cache_dir(cfg)
    return cfg


def check_credentials_files(cfg: MountConfig):
    """The files the client will read, checked before anything else happens."""
    if cfg.passwd_file:
        read_passwd_file(cfg.passwd_file, cfg.bucket)
    ObjectOptions.from_config(cfg)        # the SSE-C key file: readable, 0600, 256 bits
    if cfg.ca_bundle and not os.path.isfile(cfg.ca_bundle):
        raise errors.ConfigError(f"ca_bundle {cfg.ca_bundle}: no such file")


def build_client(cfg: MountConfig, max_connections: int = 64):
    """The ObjectClient of ``cfg``; with ``-o snapshot=`` the bucket as it was then
    (``s3.snapshot.SnapshotClient``: its probe also checks that the bucket keeps versions)."""
    access = secret = None
    if cfg.passwd_file:
        access, secret = read_passwd_file(cfg.passwd_file, cfg.bucket)
    client = ObjectClient(cfg.bucket, endpoint=cfg.endpoint, region=cfg.region, profile=cfg.profile,
                          access_key=access, secret_key=secret, path_style=cfg.addressing_path_style,
                          max_connections=max_connections, max_attempts=cfg.retries,
                          connect_timeout=cfg.connect_timeout, read_timeout=cfg.request_timeout,
                          ca_bundle=cfg.ca_bundle, options=ObjectOptions.from_config(cfg))
    return SnapshotClient(client, cfg.snapshot, ttl=cfg.dir_ttl) if cfg.snapshot is not None else client


def describe_error(exc: Exception, cfg: MountConfig) -> str:
    if isinstance(exc, errors.NoSuchBucket):
        return f"bucket {cfg.bucket!r} does not exist"
    if isinstance(exc, (errors.ClockSkewed, errors.CredentialsExpired)):
        return f"bucket {cfg.bucket!r}: {errors.describe(exc)}"
    if isinstance(exc, errors.AccessDenied):
        return f"access to bucket {cfg.bucket!r} denied: check the credentials ({exc})"
    if isinstance(exc, errors.Unreachable):
        return f"cannot reach the S3 endpoint {cfg.endpoint or '(AWS)'}: {exc}"
    if isinstance(exc, errors.NoCredentials):
        return "no credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, -o profile= or -o passwd_file="
    return str(exc) or exc.__class__.__name__


class CommandFailed(Exception):
    """Already reported to the user in one line; exit with ``code``."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def offline_client(parsed: Parsed):
    """(cfg, checked client) for a command that talks to the bucket without mounting;
    a problem is reported in one line and raised as CommandFailed (2: bad input, 1: the
    bucket cannot be reached)."""
    import sys
    try:
        cfg = mount_config(parsed)
        check_credentials_files(cfg)
        client = build_client(cfg)
        client.probe()
    except errors.ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\n")
        raise CommandFailed(2) from None
    except Exception as exc:
        sys.stderr.write(f"s3fuse: {describe_error(exc, cfg)}\n")
        raise CommandFailed(1) from None
    return cfg, client
