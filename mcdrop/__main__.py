"""``python -m mcdrop``: the same as the ``mcdrop`` command."""

import sys

from mcdrop.cli import main

if __name__ == "__main__":
    sys.exit(main())
