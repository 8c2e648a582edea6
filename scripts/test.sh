#!/usr/bin/env bash
# Install s3fuse with its test tools, then run the whole test suite (real FUSE mounts
# against a moto server and a single-node Ceph RGW; S3FUSE_TEST_SERVERS=moto|rgw picks one),
# with the POSIX conformance tier (pjdfstest's CI groups on RGW; S3FUSE_CONFORMANCE=all for
# every group, =0 to leave it out; S3FUSE_CONFORMANCE_SERVERS=rgw,moto for both servers).
# The tests run in parallel, in S3FUSE_TEST_WORKERS pytest-xdist workers (default 4: the
# tests mostly wait - on timeouts, retries, servers - so 4 fit on 2 cores; 1 or 0: one
# process, no xdist).  Each worker starts its own moto and RGW.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export S3FUSE_CONFORMANCE="${S3FUSE_CONFORMANCE:-ci}"
workers="${S3FUSE_TEST_WORKERS:-4}"
parallel=()
case "$workers" in
  0|1) ;;
  *) parallel=(-n "$workers" --dist loadgroup) ;;
esac
exec python3 -m pytest -q -p no:cacheprovider ${parallel[@]+"${parallel[@]}"} "$@"
