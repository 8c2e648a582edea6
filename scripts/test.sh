#!/usr/bin/env bash
# Install s3fuse with its test tools, then run the whole test suite (real FUSE mounts
# against a moto server and a single-node Ceph RGW; S3FUSE_TEST_SERVERS=moto|rgw picks one).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
exec python3 -m pytest -q -p no:cacheprovider "$@"
