"""``s3fuse status [MOUNTPOINT] [--json]``: what the mounts' status files say."""
from __future__ import annotations

import json
import os
import sys

from .. import statusfile
from ..commandline import Parsed
from ..progress import render_status


def run(parsed: Parsed) -> int:
    as_json = bool(parsed.get("json"))
    targets = parsed.positionals
    entries = [statusfile.read(os.path.abspath(t)) for t in targets] if targets else statusfile.read_all()
    entries = [e for e in entries if e]
    if targets and not entries:
        sys.stderr.write(f"s3fuse: no s3fuse mount at {targets[0]}\n")
        return 1
    if not entries and not as_json:
        print("no s3fuse mounts")
        return 0
    if as_json:
        print(json.dumps(entries if not targets else entries[0], indent=1, sort_keys=True))
        return 0
    for entry in entries:
        print(render_status(entry))
    return 0
