#!/usr/bin/env bash
# Install s3fuse, start a local S3 server with a demo bucket and mount it (Ctrl-C ends it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
exec s3fuse demo "${1:-/tmp/s3fuse-demo}"
