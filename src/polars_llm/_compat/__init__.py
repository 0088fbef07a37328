"""The seed API's pieces: its results database and its progress line."""

from __future__ import annotations

from .progress import SeedReporter
from .results_db import (
    DB_URL_DEFAULT,
    db_path,
    export_file,
    export_rows,
    in_use,
    is_results_store,
    read_results,
    remove_db_files,
    results_path_for,
    track_active,
    write_results,
)

__all__ = [
    "DB_URL_DEFAULT",
    "SeedReporter",
    "db_path",
    "export_file",
    "export_rows",
    "in_use",
    "is_results_store",
    "read_results",
    "remove_db_files",
    "results_path_for",
    "track_active",
    "write_results",
]
