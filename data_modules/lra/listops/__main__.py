"""``python -m data_modules.lra.listops generate --out DIR ...`` (see :mod:`.cli`)."""

import sys

from data_modules.lra.listops.cli import main

sys.exit(main())
