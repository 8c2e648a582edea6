#!/usr/bin/env bash
# Install s3fuse, start a local S3 server with a demo bucket and mount it (Ctrl-C ends it).
# Installs only what the demo needs: libfuse 3, s3fuse and the moto server (no Ceph).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --demo
exec s3fuse demo "${1:-/tmp/s3fuse-demo}"
