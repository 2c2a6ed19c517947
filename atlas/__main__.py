"""``python -m atlas``: the same as the ``atlas`` command."""

import sys

from atlas.runtime.cli import main

sys.exit(main())
