"""Writing a dataset so that ``datasets.load_dataset`` reads back exactly the same rows.

Parquet keeps the Arrow types as they are; JSON Lines is written by DuckDB, one object a line,
UTF-8, keys in column order. Both are validated first and written under a temporary name, then
renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from retrain.datasets.schema import DatasetValidationError, kind_of, validate_table
from retrain.datasets.snapshot import sql_string

FORMATS = ("parquet", "jsonl")


def export_dataset(rows: pa.Table | list[dict], path: Path, fmt: str, kind: str | None = None) -> Path:
    """Write KTO or DPO ``rows`` (an Arrow table or a list of row dicts) to ``path``.

    ``kind`` ('kto' or 'dpo') is needed for a list of dicts; a table's columns tell it.
    Loads back with ``load_dataset("parquet" | "json", data_files=str(path))``.
    """
    if fmt not in FORMATS:
        raise DatasetValidationError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    if kind is None:
        if not isinstance(rows, pa.Table):
            raise DatasetValidationError("rows given as dicts need kind='kto' or kind='dpo'")
        kind = kind_of(rows)
    table = validate_table(rows, kind)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    if fmt == "parquet":
        pq.write_table(table, partial)
    else:
        with duckdb.connect(":memory:") as con:
            con.register("rows", table)
            con.execute(f"COPY rows TO {sql_string(str(partial))} (FORMAT json)")
    os.replace(partial, path)
    return path
