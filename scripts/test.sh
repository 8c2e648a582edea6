#!/usr/bin/env bash
# Install s3fuse with its test tools, then run the whole test suite (real FUSE mounts
# against a moto server and a single-node Ceph RGW; S3FUSE_TEST_SERVERS=moto|rgw picks one),
# with the POSIX conformance tier (pjdfstest's CI groups on RGW; S3FUSE_CONFORMANCE=all for
# every group, =0 to leave it out; S3FUSE_CONFORMANCE_SERVERS=rgw,moto for both servers).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export S3FUSE_CONFORMANCE="${S3FUSE_CONFORMANCE:-ci}"
exec python3 -m pytest -q -p no:cacheprovider "$@"
