#!/usr/bin/env bash
# Tools the test suite uses as other writers of a bucket, that must not share the
# project's Python environment: the aws CLI (awscli pins its own botocore) in a venv of
# its own at /opt/s3fuse-awscli.  Idempotent.
set -euo pipefail
venv=/opt/s3fuse-awscli
if [ -x "$venv/bin/aws" ] && "$venv/bin/aws" --version >/dev/null 2>&1; then
    echo "install-tools: aws CLI already in $venv" >&2
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check awscli
"$venv/bin/aws" --version
