"""Conformance tier: pjdfstest on an s3fuse mount of each test server (moto, rgw).

Opt-in, as it takes minutes: ``S3FUSE_CONFORMANCE=ci`` runs the CI groups (mkdir rmdir
unlink rename chmod chown open truncate utimensat symlink), ``all`` every group, or a
comma-separated list of groups. ``S3FUSE_CONFORMANCE_TIMEOUT`` sets the seconds allowed
per group (default 600); ``S3FUSE_CONFORMANCE_JSON=DIR`` keeps each group's result there.

One fresh mount (``-o allow_other``: pjdfstest switches to other uids) per group. A group
fails if it hangs (timeout), if prove did not run, or if it has more failed subtests than
``baseline.json`` records for this server (a ratchet: lower the number when a fix lands).
The failed subtests, grouped by kind with their pjdfstest file:line, are in the test's
output. Standalone runs, and s3fs-fuse for comparison: run_pjdfstest.py --help.
"""
from __future__ import annotations

import json
import os

import pytest

from . import run_pjdfstest as pjd

BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baseline.json")


def selected_groups() -> list:
    value = os.environ.get("S3FUSE_CONFORMANCE", "").strip()
    if not value or value.lower() in ("0", "no", "false"):
        return []
    if value.lower() in ("1", "yes", "true", "ci"):
        return list(pjd.CI_GROUPS)
    if value.lower() == "all":
        return list(pjd.ALL_GROUPS)
    groups = [g.strip() for g in value.split(",") if g.strip()]
    unknown = [g for g in groups if g not in pjd.ALL_GROUPS]
    if unknown:
        raise pytest.UsageError(f"S3FUSE_CONFORMANCE: unknown pjdfstest groups {unknown} "
                                f"(known: ci, all, {', '.join(pjd.ALL_GROUPS)})")
    return groups


GROUPS = selected_groups()

# The tier costs minutes per server: by default it runs on the real server only.
SERVERS = [s.strip() for s in os.environ.get("S3FUSE_CONFORMANCE_SERVERS", "rgw").split(",") if s.strip()]

pytestmark = [pytest.mark.skipif(not GROUPS, reason="conformance tier is opt-in: S3FUSE_CONFORMANCE=ci|all|GROUP,..."),
              pytest.mark.servers(*SERVERS)]


def baseline(kind: str) -> dict:
    try:
        with open(BASELINE) as f:
            return json.load(f).get("s3fuse", {}).get(kind, {})
    except FileNotFoundError:
        return {}


@pytest.fixture(scope="session")
def pjdfstest_src():
    if os.geteuid() != 0:
        pytest.skip("pjdfstest must run as root")
    missing = pjd.missing_tools()
    if missing:
        pytest.skip("pjdfstest needs " + ", ".join(missing) + " (scripts/install.sh --test)")
    return pjd.build_pjdfstest()


# seconds a group takes on RGW (a parallel run): the long ones start first
SECONDS = {"chown": 105, "rename": 100, "open": 65, "chmod": 40, "unlink": 30}


@pytest.mark.parametrize("group", [pytest.param(g, marks=[pytest.mark.long(SECONDS[g])] if g in SECONDS else ())
                                   for g in GROUPS or ["none"]])
def test_pjdfstest(group, pjdfstest_src, s3_server, bucket, mounter):
    timeout = float(os.environ.get("S3FUSE_CONFORMANCE_TIMEOUT", pjd.DEFAULT_TIMEOUT))
    m = mounter(bucket, options=["allow_other"])
    result = pjd.run_group(pjdfstest_src, m.path, group, timeout=timeout)
    print(pjd.format_table([result], title=f"pjdfstest {group} on s3fuse [{s3_server.kind}]"))
    print(pjd.format_signatures([result]))
    out_dir = os.environ.get("S3FUSE_CONFORMANCE_JSON")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"s3fuse-{s3_server.kind}-{group}.json"), "w") as f:
            json.dump(pjd.results_json([result], label=f"s3fuse-{s3_server.kind}", server=s3_server.kind,
                                       fs=pjd.detect_fs(m.path)), f, indent=1)
    assert result.status != "timeout", f"pjdfstest {group} hung: {result.error}"
    assert result.status != "error", f"pjdfstest {group} did not run: {result.error}"
    allowed = baseline(s3_server.kind).get(group)
    if allowed is not None:
        assert result.failed <= allowed, (
            f"pjdfstest {group}: {result.failed}/{result.total} subtests failed, baseline.json allows "
            f"{allowed}:\n{pjd.format_signatures([result])}")
