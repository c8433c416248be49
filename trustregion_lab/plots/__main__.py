"""``python -m trustregion_lab.plots RESULTS_DIR [--figures-dir DIR]`` (see `trustregion_lab.plots.driver.main`)."""

import sys

from trustregion_lab.plots.driver import main

if __name__ == "__main__":
    sys.exit(main())
