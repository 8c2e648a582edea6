"""``s3fuse man [--output=FILE]``: the mount.s3fuse(8) man page as roff."""
from __future__ import annotations

import sys

from ..commandline import Parsed
from ..manpage import render


def run(parsed: Parsed) -> int:
    output = parsed.get("output")
    if output:
        with open(output, "w") as f:
            f.write(render())
    else:
        sys.stdout.write(render())
    return 0
