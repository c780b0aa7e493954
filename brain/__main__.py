"""``python -m aerie.brain``: the `aerie` command without its console script."""

import sys

from aerie.brain.cli import main

sys.exit(main())
