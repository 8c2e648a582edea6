"""python3 -m bench: the peer benchmark (bench/cli.py)."""

import sys

from .cli import main

sys.exit(main())
