"""Static credentials resolved without botocore (s3/static_keys.py): the cases botocore's
chain would answer with a key pair, in its order; everything else is left to botocore."""
from __future__ import annotations

from s3fuse.s3.static_keys import resolve


def env_with(tmp_path, creds: str = "", config: str = "", **more) -> dict:
    (tmp_path / "credentials").write_text(creds)
    (tmp_path / "config").write_text(config)
    return dict(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"), AWS_CONFIG_FILE=str(tmp_path / "config"),
                **more)


def keys(found):
    c = found.credentials.get_frozen_credentials()
    return c.access_key, c.secret_key, c.token


def test_given_keys_first(tmp_path):
    env = env_with(tmp_path, "[default]\naws_access_key_id = F\naws_secret_access_key = FS\n",
                   AWS_ACCESS_KEY_ID="E", AWS_SECRET_ACCESS_KEY="ES")
    assert keys(resolve(None, "G", "GS", environ=env)) == ("G", "GS", None)


def test_environment_then_files(tmp_path):
    env = env_with(tmp_path, "[default]\naws_access_key_id = F\naws_secret_access_key = FS\n",
                   "[default]\nregion = eu-west-3\nca_bundle = /ca.pem\n",
                   AWS_ACCESS_KEY_ID="E", AWS_SECRET_ACCESS_KEY="ES", AWS_SESSION_TOKEN="T")
    found = resolve(environ=env)
    assert keys(found) == ("E", "ES", "T") and found.region == "eu-west-3" and found.ca_bundle == "/ca.pem"
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    assert keys(resolve(environ=env)) == ("F", "FS", None)
    assert "FS" not in repr(resolve(environ=env).credentials)


def test_a_named_profile_skips_the_environment(tmp_path):
    env = env_with(tmp_path, "[work]\naws_access_key_id = W\naws_secret_access_key = WS\n",
                   "[profile work]\nregion = ap-south-1\n", AWS_ACCESS_KEY_ID="E", AWS_SECRET_ACCESS_KEY="ES")
    found = resolve("work", environ=env)
    assert keys(found) == ("W", "WS", None) and found.region == "ap-south-1"
    env["AWS_DEFAULT_REGION"] = "us-west-2"
    assert resolve("work", environ=env).region == "us-west-2"


def test_config_file_keys(tmp_path):
    env = env_with(tmp_path, "", "[profile p]\naws_access_key_id = C\naws_secret_access_key = CS\n"
                   "aws_session_token = CT\n", AWS_PROFILE="p")
    assert keys(resolve(environ=env)) == ("C", "CS", "CT")


def test_everything_else_is_botocores(tmp_path):
    role = "[profile r]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n"
    process = "[default]\ncredential_process = /bin/true\n"
    sso = "[default]\nsso_session = s\nsso_account_id = 1\n"
    for config, kwargs in ((role, {"AWS_PROFILE": "r"}), (process, {}), (sso, {}),
                           ("", {}),                                        # no keys: instance role, anonymous
                           ("", {"AWS_PROFILE": "missing"}),                # botocore says it is not found
                           ("", {"AWS_ACCESS_KEY_ID": "E", "AWS_SECRET_ACCESS_KEY": "ES",
                                 "AWS_CREDENTIAL_EXPIRATION": "2030-01-01T00:00:00Z"}),
                           ("", {"AWS_WEB_IDENTITY_TOKEN_FILE": "/t", "AWS_ROLE_ARN": "arn"})):
        env = env_with(tmp_path, "[default]\naws_access_key_id = F\naws_secret_access_key = FS\n"
                       if config in (role,) else "", config, **kwargs)
        assert resolve(environ=env) is None, (config, kwargs)
    assert resolve("nope", environ=env_with(tmp_path)) is None
    assert resolve(None, "only-access", None, environ=env_with(tmp_path)) is None
