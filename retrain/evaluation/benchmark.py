"""CARES-format benchmarks: the project's own files, CARES-18K from the hub, or a local file.

Every source goes through the same checks (columns, method names, harm levels, principles)
and comes back as ``BenchmarkItem`` rows. Row numbers in error messages count data rows from 1
(for JSONL: the line number; for CSV: the line after the header).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedback.errors import CarecycleError
from serve.cares import HARM_LEVELS, METHODS, PRINCIPLES, real_answers_file, safety_set_file

COLUMNS = ("principle_index", "generation_model", "harmful_level", "method", "base_prompt", "prompt")
OWN_BENCHMARK = "carecycle-safety"
REAL_BENCHMARK = "carecycle-real"
# the project's files by benchmark name: several labelled answers per prompt, one item per prompt
PACKAGED = {OWN_BENCHMARK: safety_set_file, REAL_BENCHMARK: real_answers_file}
CARES_NAME = "cares-18k"
CARES_HUB_ID = "HFXM/CARES-18K"
# the commit other evaluation toolkits pin; not verifiable from here (no hub access)
CARES_REVISION = "49f6ff9caffe31bbd33b6272b72ef0b78a23ff26"
HUB_TIMEOUT_S = 5.0
SUFFIXES = (".parquet", ".csv", ".jsonl")
MAX_ROWS_NAMED = 10
REPORTING_SPLIT = "test"


class BenchmarkError(CarecycleError):
    """A benchmark that cannot be loaded or has rows outside the CARES format."""


@dataclass(frozen=True)
class BenchmarkItem:
    id: str
    principle_index: int
    generation_model: str
    harmful_level: int
    method: str
    base_prompt: str
    prompt: str
    split: str | None = None


def load_benchmark(name_or_path: str | Path, split: str | None = None, limit: int | None = None) -> list[BenchmarkItem]:
    """The items of a benchmark, optionally one split of it, at most ``limit`` of them.

    ``name_or_path``: "carecycle-safety" (the hand-written set) or "carecycle-real" (the default
    model's real answers) — one item per distinct prompt, the first row's id; splits train /
    validation / test by base prompt: choose cycles on "validation", report on "test" —
    "cares-18k" (the hub dataset at a pinned revision; split defaults to "test"), or a
    .parquet / .csv / .jsonl file with the CARES columns (and optionally ``id``, ``split``).
    """
    if str(name_or_path) in PACKAGED:
        items = _dedupe_prompts(_items(_read_packaged(str(name_or_path)), str(name_or_path)))
    elif str(name_or_path) == CARES_NAME:
        hub_split = split or "test"
        items = _items(_read_hub(hub_split), f"{CARES_NAME}-{hub_split}", default_split=hub_split)
    else:
        path = _local_path(name_or_path)
        items = _items(_read_local(path), path.stem)
    items = _select_split(items, split, str(name_or_path))
    return items[:limit] if limit is not None else items


def load_evaluation_set(benchmark: str | Path, split: str | None, extra_files: Sequence[str | Path] = (),
                        limit: int | None = None) -> list[BenchmarkItem]:
    """The items a cycle's gate compares adapters on: ``split`` of ``benchmark`` plus every
    extra benchmark, a name or a CARES-format file (its ``split`` rows when it has a split
    column, else all of it), at most ``limit`` in all. The test split is refused: it reports
    results, it never chooses."""
    if split == REPORTING_SPLIT:
        raise BenchmarkError(f"the {REPORTING_SPLIT!r} split reports results and must never choose an adapter; "
                             "evaluate cycles on 'validation' (and extra files)")
    items = load_benchmark(benchmark, split=split)
    for path in extra_files:
        extra = load_benchmark(path)
        has_split = any(item.split is not None for item in extra)
        items += _select_split(extra, split, str(path)) if has_split and split else extra
    _check_unique_ids(items, "the evaluation set (benchmark and extra files together)")
    return items[:limit] if limit is not None else items


def _local_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix.lower() not in SUFFIXES:
        raise BenchmarkError(
            f"unknown benchmark {str(name_or_path)!r}; use {' / '.join(map(repr, PACKAGED))}, {CARES_NAME!r} "
            f"or a path to a {' / '.join(SUFFIXES)} file with the CARES columns"
        )
    if not path.is_file():
        raise BenchmarkError(f"no benchmark file at {path}")
    return path


# -- reading -------------------------------------------------------------------------------
def _read_packaged(name: str) -> list[dict[str, Any]]:
    from importlib.resources import as_file

    with as_file(PACKAGED[name]()) as path:
        return _read_local(path)


def _read_local(path: Path) -> list[dict[str, Any]]:
    import duckdb

    reader = {
        ".parquet": "read_parquet(?)",
        ".csv": "read_csv(?, header = true)",
        ".jsonl": "read_json(?, format = 'newline_delimited')",
    }[path.suffix.lower()]
    try:
        with duckdb.connect() as connection:
            result = connection.execute(f"SELECT * FROM {reader}", [str(path)])
            names = [column[0] for column in result.description]
            rows = [dict(zip(names, values)) for values in result.fetchall()]
    except duckdb.Error as exc:
        raise BenchmarkError(f"cannot read {path}: {exc}") from exc
    if not rows:
        raise BenchmarkError(f"{path} holds no rows")
    return rows


def _read_hub(split: str) -> list[dict[str, Any]]:
    """CARES-18K rows from the hub (or the local cache when HF_HUB_OFFLINE is set)."""
    source = f"{CARES_HUB_ID} (revision {CARES_REVISION[:8]}, split {split!r})"
    advice = (
        "download its Parquet files where the hub is reachable and pass the file's path instead "
        f"(e.g. load_benchmark('cares-test.parquet'))"
    )
    if not _hub_offline() and not _hub_reachable():
        raise BenchmarkError(f"cannot load {source}: the Hugging Face hub is not reachable; {advice}")
    import datasets

    try:
        dataset = datasets.load_dataset(CARES_HUB_ID, revision=CARES_REVISION, split=split)
    except Exception as exc:  # offline without a cache, unknown split, network failure: one remedy
        raise BenchmarkError(f"cannot load {source} ({type(exc).__name__}: {exc}); {advice}") from exc
    return dataset.to_list()


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable() -> bool:
    import httpx

    url = f"https://huggingface.co/api/datasets/{CARES_HUB_ID}/revision/{CARES_REVISION}"
    try:
        httpx.head(url, timeout=HUB_TIMEOUT_S, follow_redirects=True)
    except httpx.HTTPError:
        return False
    return True


# -- checking and converting -----------------------------------------------------------------
def _items(rows: list[dict[str, Any]], source: str, default_split: str | None = None) -> list[BenchmarkItem]:
    _check_rows(rows, source)
    items = [
        BenchmarkItem(
            id=str(row["id"]) if row.get("id") is not None else f"{source}-{number:05d}",
            principle_index=int(row["principle_index"]),
            generation_model=str(row["generation_model"]),
            harmful_level=int(row["harmful_level"]),
            method=row["method"],
            base_prompt=str(row["base_prompt"]),
            prompt=str(row["prompt"]),
            split=row.get("split", default_split),
        )
        for number, row in enumerate(rows, start=1)
    ]
    _check_unique_ids(items, source)
    return items


def _check_rows(rows: list[dict[str, Any]], source: str) -> None:
    missing = [column for column in COLUMNS if column not in rows[0]]
    if missing:
        raise BenchmarkError(
            f"{source} lacks the column(s) {', '.join(missing)}; a CARES benchmark needs {', '.join(COLUMNS)}"
        )
    problems = [(number, problem) for number, row in enumerate(rows, start=1) for problem in _row_problems(row)]
    if problems:
        _raise_for_rows(source, "invalid", problems)


def _row_problems(row: dict[str, Any]) -> list[str]:
    problems = []
    if row["method"] not in METHODS:
        problems.append(f"method {row['method']!r} is not one of {', '.join(METHODS)}")
    if _as_int(row["harmful_level"]) not in HARM_LEVELS:
        problems.append(f"harmful_level {row['harmful_level']!r} is not 0-3")
    if _as_int(row["principle_index"]) not in range(len(PRINCIPLES)):
        problems.append(f"principle_index {row['principle_index']!r} is not 0-{len(PRINCIPLES) - 1}")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        problems.append("the prompt is empty")
    return problems


def _as_int(value: Any) -> int | None:
    """An integer column value (5, 5.0 or "5"); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _check_unique_ids(items: list[BenchmarkItem], source: str) -> None:
    first_row: dict[str, int] = {}
    problems = []
    for number, item in enumerate(items, start=1):
        if item.id in first_row:
            problems.append((number, f"id {item.id!r} repeats row {first_row[item.id]}"))
        first_row.setdefault(item.id, number)
    if problems:
        _raise_for_rows(source, "duplicate", problems)


def _raise_for_rows(source: str, kind: str, problems: list[tuple[int, str]]) -> None:
    rows = sorted({number for number, _ in problems})
    shown = "; ".join(f"row {number}: {problem}" for number, problem in problems[:MAX_ROWS_NAMED])
    more = f"; and {len(problems) - MAX_ROWS_NAMED} more problem(s)" if len(problems) > MAX_ROWS_NAMED else ""
    raise BenchmarkError(f"{source}: {len(rows)} {kind} row(s) — {shown}{more}")


def _dedupe_prompts(items: list[BenchmarkItem]) -> list[BenchmarkItem]:
    """One item per distinct prompt (the project's files have several answers per prompt)."""
    unique: dict[str, BenchmarkItem] = {}
    for item in items:
        unique.setdefault(item.prompt, item)
    return list(unique.values())


def _select_split(items: list[BenchmarkItem], split: str | None, source: str) -> list[BenchmarkItem]:
    if split is None:
        return items
    if all(item.split is None for item in items):
        raise BenchmarkError(f"{source} has no split column; load it without split=")
    chosen = [item for item in items if item.split == split]
    if not chosen:
        found = sorted({str(item.split) for item in items})
        raise BenchmarkError(f"{source} has no rows in split {split!r}; its splits: {', '.join(found)}")
    return chosen
