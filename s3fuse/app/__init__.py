"""The programs: the command line (``main``, ``commandline``, ``usage``), the mount and
its daemon, the commands that do not mount (``commands/``), the man page and the
mount(8) helpers.  Only ``s3fuse.__main__`` and ``s3fuse.cli`` import this package."""
