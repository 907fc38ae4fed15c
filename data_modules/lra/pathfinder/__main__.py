"""``python -m data_modules.lra.pathfinder generate --out DIR ...`` (see :mod:`.cli`)."""

import sys

from data_modules.lra.pathfinder.cli import main

sys.exit(main())
