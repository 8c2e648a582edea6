#!/usr/bin/env bash
# Install the Debian packages needed to run a single-node Ceph RGW (S3 server)
# for s3fuse tests and benchmarks. Idempotent: does nothing when already there.
set -euo pipefail

PKGS=(radosgw ceph-mon ceph-osd curl)
# Binaries we need from those packages.
BINS=(radosgw radosgw-admin ceph-mon ceph-osd ceph-authtool monmaptool ceph curl)

missing=0
for b in "${BINS[@]}"; do
    command -v "$b" >/dev/null 2>&1 || { missing=1; break; }
done
if [ "$missing" = 0 ]; then
    echo "install-rgw: ceph rgw packages already installed" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-rgw: installing ${PKGS[*]}" >&2
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >&2

for b in "${BINS[@]}"; do
    command -v "$b" >/dev/null 2>&1 || { echo "install-rgw: $b still missing after install" >&2; exit 1; }
done
echo "install-rgw: done" >&2
