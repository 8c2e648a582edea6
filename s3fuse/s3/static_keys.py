"""Static credentials found without botocore: importing boto3/botocore and building a
session costs an idle mount ~25 MiB of its RSS (docs/design/memory.md), and the data
path (``transport``) needs only a key pair.

``resolve`` answers the cases where botocore's own chain would find a static key pair
for sure, in botocore's order; anything else is None and botocore's chain decides
(instance roles, containers, web identity, SSO, ``credential_process``, assume-role,
``AWS_CREDENTIAL_EXPIRATION``, a profile that is not there, a file it cannot parse):

1. keys given (``-o passwd_file=``, the caller's access/secret key);
2. unless ``-o profile=`` names a profile (botocore then skips the environment):
   ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (token ``AWS_SECURITY_TOKEN`` or
   ``AWS_SESSION_TOKEN``);
3. the profile (``-o profile=``, ``AWS_DEFAULT_PROFILE``, ``AWS_PROFILE``, ``default``):
   ``aws_access_key_id``/``aws_secret_access_key`` in the shared credentials file
   (``AWS_SHARED_CREDENTIALS_FILE``, ``~/.aws/credentials``), else in the config file
   (``AWS_CONFIG_FILE``, ``~/.aws/config``, section ``[profile NAME]``) - provided the
   profile names no other source (role_arn, credential_process, sso_*, web identity).

The region (``AWS_DEFAULT_REGION``, the profile's ``region``) and CA bundle
(``AWS_CA_BUNDLE``, the profile's ``ca_bundle``) come with it, as botocore reads them.
"""
from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from typing import Optional

# Profile settings that make botocore get credentials some other way than a key pair.
_OTHER_SOURCES = ("role_arn", "source_profile", "credential_source", "credential_process",
                  "web_identity_token_file", "sso_session", "sso_start_url", "sso_account_id",
                  "sso_role_name", "login_session")
_OTHER_ENV = ("AWS_CREDENTIAL_EXPIRATION", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")


@dataclass(frozen=True)
class StaticCredentials:
    """A key pair, with botocore Credentials' interface as ``sigv4.Signer`` uses it."""
    access_key: str
    secret_key: str
    token: Optional[str] = None
    method: str = "static"

    def get_frozen_credentials(self) -> "StaticCredentials":
        return self

    def __repr__(self):          # never the secret
        return f"StaticCredentials({self.access_key[:4]}..., {self.method})"


@dataclass(frozen=True)
class Resolved:
    credentials: StaticCredentials
    region: Optional[str]
    ca_bundle: Optional[str]


def _read(path: str) -> Optional[dict]:
    """{section: {key: value}} of an AWS ini file ({} if absent); None if unreadable."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        return {}
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    return {name: dict(parser.items(name)) for name in parser.sections()}


def _token(values: dict, names) -> Optional[str]:
    for name in names:
        if values.get(name):
            return values[name]
    return None


def resolve(profile: Optional[str] = None, access_key: Optional[str] = None, secret_key: Optional[str] = None,
            environ=None) -> Optional[Resolved]:
    env = os.environ if environ is None else environ
    creds_file = _read(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials")
    config_file = _read(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    if creds_file is None or config_file is None:
        return None
    name = profile or env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE") or "default"
    in_config = config_file.get(f"profile {name}")
    if in_config is None and name == "default":
        in_config = config_file.get("default")
    in_creds = creds_file.get(name)
    if (profile or name != "default") and in_config is None and in_creds is None:
        return None             # botocore says the profile is not found
    merged = dict(in_config or {}, **(in_creds or {}))
    region = env.get("AWS_DEFAULT_REGION") or merged.get("region") or None
    ca_bundle = env.get("AWS_CA_BUNDLE") or merged.get("ca_bundle") or None

    def found(access, secret, token, method):
        return Resolved(StaticCredentials(access, secret, token or None, method), region, ca_bundle)

    if access_key and secret_key:
        return found(access_key, secret_key, None, "explicit")
    if access_key or secret_key:
        return None
    if not profile and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        if env.get("AWS_CREDENTIAL_EXPIRATION"):
            return None         # refreshable environment credentials
        return found(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                     _token(env, ("AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")), "env")
    if any(env.get(v) for v in _OTHER_ENV) or any(k in merged for k in _OTHER_SOURCES):
        return None
    for values, method in ((in_creds or {}, "shared-credentials-file"), (in_config or {}, "config-file")):
        if values.get("aws_access_key_id") and values.get("aws_secret_access_key"):
            return found(values["aws_access_key_id"], values["aws_secret_access_key"],
                         _token(values, ("aws_security_token", "aws_session_token")), method)
    return None
