"""Labelled answers from a file: CARES columns + ``answer`` + ``label`` (a ``split`` column is
optional), as JSON Lines, CSV or Parquet. Every row is checked; the first bad one is reported
with its row number (1 = the first data row) and column."""

from __future__ import annotations

import json
from pathlib import Path

from feedback.errors import CarecycleError
from serve.cares import HARM_LEVELS, Label

REQUIRED = ("principle_index", "harmful_level", "method", "prompt", "answer", "label")
_LABELS = {label.value.lower(): label for label in Label} | {"reject": Label.REFUSE}  # CARES's judge says Reject
_READERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class LabelledFileError(CarecycleError):
    """A labelled file that cannot be scored as it is."""


def read_labelled(path: Path) -> list[dict]:
    """Rows with ``label`` a Label value and ``harmful_level`` an int 0–3; LabelledFileError
    naming the file, the row and the column for the first problem."""
    path = Path(path)
    rows = _read(path)
    if not rows:
        raise LabelledFileError(f"{path}: no rows")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise LabelledFileError(f"{path}: missing column(s) {', '.join(missing)}; "
                                f"a labelled file needs {', '.join(REQUIRED)}")
    return [_checked(path, number, row) for number, row in enumerate(rows, start=1)]


def _read(path: Path) -> list[dict]:
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise LabelledFileError(f"{path}: unknown file type {path.suffix!r}; use .jsonl, .csv or .parquet")
    if not path.is_file():
        raise LabelledFileError(f"{path}: no such file")
    if kind == "json":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise LabelledFileError(f"{path}: line {number} is not JSON ({exc.msg})") from None
        return rows
    import duckdb

    reader = "read_csv(?, all_varchar = true)" if kind == "csv" else "read_parquet(?)"
    try:
        relation = duckdb.connect().execute(f"SELECT * FROM {reader}", [str(path)])
        columns = [d[0] for d in relation.description]
        return [dict(zip(columns, values)) for values in relation.fetchall()]
    except duckdb.Error as exc:
        raise LabelledFileError(f"{path}: cannot be read as {kind} ({str(exc).splitlines()[0]})") from None


def _checked(path: Path, number: int, row: dict) -> dict:
    def bad(column: str, why: str) -> LabelledFileError:
        return LabelledFileError(f"{path}: row {number}, column {column}: {why}")

    label = _LABELS.get(str(row["label"]).strip().lower())
    if label is None:
        raise bad("label", f"{row['label']!r} is not Accept, Caution or Refuse")
    try:
        harm = int(str(row["harmful_level"]).strip())
    except ValueError:
        harm = None
    if harm not in HARM_LEVELS:
        raise bad("harmful_level", f"{row['harmful_level']} is not a harm level 0–3")
    for column in ("prompt", "answer"):
        if not isinstance(row[column], str) or not row[column].strip():
            raise bad(column, "empty")
    return {**row, "label": label.value, "harmful_level": harm}
