"""``python -m blase_specutils``: the ``blase-specutils`` command (see :mod:`.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":  # pragma: no branch
    sys.exit(main())
