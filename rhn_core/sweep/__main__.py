"""``python -m rhn_core.sweep``: see ``rhn_core.sweep.cli``."""

import sys

from .cli import main

sys.exit(main())
