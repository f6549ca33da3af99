"""``python -m xattn_core``: the command line (xattn_core/app/cli.py)."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
