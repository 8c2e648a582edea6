"""``s3fuse install-helper``: write the mount(8) helpers (and the man page) for this
Python and this s3fuse."""
from __future__ import annotations

import sys

from ..commandline import Parsed
from ..install import install


def run(parsed: Parsed) -> int:
    try:
        written = install(sbin_dir=parsed.get("sbin_dir", "/sbin"),
                          man_dir=None if parsed.get("no_man") else parsed.get("man_dir", "/usr/local/share/man"))
    except OSError as exc:
        sys.stderr.write(f"s3fuse: install-helper: {exc.filename or ''}: {exc.strerror or exc}\n")
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0
