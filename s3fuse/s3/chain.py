"""The mount's credentials from botocore's chain, kept fresh for as long as the mount lives.

``Credentials`` wraps the object ``boto3.Session.get_credentials()`` gives (static keys,
or botocore's ``RefreshableCredentials`` for credential_process, container, web
identity, SSO, assume-role and instance-role credentials).  Every request takes its keys
from it, the hand-signed ones (``sigv4.Signer`` calls ``get_frozen_credentials`` per
request) and botocore's (its clients hold the same object), so keys that botocore renews
in its refresh windows (15 minutes before the expiry: one thread renews while the others
sign with the current keys; from 10 minutes before: every request waits for new ones)
are used by the next request.  What this module adds to botocore's refresh:

- a refresh that fails is reported in ONE line (the source and what to do), not one
  warning with a traceback per request (botocore's own is filtered out); a refresh that
  works again says so once;
- a failed source is asked again only every ``RETRY_AFTER`` seconds (meanwhile requests
  that need new keys fail at once), and a refresh that does not answer within
  ``REFRESH_TIMEOUT`` fails (no request hangs on a stuck credential_process or
  metadata endpoint);
- keys that come back already expired are a failure of the source (EACCES), not a
  RuntimeError;
- a request the server refuses for its credentials (InvalidAccessKeyId,
  SignatureDoesNotMatch, ExpiredToken...; a 403 without a reason, as a HEAD gets, is
  asked again as a one-key listing, which says) makes the keys be renewed at once (at most
  every ``RETRY_AFTER`` seconds) and is sent once more if that gave other keys (keys
  rotated or revoked before their expiry); refusals that go on are reported in one line
  per access key.

No secret is ever logged; access key ids appear by their last 4 characters.
"""
from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Optional

from .. import errors
from .objects import iso_timestamp

log = logging.getLogger("s3fuse.s3")

RETRY_AFTER = 5.0          # seconds before a source that failed is asked again
REFRESH_TIMEOUT = 20.0     # seconds a refresh may take before it counts as failed

# botocore's credential methods: where the keys come from, and what to do when they fail.
SOURCES = {
    "env": ("the environment (AWS_ACCESS_KEY_ID)", "set valid keys and remount"),
    "explicit": ("passwd_file", "put valid keys in the passwd_file and remount"),
    "shared-credentials-file": ("~/.aws/credentials", "put valid keys in the file and remount"),
    "config-file": ("~/.aws/config", "put valid keys in the file and remount"),
    "custom-process": ("the profile's credential_process",
                       "run the command by hand: it must print JSON keys (Version 1) with a future Expiration"),
    "container-role": ("the container credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI/RELATIVE_URI)",
                       "check the ECS agent or EKS Pod Identity agent and the authorization token"),
    "assume-role-with-web-identity": ("the web identity token (AWS_WEB_IDENTITY_TOKEN_FILE, EKS IRSA)",
                                      "check that the token file is renewed and the role trusts it"),
    "sso": ("AWS IAM Identity Center (SSO)", "run 'aws sso login' for the profile"),
    "assume-role": ("the profile's role_arn (AssumeRole)", "check the source credentials and the role's trust"),
    "iam-role": ("the instance role (instance metadata service)", "check the instance profile and that IMDS answers"),
}


def source_of(method: str, profile: Optional[str]) -> tuple:
    """(what the keys come from, what to do) for a botocore credential method."""
    where, todo = SOURCES.get(method, (f"botocore's {method} credentials", "check the AWS configuration"))
    if profile and method in ("custom-process", "sso", "assume-role", "shared-credentials-file", "config-file"):
        where += f" (profile {profile!r})"
    return where, todo


def short_key(access_key: Optional[str]) -> str:
    return f"...{access_key[-4:]}" if access_key else "(none)"


def expiry_seconds(value) -> float:
    """A refresh's expiry_time (ISO text or datetime) as seconds since the epoch, 0 if unknown."""
    if isinstance(value, datetime.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)).timestamp()
    return iso_timestamp(str(value or ""))


