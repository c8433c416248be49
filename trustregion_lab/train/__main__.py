"""``python -m trustregion_lab.train``: see ``trustregion_lab.train.cli``."""

import sys

from trustregion_lab.train.cli import main

sys.exit(main())
