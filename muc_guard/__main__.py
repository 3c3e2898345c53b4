"""``python -m muc_guard``: the same as the ``muc-guard`` command (see :mod:`muc_guard.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
