"""One module per ``s3fuse COMMAND`` (the mount itself is ``app/mount.py``); each has
``run(parsed) -> exit code``."""
