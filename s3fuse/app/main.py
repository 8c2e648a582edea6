"""``s3fuse COMMAND ...`` and ``mount.s3fuse SOURCE MOUNTPOINT``: find the command's row
(``usage.COMMANDS``, or the mount), parse argv against it, run the command's module."""
from __future__ import annotations

import importlib
import sys

from .. import __version__
from ..errors import ConfigError
from . import usage
from .commandline import parse

# command name -> module under s3fuse.app.commands (imported only when run)
_MODULES = {"status": "status", "sync": "sync", "resume": "resume", "uploads": "uploads",
            "versions": "versions", "demo": "demo", "install-helper": "install_helper", "man": "man"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in usage.COMMANDS:
        command, argv = usage.COMMANDS[argv[0]], argv[1:]
        run = importlib.import_module(f".commands.{_MODULES[command.name]}", __package__).run
    else:
        if any(a in ("-h", "--help") for a in argv):
            sys.stdout.write(usage.usage())
            return 0
        if "--version" in argv:
            print(f"s3fuse {__version__}")
            return 0
        command = usage.MOUNT
        from .mount import run
    try:
        parsed = parse(command, argv)
    except ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\n")
        return 2
    return run(parsed)


if __name__ == "__main__":
    sys.exit(main())
