"""``python -m data_modules.debian_docs prepare --out DIR ...`` (see :mod:`.cli`)."""

import sys

from data_modules.debian_docs.cli import main

sys.exit(main())
