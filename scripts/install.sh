#!/usr/bin/env bash
# Install s3fuse and what it needs on Debian/Ubuntu (run as root):
#   scripts/install.sh            libfuse 3 + s3fuse (pip, editable) + mount helpers
#   scripts/install.sh --test     + test tools (pytest, moto server, hypothesis, s3fs-fuse, rsync,
#                                   tinyproxy and openssl for the proxy and HTTPS tests)
#                                   and the Ceph RGW packages of the real-server test tier
#   scripts/install.sh --bench    + benchmark peers (s3fs-fuse, rclone) and matplotlib
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0; want_bench=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --bench) want_bench=1 ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done
pkgs="fuse3 libfuse3-3 ca-certificates"
[ $want_test = 1 ] && pkgs="$pkgs libfuse2 s3fs rsync procps psmisc attr tinyproxy openssl"
[ $want_bench = 1 ] && pkgs="$pkgs libfuse2 s3fs procps"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $missing
fi
# The real-server test tier: a single-node Ceph RGW (radosgw, ceph-mon, ceph-osd).
[ $want_test = 1 ] && bash tests/servers/install-rgw.sh
# Other writers of a bucket for the interop tests (the aws CLI, in a venv of its own).
[ $want_test = 1 ] && bash tests/servers/install-tools.sh
extras=""
[ $want_test = 1 ] && extras="test"
[ $want_bench = 1 ] && extras="${extras:+$extras,}bench"
python3 -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
# mount(8) finds helpers named mount.TYPE in /sbin (fstab type "s3fuse" or "fuse.s3fuse").
# It runs them with an empty environment (no PATH), so the helper names its interpreter.
python=$(python3 -c 'import sys; print(sys.executable)')
{ echo "#!$python"; tail -n +2 mount.s3fuse; } > /sbin/mount.s3fuse.new
chmod 0755 /sbin/mount.s3fuse.new && mv /sbin/mount.s3fuse.new /sbin/mount.s3fuse
ln -sf /sbin/mount.s3fuse /sbin/mount.fuse.s3fuse
echo "s3fuse installed: $(command -v s3fuse)"
