"""From a snapshot to KTO and DPO datasets: ``build_datasets`` (and ``abuild_datasets``).

Steps, all in one fresh in-memory DuckDB connection over the snapshot's Parquet files:
labels → prompts and scrubbed texts (anchors' too) → KTO rows (plus anchors) → DPO pairs
(corrections, siblings, then on-policy best-of-N pairs from the caller's sampler) → hygiene and
dedup → validation → Arrow tables.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from feedback.errors import CarecycleError
from retrain.datasets import best_of_n, dpo
from retrain.datasets.anchors import ANCHOR_PREFIX, ANCHOR_SETS, create_anchor_pool
from retrain.datasets.assemble import TextStore
from retrain.datasets.kto import build_kto
from retrain.datasets.labels import HALF_SCORE_LABELS, create_labels
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
    half_score: str = field(default="none", metadata=_help(
        "The label of a judge's score 0.5 (a Caution at harm 2): 'none' (no KTO label; still a best-of-N"
        " candidate), 'desirable' or 'undesirable'. See labels.py for why 'none'."))
    pair_margin: float = field(default=0.5, metadata=_help(
        "Sibling and best-of-N pairs need values (scores) that differ by at least this much."))
    sample_cap: int = field(default=64, metadata=_help(
        "At most this many prompts sampled best-of-N a build (DPO source 'sampled'); 0: none."))
    sample_n: int = field(default=4, metadata=_help(
        "Answers sampled per prompt, half (rounded up) with the safety reminder, half without."))
    sample_scored_1_share: float = field(default=0.1, metadata=_help(
        "Share of the prompts whose answer scored 1 that are sampled too (seeded by `seed`)."))
    sample_budget_s: float | None = field(default=None, metadata=_help(
        "No new sample starts after this many seconds of sampling (None: no limit); in-flight ones finish."))
    sample_concurrency: int = field(default=4, metadata=_help(
        "At most this many samples generated and judged at once."))
    phi_library: bool = field(default=True, metadata=_help(
        "Scrub with scrubadub after the regular expressions (False: the expressions alone)."))
    anchors: str = field(default="none", metadata=_help(
        "KTO anchor rows besides the record's: 'none', or 'harmless': the safety set's hand-written answers"
        " to harm-0 questions of its train split (Accept desirable, Caution/Refuse undesirable), asked after"
        " the system prompt the record served most; against the over-refusal KTO learns from the record alone."
        " See anchors.py."))
    anchor_ratio: float = field(default=0.5, metadata=_help(
        "At most this many anchor rows per KTO row of the record, drawn by `seed` (no record rows: no anchors)."))
    seed: int = field(default=0, metadata=_help(
        "Seed of the deterministic shuffle of the rows (and of the anchors drawn)."))
    threads: int | None = field(default=None, metadata=_help("DuckDB threads (None: all cores)."))

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise CarecycleError(f"max_chars must be at least 1, not {self.max_chars}")
        if self.half_score not in HALF_SCORE_LABELS:
            raise CarecycleError(f"half_score must be one of {sorted(HALF_SCORE_LABELS)}, not {self.half_score!r}")
        if not 0 < self.pair_margin <= 1:
            raise CarecycleError(f"pair_margin must be in (0, 1] (scores lie in [0, 1]), not {self.pair_margin}")
        if self.sample_cap < 0:
            raise CarecycleError(f"sample_cap must be 0 (no sampling) or more, not {self.sample_cap}")
        if self.sample_n < 2:
            raise CarecycleError(f"sample_n must be at least 2 (a best and a worst answer), not {self.sample_n}")
        if not 0 <= self.sample_scored_1_share <= 1:
            raise CarecycleError(f"sample_scored_1_share must be in [0, 1], not {self.sample_scored_1_share}")
        if self.sample_budget_s is not None and self.sample_budget_s <= 0:
            raise CarecycleError(f"sample_budget_s must be > 0 or None (no limit), not {self.sample_budget_s}")
        if self.sample_concurrency < 1:
            raise CarecycleError(f"sample_concurrency must be at least 1, not {self.sample_concurrency}")
        if self.anchors not in ANCHOR_SETS:
            raise CarecycleError(f"anchors must be one of {list(ANCHOR_SETS)}, not {self.anchors!r}")
        ratio = self.anchor_ratio
        if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio >= 0):
            raise CarecycleError(
                f"anchor_ratio must be a number, 0 or more (anchor rows per KTO row of the record), not {ratio!r}")


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
        """Every id of a record message the ``kind`` ('kto' or 'dpo') rows came from, sorted: what
        an adapter trained on them records as its provenance (anchors are no message of the record)."""
        table = {"kto": self.kto, "dpo": self.dpo}[kind]
        ids = pc.unique(pc.list_flatten(table.column("message_ids")))
        return sorted(ids.filter(pc.invert(pc.starts_with(ids, ANCHOR_PREFIX))).to_pylist())

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

    def prepare(self, sampling: bool) -> list[best_of_n.SampleRequest]:
        cfg = self.config
        self.report["labels"] = self._timed("labels", create_labels, self.con, cfg.judge, cfg.since, cfg.half_score)
        self.report["phi"] = self._timed(
            "prompts_and_phi", create_prompts, self.con, cfg.phi_library
        )
        self.report["phi_anchors"] = self._timed(
            "anchors", create_anchor_pool, self.con, cfg.anchors, cfg.half_score, cfg.phi_library
        )
        self.store = self._timed("load_texts", TextStore, self.con)
        self.kto, self.report["kto"] = self._timed(
            "kto", build_kto, self.con, self.store, cfg.max_chars, cfg.seed, cfg.anchor_ratio
        )
        self._timed("dpo_pairs", dpo.create_pairs, self.con, cfg.pair_margin)
        self.eligible = best_of_n.eligible(self.con, cfg)
        return best_of_n.sample_requests(self.con, self.store, cfg) if sampling and cfg.sample_cap else []

    def finish(self, pairs: list[tuple[str, str, str]], sampling: dict[str, Any]) -> DatasetBuild:
        try:
            if pairs:
                self.report["phi_sampled"] = dpo.add_sampled_pairs(self.con, pairs, self.config.phi_library)
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


def build_datasets(
    snapshot_dir: Path, config: BuildConfig | None = None, sampler: best_of_n.Sampler | None = None
) -> DatasetBuild:
    """KTO rows and DPO pairs from the snapshot in ``snapshot_dir``.

    ``sampler`` (an async ``best_of_n.Sampler``, e.g. ``retrain.sampling.best_of_n_sampler``)
    supplies the DPO source 'sampled' on a new event loop; without it, that source is empty.
    Inside a running event loop, use ``abuild_datasets``.
    """
    config = config or BuildConfig()
    builder = _Builder(snapshot_dir, config)
    try:
        requests = builder.prepare(sampling=sampler is not None)
        pairs, sampling = asyncio.run(best_of_n.acollect_pairs(requests, sampler, config)) if requests else ([], {"requested": 0})
    except BaseException:
        builder.close()
        raise
    return builder.finish(pairs, sampling)


async def abuild_datasets(
    snapshot_dir: Path, config: BuildConfig | None = None, sampler: best_of_n.Sampler | None = None
) -> DatasetBuild:
    """``build_datasets`` for async callers: the DuckDB work runs in a worker thread, the
    sampler is awaited on the caller's loop (where its engine and judge clients live)."""
    config = config or BuildConfig()
    builder = await asyncio.to_thread(_Builder, snapshot_dir, config)
    try:
        requests = await asyncio.to_thread(builder.prepare, sampler is not None)
        pairs, sampling = await best_of_n.acollect_pairs(requests, sampler, config) if requests else ([], {"requested": 0})
    except BaseException:
        builder.close()
        raise
    return await asyncio.to_thread(builder.finish, pairs, sampling)


def summary_line(build: DatasetBuild) -> str:
    """One line for logs and the CLI."""
    kto, dpo_report = build.report["kto"], build.report["dpo"]
    return (
        f"snapshot {build.snapshot_id}: KTO {kto['rows']} rows ({kto['desirable']} desirable, "
        f"{kto['undesirable']} undesirable; {anchor_phrase(kto['anchors'])}); "
        f"DPO {dpo_report['rows']} pairs {dpo_report['by_source']}"
    )


def anchor_phrase(anchors: dict[str, Any]) -> str:
    """How many of the KTO rows are anchors, for summaries of a build's report."""
    return f"{anchors['rows']} anchors: {anchors['desirable']} desirable, {anchors['undesirable']} undesirable"

