"""``python -m trustregion_lab.report PATH [--format auto|prime-rl|parquet|jsonl|csv] [--out DIR]``."""

import sys

from trustregion_lab.report.cli import main

sys.exit(main())
