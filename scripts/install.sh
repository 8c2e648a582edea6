#!/usr/bin/env bash
# Install s3fuse and what it needs on Debian/Ubuntu (run as root):
#   scripts/install.sh            libfuse 3 + s3fuse (pip, editable) + the mount(8) helpers
#                                 (/sbin/mount.s3fuse, /sbin/mount.fuse.s3fuse) + the man page
#   scripts/install.sh --demo     + the local S3 server the demo runs (moto), nothing else
#   scripts/install.sh --test     + test tools (pytest, moto server, hypothesis, s3fs-fuse, rsync,
#                                   man-db, pjdfstest's build tools, the aws CLI in a venv,
#                                   tinyproxy and openssl for the proxy and HTTPS tests) and
#                                   the Ceph RGW packages of the real-server test tier
#   scripts/install.sh --bench    + benchmark peers (s3fs-fuse, rclone), fio and matplotlib
# SBIN_DIR and MAN_DIR (environment) move the helpers and the man page elsewhere
# (default /sbin and /usr/local/share/man).
set -euo pipefail
cd "$(dirname "$0")/.."
want_demo=0; want_test=0; want_bench=0
for arg in "$@"; do
  case "$arg" in
    --demo) want_demo=1 ;;
    --test) want_test=1 ;;
    --bench) want_bench=1 ;;
    *) echo "unknown argument $arg (expected --demo, --test, --bench)" >&2; exit 2 ;;
  esac
done
pkgs="fuse3 libfuse3-3 ca-certificates"
[ $want_test = 1 ] && pkgs="$pkgs libfuse2 s3fs rsync procps psmisc attr man-db util-linux"
# the conformance tier builds pjdfstest (../shared/tools) and runs it with prove (perl)
[ $want_test = 1 ] && pkgs="$pkgs autoconf automake libtool gcc make perl"
[ $want_test = 1 ] && pkgs="$pkgs tinyproxy openssl"     # the proxy and HTTPS tests
[ $want_bench = 1 ] && pkgs="$pkgs libfuse2 s3fs procps fio"     # fio: python3 -m bench.fio
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $missing
fi
# The real-server test tier: a single-node Ceph RGW (radosgw, ceph-mon, ceph-osd).
[ $want_test = 1 ] && bash tests/support/servers/install-rgw.sh
# Other writers of a bucket for the interop tests (the aws CLI, in a venv of its own).
[ $want_test = 1 ] && bash tests/support/servers/install-tools.sh
extras=""
[ $want_demo = 1 ] && extras="demo"
[ $want_test = 1 ] && extras="${extras:+$extras,}test"
[ $want_bench = 1 ] && extras="${extras:+$extras,}bench"
python3 -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
# mount(8) finds helpers named mount.TYPE in /sbin (fstab type "s3fuse" or "fuse.s3fuse")
# and runs them with an empty environment: install-helper writes one that names this
# Python and this checkout.  It also writes the man page (man mount.s3fuse).
man_dir="${MAN_DIR:-/usr/local/share/man}"
python3 -m s3fuse install-helper --sbin-dir="${SBIN_DIR:-/sbin}" --man-dir="$man_dir"
if command -v mandb >/dev/null 2>&1; then mandb -q "$man_dir" >/dev/null 2>&1 || true; fi
echo "s3fuse installed: $(command -v s3fuse || echo "python3 -m s3fuse")"
