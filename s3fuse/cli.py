"""Kept for the mount(8) helpers written by earlier versions (``from s3fuse.cli import
main``); the command line lives in ``s3fuse.app``."""
from s3fuse.app.main import main

__all__ = ["main"]

if __name__ == "__main__":
    import sys
    sys.exit(main())
