"""``python -m exegpt``: the ``exegpt`` command."""

import sys

from exegpt.cli import main

if __name__ == "__main__":
    sys.exit(main())
