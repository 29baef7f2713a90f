"""Read training rows, check every row against TRL's conversational columns, count them.

Light on purpose (no torch, no datasets): the training process decides to skip a run before it
pays for the heavy imports.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from retrain.training.config import TrainConfig
from retrain.training.errors import DatasetError, TooFewRowsError

COLUMNS = {"kto": ("prompt", "completion", "label"), "dpo": ("prompt", "chosen", "rejected")}
ROLES = ("system", "user", "assistant")


def load_rows(config: TrainConfig) -> list[dict[str, Any]]:
    """The rows in TRL's columns only (provenance columns dropped); KTO rows shuffled with the seed."""
    rows = [_check_row(config.method, index, row) for index, row in enumerate(_read(Path(config.dataset)))]
    if config.method == "kto":  # KTOTrainer samples sequentially: shuffle here
        random.Random(config.seed).shuffle(rows)
    return rows


def row_counts(method: str, rows: list[dict[str, Any]]) -> dict[str, int]:
    if method == "dpo":
        return {"pairs": len(rows)}
    desirable = sum(row["label"] for row in rows)
    return {"rows": len(rows), "desirable": desirable, "undesirable": len(rows) - desirable}


def require_enough(config: TrainConfig, counts: dict[str, int]) -> None:
    """Raise `TooFewRowsError` (the run is skipped) when the rows cannot fill one step."""
    if config.method == "dpo" and counts["pairs"] < 1:
        raise TooFewRowsError("no DPO pairs to train on (need at least 1)")
    if config.method == "kto" and counts["rows"] < config.per_device_train_batch_size:
        raise TooFewRowsError(
            f"{counts['rows']} KTO row(s), fewer than one batch of {config.per_device_train_batch_size} "
            "(KTO estimates its KL term across the batch)"
        )


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"training data {path} does not exist")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet

            return pyarrow.parquet.read_table(path).to_pylist()
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors too
        raise DatasetError(f"cannot read training data {path}: {exc}") from exc


def _check_row(method: str, index: int, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DatasetError(f"row {index}: expected an object with columns {COLUMNS[method]}")
    missing = [column for column in COLUMNS[method] if column not in row]
    if missing:
        raise DatasetError(f"row {index}: missing column(s) {missing}; {method.upper()} needs {COLUMNS[method]}")
    _check_messages(index, "prompt", row["prompt"], roles=ROLES)
    for column in COLUMNS[method][1:]:
        if column == "label":
            if not isinstance(row["label"], bool):
                raise DatasetError(f"row {index}: 'label' must be true or false, got {row['label']!r}")
        else:
            _check_messages(index, column, row[column], roles=("assistant",))
    return {column: row[column] for column in COLUMNS[method]}


def _check_messages(index: int, column: str, messages: Any, roles: tuple[str, ...]) -> None:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"row {index}: {column!r} must be a non-empty list of messages (conversational format)")
    for message in messages:
        if not (isinstance(message, dict) and message.get("role") in roles and isinstance(message.get("content"), str)):
            raise DatasetError(
                f"row {index}: every {column!r} message needs a role in {roles} and a text content, got {message!r}"
            )
