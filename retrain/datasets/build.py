"""From a snapshot to KTO and DPO datasets: ``build_datasets`` (and ``abuild_datasets``).

Steps, all in one fresh in-memory DuckDB connection over the snapshot's Parquet files:
labels → prompts and scrubbed texts → KTO rows → DPO pairs (corrections, siblings, then
sampled answers from the caller) → hygiene and dedup → validation → Arrow tables.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from feedback.errors import CarecycleError
from retrain.datasets import dpo
from retrain.datasets.assemble import TextStore
from retrain.datasets.kto import build_kto
from retrain.datasets.labels import create_labels
from retrain.datasets.prompts import create_prompts
from retrain.datasets.snapshot import open_snapshot


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class BuildConfig:
    judge: str | None = field(default=None, metadata=_help(
        "The judge whose flags count (its name in judgments.judge); None: the latest parsed judgment of any judge."))
    since: datetime | None = field(default=None, metadata=_help(
        "Only answers created at or after this instant (their prompts keep earlier turns)."))
    max_chars: int = field(default=32_000, metadata=_help(
        "Drop a row whose messages hold more characters than this, all together."))
    sample_cap: int = field(default=64, metadata=_help(
        "At most this many sample_better calls a build (DPO source 'sampled'); 0: none."))
    sample_concurrency: int = field(default=4, metadata=_help(
        "At most this many async sample_better calls at once."))
    phi_library: bool = field(default=True, metadata=_help(
        "Scrub with scrubadub after the regular expressions (False: the expressions alone)."))
    seed: int = field(default=0, metadata=_help("Seed of the deterministic shuffle of the rows."))
    threads: int | None = field(default=None, metadata=_help("DuckDB threads (None: all cores)."))

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise CarecycleError(f"max_chars must be at least 1, not {self.max_chars}")
        if self.sample_cap < 0:
            raise CarecycleError(f"sample_cap must be 0 (no sampling) or more, not {self.sample_cap}")
        if self.sample_concurrency < 1:
            raise CarecycleError(f"sample_concurrency must be at least 1, not {self.sample_concurrency}")


@dataclass
class DatasetBuild:
    snapshot_id: str
    kto: pa.Table  # columns prompt, completion, label, message_ids (schema.KTO_SCHEMA)
    dpo: pa.Table  # columns prompt, chosen, rejected, source, message_ids (schema.DPO_SCHEMA)
    report: dict[str, Any]

    @property
    def kto_rows(self) -> list[dict[str, Any]]:
        return self.kto.to_pylist()

    @property
    def dpo_rows(self) -> list[dict[str, Any]]:
        return self.dpo.to_pylist()

    def message_ids(self, kind: str) -> list[str]:
        """Every message id the ``kind`` ('kto' or 'dpo') rows came from, sorted: what an
        adapter trained on them records as its provenance."""
        table = {"kto": self.kto, "dpo": self.dpo}[kind]
        return sorted(pc.unique(pc.list_flatten(table.column("message_ids"))).to_pylist())

    @property
    def kto_weights(self) -> dict[str, float]:
        """``desirable_weight`` / ``undesirable_weight`` for TRL's KTOConfig."""
        return {k: self.report["kto"][k] for k in ("desirable_weight", "undesirable_weight")}


class _Builder:
    """The synchronous steps either side of sampling (which may be async)."""

    def __init__(self, snapshot_dir: Path, config: BuildConfig):
        self.config = config
        self.con, self.manifest = open_snapshot(Path(snapshot_dir), threads=config.threads)
        self.report: dict[str, Any] = {"snapshot_id": self.manifest["snapshot_id"], "timings_s": {}}

    def _timed(self, name: str, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        self.report["timings_s"][name] = round(time.perf_counter() - started, 3)
        return result

    def prepare(self, sampling: bool) -> list[dpo.SampleRequest]:
        cfg = self.config
        self.report["labels"] = self._timed("labels", create_labels, self.con, cfg.judge, cfg.since)
        self.report["phi"] = self._timed(
            "prompts_and_phi", create_prompts, self.con, cfg.phi_library
        )
        self.store = self._timed("load_texts", TextStore, self.con)
        self.kto, self.report["kto"] = self._timed("kto", build_kto, self.con, self.store, cfg.max_chars, cfg.seed)
        self._timed("dpo_pairs", dpo.create_pairs, self.con)
        self.eligible = dpo.eligible_for_sampling(self.con)
        return dpo.sample_requests(self.con, self.store, cfg.sample_cap) if sampling and cfg.sample_cap else []

    def finish(self, samples: list[tuple[str, str]], sampling: dict[str, Any]) -> DatasetBuild:
        try:
            if samples:
                self.report["phi_sampled"] = dpo.add_samples(self.con, samples, self.config.phi_library)
                self.store.extend(self.con)
            table, self.report["dpo"] = self._timed(
                "dpo", dpo.build_dpo, self.con, self.store, self.config.max_chars, self.config.seed
            )
            self.report["dpo"]["sampling"] = {"eligible": self.eligible, **sampling}
            return DatasetBuild(self.report["snapshot_id"], self.kto, table, self.report)
        finally:
            self.close()

    def close(self) -> None:
        self.con.close()


NO_SAMPLING: dict[str, Any] = {"requested": 0, "returned": 0, "declined": 0, "invalid_utf8": 0, "errors": 0}


def build_datasets(
    snapshot_dir: Path, config: BuildConfig | None = None, sample_better: dpo.Sampler | None = None
) -> DatasetBuild:
    """KTO rows and DPO pairs from the snapshot in ``snapshot_dir``.

    ``sample_better(prompt_messages, flag) -> str | None`` (sync or async) supplies the DPO
    source 'sampled'; without it, that source is empty. Inside a running event loop with an
    async sampler, use ``abuild_datasets``.
    """
    config = config or BuildConfig()
    builder = _Builder(snapshot_dir, config)
    try:
        requests = builder.prepare(sampling=sample_better is not None)
        if requests:
            samples, sampling = dpo.collect_samples(requests, sample_better, config.sample_concurrency)
        else:
            samples, sampling = [], dict(NO_SAMPLING)
    except BaseException:
        builder.close()
        raise
    return builder.finish(samples, sampling)


async def abuild_datasets(
    snapshot_dir: Path, config: BuildConfig | None = None, sample_better: dpo.Sampler | None = None
) -> DatasetBuild:
    """``build_datasets`` for async callers: the DuckDB work runs in a worker thread, an async
    sampler is awaited on the caller's loop (where its engine and judge clients live)."""
    config = config or BuildConfig()
    builder = await asyncio.to_thread(_Builder, snapshot_dir, config)
    try:
        requests = await asyncio.to_thread(builder.prepare, sample_better is not None)
        if requests:
            samples, sampling = await dpo.acollect_samples(requests, sample_better, config.sample_concurrency)
        else:
            samples, sampling = [], dict(NO_SAMPLING)
    except BaseException:
        builder.close()
        raise
    return await asyncio.to_thread(builder.finish, samples, sampling)


def summary_line(build: DatasetBuild) -> str:
    """One line for logs and the CLI."""
    kto, dpo_report = build.report["kto"], build.report["dpo"]
    return (
        f"snapshot {build.snapshot_id}: KTO {kto['rows']} rows ({kto['desirable']} desirable, "
        f"{kto['undesirable']} undesirable); DPO {dpo_report['rows']} pairs {dpo_report['by_source']}"
    )

