"""``python -m optimodel.builder``: the same as ``optimodel build``."""

import sys

from optimodel.builder.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