class _BotocoreRefreshNoise(logging.Filter):
    """botocore logs a failed advisory refresh with a traceback at every request: the
    line of ``Credentials`` says it once."""

    def filter(self, record):
        return not str(record.msg).startswith(("Refreshing temporary credentials failed",
                                               "Credentials were refreshed, but"))


_NOISE = _BotocoreRefreshNoise()


class Credentials:
    def __init__(self, inner, profile: Optional[str] = None, clock=time.time):
        self.inner = inner                       # botocore's object (botocore clients use it too)
        self.method = getattr(inner, "method", None) or "unknown"
        self.source, self.todo = source_of(self.method, profile)
        self.clock = clock                       # the local clock (expiry times are absolute)
        self.refresh_timeout = REFRESH_TIMEOUT
        self._lock = threading.Lock()            # guards the state below
        self._failure: Optional[str] = None      # the refresh failure being reported, if any
        self._failed_at = 0.0                    # monotonic time of the last failed refresh
        self._stuck: Optional[threading.Thread] = None   # a refresh that did not answer in time
        self._forced_at = -RETRY_AFTER           # monotonic time of the last forced refresh
        self._refused: set = set()               # access keys whose refusal was reported
        self.last_access = None                  # the access key of the latest request signed
        self.probe = None                        # a cheap request of the bucket (``diagnose``)
        self._probed_at = -RETRY_AFTER
        self.refreshes = 0                       # refreshes that gave keys (for the tests)
        refresh = getattr(inner, "_refresh_using", None)
        self.refreshable = callable(refresh)
        if self.refreshable:
            inner._refresh_using = lambda: self._refresh(refresh)
            logging.getLogger("botocore.credentials").addFilter(_NOISE)

    # -- what every request does --------------------------------------------------------
    def get_frozen_credentials(self):
        """The keys to sign one request with (botocore renews them in its windows)."""
        try:
            frozen = self.inner.get_frozen_credentials()
        except errors.FsError:
            raise
        except Exception as exc:     # a source that fails outside our refresh (botocore's own checks)
            raise errors.CredentialsUnavailable(f"credentials from {self.source}: {exc}") from exc
        self.last_access = frozen.access_key
        return frozen

    def worked(self):
        """A request signed with the current keys was answered: refusals reported so far
        are over."""
        if self._refused:
            with self._lock:
                self._refused.clear()

    def diagnose(self, exc: errors.AccessDenied) -> errors.AccessDenied:
        """A refusal that does not say why (a 403 to a HEAD has no body): the answer of
        ``probe`` (a one-key listing of the bucket) tells whether the credentials are
        refused (at most every RETRY_AFTER seconds; else ``exc`` as it is)."""
        if type(exc) is not errors.AccessDenied or self.probe is None:
            return exc
        now = time.monotonic()
        with self._lock:
            if now - self._probed_at < RETRY_AFTER:
                return exc
            self._probed_at = now
        try:
            self.probe()
        except errors.CredentialsRefused as refusal:
            why = " ".join(str(refusal).split()[2:])          # "GET None: 403 InvalidAccessKeyId"
            return type(refusal)(f"{exc}, and {why} to a listing of the bucket")
        except errors.FsError:
            pass
        return exc

    def renewed_after_refusal(self, signed_access: Optional[str], exc: errors.AccessDenied) -> bool:
        """A request signed with ``signed_access`` was refused (``exc``).  True if it is
        worth sending once more: the keys are other ones now (renewed at once, at most
        every RETRY_AFTER seconds, when the refusal was about the credentials)."""
        if isinstance(exc, errors.CredentialsRefused) and self.refreshable:
            now = time.monotonic()
            with self._lock:
                force = now - self._forced_at >= RETRY_AFTER
                if force:
                    self._forced_at = now
            if force:
                self._force_refresh()
        current = self.last_access
        try:
            current = self.get_frozen_credentials().access_key
        except errors.FsError:
            return False
        if signed_access is not None and current != signed_access:
            log.info("credentials from %s: request refused for access key %s, sent again with %s", self.source,
                     short_key(signed_access), short_key(current))
            return True
        return False

    def refused(self, exc: errors.AccessDenied):
        """A refusal for the credentials that stays: one line per access key."""
        if not isinstance(exc, errors.CredentialsRefused) or isinstance(exc, errors.CredentialsUnavailable):
            return
        key = self.last_access
        with self._lock:
            if key in self._refused:
                return
            self._refused.add(key)
        log.error("the server refuses the credentials from %s (access key %s): %s; the keys it hands out are not "
                  "valid on the server (revoked, rotated away, or for another endpoint): %s; until then requests "
                  "fail with EACCES", self.source, short_key(key), exc, self.todo)

    # -- botocore's refresh, wrapped -------------------------------------------------------
    def _force_refresh(self):
        inner = self.inner
        protected, lock = getattr(inner, "_protected_refresh", None), getattr(inner, "_refresh_lock", None)
        if protected is None or lock is None:
            return
        try:
            with lock:
                protected(is_mandatory=True)
        except Exception:           # reported by _refresh; the request keeps its refusal
            pass

    def _refresh(self, refresh):
        now = time.monotonic()
        with self._lock:
            if self._failure is not None and now - self._failed_at < RETRY_AFTER:
                raise errors.CredentialsUnavailable(self._failure)
            stuck = self._stuck is not None and self._stuck.is_alive()
        try:
            if stuck:
                raise TimeoutError("the previous refresh has still not answered")
            metadata = self._in_time(refresh)
            expiry = expiry_seconds((metadata or {}).get("expiry_time"))
            if expiry and expiry <= self.clock():
                raise ValueError(f"it gave keys that expired at {_utc(expiry)}")
        except Exception as exc:
            raise self._failed(exc) from exc
        self._worked(metadata, expiry)
        return metadata

    def _in_time(self, refresh):
        done, box = threading.Event(), {}

        def run():
            try:
                box["value"] = refresh()
            except BaseException as exc:      # handed to the waiting request
                box["error"] = exc
            finally:
                done.set()

        thread = threading.Thread(target=run, name="s3fuse-credentials", daemon=True)
        thread.start()
        if not done.wait(self.refresh_timeout):
            with self._lock:
                self._stuck = thread
            raise TimeoutError(f"no answer within {self.refresh_timeout:.0f} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _failed(self, exc: Exception) -> errors.CredentialsUnavailable:
        detail = " ".join(str(exc).split()) or exc.__class__.__name__     # one line (a process's stderr)
        message = f"credentials from {self.source} could not be renewed: {detail}"
        with self._lock:
            first = self._failure is None
            self._failure, self._failed_at = message, time.monotonic()
        if first:
            expiry = getattr(self.inner, "_expiry_time", None)
            left = expiry_seconds(expiry) - self.clock() if expiry else 0
            mandatory = getattr(self.inner, "_mandatory_refresh_timeout", 0)
            then = (f"requests go on with the current keys, which expire at {_utc(expiry_seconds(expiry))}, "
                    f"until {mandatory / 60:.0f} minutes before that" if left > mandatory
                    else "requests fail with EACCES until it works again")
            log.error("%s; %s; %s (asked again every %.0f s)", message, self.todo, then, RETRY_AFTER)
        return errors.CredentialsUnavailable(message)

    def _worked(self, metadata: dict, expiry: float):
        with self._lock:
            self.refreshes += 1
            was, self._failure = self._failure, None
        access = metadata.get("access_key")
        if was is not None:
            log.warning("credentials from %s renewed again (access key %s, expire at %s)", self.source,
                        short_key(access), _utc(expiry))
        elif access != getattr(self.inner, "_access_key", access):
            log.info("credentials from %s renewed: new access key %s, expire at %s", self.source,
                     short_key(access), _utc(expiry))


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds else "an unknown time"
