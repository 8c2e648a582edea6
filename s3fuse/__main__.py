"""``python3 -m s3fuse ...``: the same as the ``s3fuse`` command."""
import sys

from s3fuse.app.main import main

sys.exit(main())
