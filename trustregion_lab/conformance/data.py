"""Where the reference cases live: the data file of the current version, shipped inside the package."""

from pathlib import Path

VERSION = 2
DATA_FILE = Path(__file__).with_name(f"cases_v{VERSION}.json")
V1_FILE = Path(__file__).with_name("cases_v1.json")  # the previous version, still readable by load_cases
