"""trustregion_lab.report: the trust-region report card on a run's per-token log-probs (docs/design.md §8).

The one input is the per-token table (`TOKEN_COLUMNS`; `REQUIRED_COLUMNS` and `OPTIONAL_COLUMNS`), read by
streaming from prime-rl's trainer token export, or from Parquet / JSONL / CSV tables (`open_source`). Trainers
write it with `write_token_table(frame, token_table_path(folder, step), source=...)`; `from_verl` / `from_trl`
build it from those frameworks' batch arrays. `analyse` computes the tables in one pass and `write_report`
writes summary.csv, by_mu.csv, matched_delta.csv, by_step.csv, by_position.csv, sequence_is.csv, figures and
report.md into a folder that replaces `out` whole; `run_report` / ``python -m trustregion_lab.report PATH`` do both.
`check_export_folder` is what a trainer calls before exporting into a folder (no second run mixed in).
"""

from trustregion_lab.report.cli import main, run_report
from trustregion_lab.report.convert import from_arrays, from_trl, from_verl
from trustregion_lab.report.names import FRAMEWORK_METRICS, METRICS
from trustregion_lab.report.pipeline import DEFAULT_SPECS, ReportTables, analyse, write_report
from trustregion_lab.report.schema import (
    LOGPROB_TOLERANCE,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    TOKEN_COLUMNS,
    ReportInputError,
    TokenChunk,
    arrow_schema,
)
from trustregion_lab.report.sources import FORMATS, TokenSource, open_source
from trustregion_lab.report.synthetic import write_prime_rl_export
from trustregion_lab.report.table import (
    check_export_folder,
    read_token_table,
    to_arrow,
    token_table_path,
    write_token_table,
)
from trustregion_lab.report.view import ReportMask

__all__ = [
    "DEFAULT_SPECS",
    "FORMATS",
    "FRAMEWORK_METRICS",
    "LOGPROB_TOLERANCE",
    "METRICS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "TOKEN_COLUMNS",
    "ReportInputError",
    "ReportMask",
    "ReportTables",
    "TokenChunk",
    "TokenSource",
    "analyse",
    "arrow_schema",
    "check_export_folder",
    "from_arrays",
    "from_trl",
    "from_verl",
    "main",
    "open_source",
    "read_token_table",
    "run_report",
    "to_arrow",
    "token_table_path",
    "write_prime_rl_export",
    "write_report",
    "write_token_table",
]
