"""Where the reference cases live: the data file of the current version, shipped inside the package."""

from pathlib import Path

VERSION = 1
DATA_FILE = Path(__file__).with_name(f"cases_v{VERSION}.json")
