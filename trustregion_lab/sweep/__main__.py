"""``python -m trustregion_lab.sweep``: see `trustregion_lab.sweep.cli`."""

import sys

from trustregion_lab.sweep.cli import main

sys.exit(main())
