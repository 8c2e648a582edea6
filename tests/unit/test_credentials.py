"""s3.chain.Credentials around botocore's own RefreshableCredentials (issue #23 item 2), no
server: a source that fails is reported in one line and asked again only every
RETRY_AFTER seconds, a stuck one times out, expired keys are EACCES, refusals renew the
keys at once and are reported once per access key."""
from __future__ import annotations

import datetime
import errno
import logging
import threading
import time

import pytest
from botocore.credentials import Credentials as StaticCredentials
from botocore.credentials import RefreshableCredentials

from s3fuse import errors
from s3fuse.s3 import chain
from s3fuse.s3.objects import error_kind


def iso(seconds_ahead: float) -> str:
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_ahead)
    return at.isoformat()


class Source:
    """A refresh function: hands out ``key`` expiring ``ahead`` seconds from now, or fails."""

    def __init__(self, key="AKIAFIRST0001", ahead=300.0):
        self.key, self.ahead, self.error, self.calls, self.block = key, ahead, None, 0, None

    def __call__(self):
        self.calls += 1
        if self.block is not None:
            self.block.wait(10)
        if self.error is not None:
            raise self.error
        return {"access_key": self.key, "secret_key": "secret-" + self.key, "token": None,
                "expiry_time": iso(self.ahead)}


def refreshable(source: Source, method="custom-process", profile="p"):
    inner = RefreshableCredentials.create_from_metadata(source(), source, method)
    source.calls = 0
    return chain.Credentials(inner, profile)


def lines(caplog, text):
    return [r for r in caplog.records if text in r.getMessage()]


def test_every_fetch_in_the_advisory_window_asks_the_source_and_takes_new_keys():
    source = Source(ahead=12 * 60)          # between the mandatory (10) and advisory (15) windows
    creds = refreshable(source)
    assert creds.get_frozen_credentials().access_key == "AKIAFIRST0001"
    source.key = "AKIASECOND002"
    assert creds.get_frozen_credentials().access_key == "AKIASECOND002"
    assert source.calls == 2 and creds.last_access == "AKIASECOND002"


def test_a_failing_source_is_one_line_then_eacces_and_asked_again_only_every_retry_after(caplog, monkeypatch):
    monkeypatch.setattr(chain, "RETRY_AFTER", 0.5)
    source = Source(ahead=5 * 60)           # mandatory window: every request needs new keys
    creds = refreshable(source)
    source.error = RuntimeError("token service\nunreachable")
    with caplog.at_level(logging.INFO):
        for _ in range(20):
            with pytest.raises(errors.CredentialsUnavailable) as info:
                creds.get_frozen_credentials()
            assert info.value.errno == errno.EACCES and errors.is_quiet(info.value)
        assert source.calls == 1, "asked again before RETRY_AFTER"
        (line,) = lines(caplog, "could not be renewed")
        message = line.getMessage()
        assert "credential_process (profile 'p')" in message and "token service unreachable" in message
        assert "run the command by hand" in message and "requests fail with EACCES" in message
        assert not [r for r in caplog.records if r.name.startswith("botocore")], "botocore's warnings filtered"
        time.sleep(0.6)
        with pytest.raises(errors.CredentialsUnavailable):
            creds.get_frozen_credentials()
        assert source.calls == 2 and len(lines(caplog, "could not be renewed")) == 1
        source.error = None
        time.sleep(0.6)
        assert creds.get_frozen_credentials().access_key == "AKIAFIRST0001"
        assert len(lines(caplog, "renewed again")) == 1


def test_advisory_failures_keep_the_current_keys_and_say_until_when(caplog):
    source = Source(ahead=12 * 60)
    creds = refreshable(source)
    source.error = OSError("no route")
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            assert creds.get_frozen_credentials().access_key == "AKIAFIRST0001"
    (line,) = lines(caplog, "could not be renewed")
    assert "requests go on with the current keys" in line.getMessage()


def test_a_stuck_refresh_times_out_and_no_second_one_is_started(caplog):
    source = Source(ahead=5 * 60)
    creds = refreshable(source)
    creds.refresh_timeout = 0.2
    source.block = threading.Event()
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        with pytest.raises(errors.CredentialsUnavailable, match="no answer within"):
            creds.get_frozen_credentials()
    assert time.monotonic() - started < 2
    chain_failure = creds._failed_at
    creds._failed_at = chain_failure - 10     # past RETRY_AFTER: asked again, but the first still hangs
    with pytest.raises(errors.CredentialsUnavailable, match="still not answered"):
        creds.get_frozen_credentials()
    assert source.calls == 1
    source.block.set()


def test_keys_handed_out_already_expired_are_a_failure_of_the_source(caplog):
    source = Source(ahead=5 * 60)
    creds = refreshable(source)
    source.ahead = -60
    with pytest.raises(errors.CredentialsUnavailable, match="gave keys that expired at"):
        creds.get_frozen_credentials()


def test_a_refusal_renews_the_keys_at_once_and_is_worth_another_attempt_if_they_changed(caplog):
    source = Source(ahead=3600)             # not due for a refresh: only a forced one renews
    creds = refreshable(source)
    signed = creds.get_frozen_credentials().access_key
    source.key = "AKIAROTATED03"
    refusal = error_kind("InvalidAccessKeyId", 403)("GET 'k': 403 InvalidAccessKeyId")
    assert isinstance(refusal, errors.CredentialsRefused)
    assert creds.renewed_after_refusal(signed, refusal)
    assert creds.get_frozen_credentials().access_key == "AKIAROTATED03" and source.calls == 1
    # refused again with the new keys: no second forced refresh within RETRY_AFTER, nothing new
    assert not creds.renewed_after_refusal("AKIAROTATED03", refusal) and source.calls == 1
    with caplog.at_level(logging.INFO):
        for _ in range(10):
            creds.refused(refusal)
        creds.refused(errors.AccessDenied("a policy says no"))
    (line,) = lines(caplog, "refuses the credentials")
    assert "...ED03" in line.getMessage() and "secret" not in line.getMessage()
    creds.worked()
    with caplog.at_level(logging.INFO):
        creds.refused(refusal)
    assert len(lines(caplog, "refuses the credentials")) == 2, "a new episode after a success"


def test_a_403_without_a_reason_is_diagnosed_by_a_listing_at_most_every_retry_after():
    creds = chain.Credentials(StaticCredentials("AKIASTATIC004", "s", method="env"))
    probes = []

    def probe():
        probes.append(1)
        raise error_kind("InvalidAccessKeyId", 403)("GET None: 403 InvalidAccessKeyId")
    creds.probe = probe
    plain = errors.AccessDenied("head 'k': 403")
    why = creds.diagnose(plain)
    assert isinstance(why, errors.CredentialsRefused) and "InvalidAccessKeyId to a listing of the bucket" in str(why)
    assert creds.diagnose(plain) is plain and len(probes) == 1
    assert not creds.refreshable and not creds.renewed_after_refusal("AKIASTATIC004", why)
    assert creds.source == "the environment (AWS_ACCESS_KEY_ID)"


@pytest.mark.parametrize("method, words", [
    ("container-role", "AWS_CONTAINER_CREDENTIALS_FULL_URI"), ("assume-role-with-web-identity", "IRSA"),
    ("sso", "aws sso login"), ("iam-role", "IMDS"), ("explicit", "passwd_file"), ("new-thing", "new-thing")])
def test_each_source_is_named_with_what_to_do(method, words):
    where, todo = chain.source_of(method, "prof")
    assert words in where + todo
