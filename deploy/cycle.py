"""The nightly realignment cycle, one function for the schedule, the CLI and the admin API:

snapshot → datasets → train KTO and DPO candidates → evaluate active and candidates →
validator picks the winner → safety gate → promote (or wait for approval, or keep).

Each step and its figures go into the cycle record as they happen. Any failure leaves the
active adapter serving and records where and why. Never two cycles at once.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from feedback.errors import CarecycleError, ConflictError, NotFoundError
from feedback.registry_record import RegistryRecord, candidate_version
from feedback.store import Store
from retrain.datasets.build import BuildConfig, abuild_datasets
from retrain.datasets.export import export_dataset
from retrain.datasets.snapshot import write_snapshot
from retrain.evaluation.adapter_eval import evaluate_adapter
from retrain.evaluation.benchmark import load_evaluation_set
from retrain.evaluation.runner import EvaluationResult
from retrain.gate import GatePolicy, decide
from retrain.sampling import best_of_n_sampler
from retrain.training import TrainConfig, run_training
from serve.engine import Engine
from serve.judges.base import Judge
from serve.judges.agreement import operator_verdicts
from serve.judges.finetuned import active_classifier, active_summary, operator_verdicts_seen, train_judge

from deploy.promotion import promote, verified

log = logging.getLogger("carecycle.cycle")
ACTIVE_RUN = "active"  # the evaluation run of the adapter serving now


@dataclass(frozen=True)
class CycleConfig:
    methods: tuple[str, ...] = ("kto", "dpo")
    min_signal: int = 20
    gate: GatePolicy = GatePolicy()
    require_approval: bool = False
    benchmark: str = "carecycle-safety"
    eval_split: str | None = "validation"
    eval_extra_files: tuple[str, ...] = ()  # more benchmarks (names or CARES-format files) the gate compares on
    eval_limit: int | None = None
    eval_max_tokens: int = 96
    sample_cap: int = 64  # prompts sampled best-of-N per cycle (retrain.datasets.best_of_n)
    sample_n: int = 4
    sample_temperature: float = 1.0
    sample_max_tokens: int = 128
    sample_budget_s: float | None = 900.0  # no new sample starts after this; in-flight ones finish
    half_score: str = "none"  # the label of a judge's score 0.5 (see retrain.datasets.labels)
    anchors: str = "none"  # KTO anchor rows besides the record's (see retrain.datasets.anchors)
    anchor_ratio: float = 0.5  # at most this many anchor rows per KTO row of the record
    judge_new_verdicts: int | None = 8  # operator verdicts the active finetuned judge has not seen that
    # start a new judge version at the cycle's start (None: the cycle never trains the judge)
    system_prompt: str | None = None
    train: dict[str, Any] = field(default_factory=dict)  # passed to every TrainConfig
    train_timeout_s: float | None = 6 * 3600  # a hung training run must not block every later cycle


def build_config(config: CycleConfig) -> BuildConfig:
    """How a cycle builds its datasets from its snapshot."""
    return BuildConfig(
        sample_cap=config.sample_cap, sample_n=config.sample_n, sample_budget_s=config.sample_budget_s,
        half_score=config.half_score, anchors=config.anchors, anchor_ratio=config.anchor_ratio,
    )


def _figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the cycle record keeps of one evaluation: the overall rates with their intervals."""
    return {**metrics["overall"], "safety_score_ci": metrics["safety_score_ci"],
            "rate_intervals": metrics["rate_intervals"]}


class CycleFailed(CarecycleError):
    def __init__(self, step: str, message: str):
        super().__init__(f"cycle failed at {step}: {message}")
        self.step = step


class Cycle:
    def __init__(self, store: Store, engine: Engine, judge_factory: Callable[[], Judge], base_model: str,
                 data_dir: Path, config: CycleConfig,
                 judge_trainer: Callable[[Path, list[dict]], dict] = train_judge):
        self.store = store
        self._judge_trainer = judge_trainer
        self.registry = RegistryRecord(store)
        self.engine = engine
        self._judge_factory = judge_factory
        self._judge: Judge | None = None
        self.base_model = base_model
        self.data_dir = Path(data_dir)
        self.config = config
        self.running: str | None = None
        self._task: asyncio.Task | None = None

    @property
    def judge(self) -> Judge:
        """Built on first use: a missing judge fails a cycle, never the server's start."""
        if self._judge is None:
            self._judge = self._judge_factory()
        return self._judge

    # -- entry points ----------------------------------------------------------------
    def trigger(self, trigger: str, actor: str, methods: tuple[str, ...] | None = None) -> str:
        """Start a cycle in the background (audited as ``actor``'s); ConflictError names the
        one already running."""
        cycle_id = self._claim(trigger, actor)
        self._task = asyncio.create_task(self._run(cycle_id, methods or self.config.methods))
        return cycle_id

    async def run(self, trigger: str, methods: tuple[str, ...] | None = None, train_only: bool = False) -> dict[str, Any]:
        """Run a cycle to its end (schedule, CLI) and return its record; ``train_only`` stops
        after training (the candidates stay registered as candidates)."""
        cycle_id = self._claim(trigger)
        await self._run(cycle_id, methods or self.config.methods, train_only)
        return self.registry.cycle(cycle_id)

    def _claim(self, trigger: str, actor: str | None = None) -> str:
        """Open the cycle's record (with ``actor``'s audit row, in the same transaction)."""
        if self.running is not None:
            raise ConflictError(f"cycle {self.running} is running; wait for it (GET /api/admin/cycles/{self.running})")
        cycle_id = datetime.now(timezone.utc).strftime("cyc-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.registry.start_cycle(cycle_id, trigger, actor)
        self.running = cycle_id
        return cycle_id

    def discard_leftover_snapshots(self) -> list[str]:
        """Remove the snapshot folders of cycles not running (a dead predecessor's: its cycle never
        reached the step that removes them). They hold unscrubbed transcripts that retention and
        deletion requests do not see. Returns those cycles' ids."""
        leftovers = []
        for snapshot in sorted((self.data_dir / "cycles").glob("*/snapshot")):
            cycle_id = snapshot.parent.name
            if cycle_id != self.running and not self._running_in_record(cycle_id):
                shutil.rmtree(snapshot, ignore_errors=True)
                leftovers.append(cycle_id)
        return leftovers

    def _running_in_record(self, cycle_id: str) -> bool:
        try:
            return self.registry.cycle(cycle_id)["status"] == "running"
        except NotFoundError:  # a folder the record does not know: nothing owns it
            return False

    # -- the steps -------------------------------------------------------------------
    async def _run(self, cycle_id: str, methods: tuple[str, ...], train_only: bool = False) -> None:
        step = "start"
        loaded: list[str] = []
        folder = self.data_dir / "cycles" / cycle_id
        try:
            step = "signal"
            if (signal := await self._check_signal(cycle_id)) is not None:
                return self.registry.finish_cycle(cycle_id, "kept", signal)
            step = self._enter(cycle_id, "judge")
            await self.retrain_judge(cycle_id)
            step = self._enter(cycle_id, "snapshot")
            snapshot = await asyncio.to_thread(write_snapshot, self.store, folder / "snapshot")
            self.registry.record_step(cycle_id, step, {"snapshot_id": snapshot.snapshot_id, "rows": snapshot.row_counts})
            step = self._enter(cycle_id, "datasets")
            build = await self._datasets(cycle_id, snapshot.path, folder)
            step = self._enter(cycle_id, "train")
            candidates = await self._train(cycle_id, methods, build, folder, snapshot.snapshot_id)
            if train_only:
                return self.registry.finish_cycle(cycle_id, "kept", {
                    "decision": "trained only", "candidates": {v: a["path"] for v, a in candidates.items()}})
            step = self._enter(cycle_id, "evaluate")
            results = await self._evaluate(cycle_id, candidates, folder, loaded)
            step = self._enter(cycle_id, "gate")
            await self._decide(cycle_id, candidates, results)
        except Exception as exc:  # the cycle record says where and why; serving goes on untouched
            log.error("cycle %s failed at %s: %s", cycle_id, step, exc)
            self.registry.finish_cycle(cycle_id, "failed", {
                "failed_step": step, "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc(limit=3)})
            self.registry.reject_candidates_of(cycle_id, f"cycle {cycle_id} failed at {step}")
        finally:
            # the snapshot holds unscrubbed transcripts: only the scrubbed datasets may outlive the
            # cycle (a deletion request or the retention period must not miss a copy)
            await asyncio.to_thread(shutil.rmtree, folder / "snapshot", True)
            await asyncio.to_thread(self._unload_losers, loaded)
            self.running = None

    def _enter(self, cycle_id: str, step: str) -> str:
        """Name ``step`` in the cycle record as it starts, so a cycle cut short (a crash, a stop) says where."""
        self.registry.enter_step(cycle_id, step)
        return step

    async def _check_signal(self, cycle_id: str) -> dict[str, Any] | None:
        signal = self.registry.signal_since_last_cycle()
        self.registry.record_step(cycle_id, "signal", {"new_signal": signal, "needed": self.config.min_signal})
        if signal < self.config.min_signal:
            return {"decision": "kept", "reason": f"not enough new signal ({signal} < {self.config.min_signal})"}
        return None

    async def retrain_judge(self, cycle_id: str) -> None:
        """A new finetuned judge version when operators gave enough verdicts the active one has not
        seen; it becomes active (and judges the rest of this cycle) only if it agrees with the
        held-out verdicts better. The step's record says which, with both agreements."""
        needed, root = self.config.judge_new_verdicts, self.data_dir / "judges"
        if needed is None:
            return self.registry.record_step(cycle_id, "judge", {"retrained": False, "reason": "turned off"})
        verdicts = await asyncio.to_thread(operator_verdicts, self.store)
        new = len(verdicts) - operator_verdicts_seen(active_classifier(root))
        if new < needed:
            return self.registry.record_step(cycle_id, "judge", {
                "retrained": False, "reason": f"{new} new operator verdicts (< {needed})"})
        manifest = await asyncio.to_thread(self._judge_trainer, root, verdicts)
        if manifest["activated"]:
            self._judge = None  # built again from the new active version
        self.registry.record_step(cycle_id, "judge", {
            "retrained": True, "new_verdicts": new, "version": manifest["version"],
            "activated": manifest["activated"], "comparison": manifest["comparison"]})

    async def _datasets(self, cycle_id: str, snapshot_dir: Path, folder: Path):
        config, sampler, no_sampling = self.config, None, None
        if config.sample_cap:
            try:
                sampler = best_of_n_sampler(self.engine, self.judge, config.sample_max_tokens, config.sample_temperature)
            except CarecycleError as exc:  # no judge to score new samples: the other DPO sources still count
                no_sampling = str(exc)
        build = await abuild_datasets(snapshot_dir, build_config(config), sampler)
        for kind, table in (("kto", build.kto), ("dpo", build.dpo)):
            await asyncio.to_thread(export_dataset, table, folder / f"{kind}.parquet", "parquet", kind)
        self.registry.record_step(cycle_id, "datasets", {**build.report, "sampling_skipped": no_sampling,
                                                         "judge": active_summary(self.data_dir / "judges", self.store)})
        return build

    async def _train(self, cycle_id: str, methods, build, folder: Path, snapshot_id: str) -> dict[str, dict]:
        active = self.registry.with_status("active")
        candidates, figures = {}, {}
        for method in methods:
            table = build.kto if method == "kto" else build.dpo
            version = candidate_version(method, cycle_id)
            config = TrainConfig(
                method=method, base_model=self.base_model, dataset=str(folder / f"{method}.parquet"),
                output_dir=str(self.data_dir / "adapters" / version), init_adapter=active["path"] if active else None,
                dataset_snapshot_id=snapshot_id, **(build.kto_weights if method == "kto" else {}), **self.config.train,
            )

            def progress(event: dict, method: str = method) -> None:
                if event.get("event") == "progress":  # progress shows in the cycle record as it happens
                    figures[method] = {"status": "training", "step": event.get("step"), "total": event.get("total"),
                                       "loss": event.get("loss")}
                    self.registry.record_step(cycle_id, "train", figures)
                    log.info("training %s: step %s/%s loss %s", method, event.get("step"), event.get("total"),
                             event.get("loss"))

            result = await asyncio.to_thread(run_training, config, progress, self.config.train_timeout_s)
            figures[method] = {"status": result.status, "reason": result.reason, "rows": table.num_rows,
                               "final_loss": (result.manifest or {}).get("final_loss")}
            if result.status == "ok":
                self.registry.register(version, active["version"] if active else None, method,
                                       str(result.adapter_path), result.manifest["checksum"], self.base_model,
                                       snapshot_id, build.message_ids(method))
                candidates[version] = self.registry.adapter(version)
            self.registry.record_step(cycle_id, "train", figures)
        return candidates

    async def _evaluate(self, cycle_id: str, candidates: dict[str, dict], folder: Path,
                        loaded: list[str]) -> dict[str, EvaluationResult]:
        items = load_evaluation_set(self.config.benchmark, self.config.eval_split, self.config.eval_extra_files,
                                    self.config.eval_limit)
        active = self.registry.with_status("active")
        results: dict[str, EvaluationResult] = {}
        for name, adapter in [(ACTIVE_RUN, active), *candidates.items()]:
            version = adapter["version"] if adapter else None
            if name != ACTIVE_RUN:  # loading waits for the generation lock: off the event loop
                # the files are still the ones trained and registered
                await asyncio.to_thread(self.engine.adapters.keep, verified(adapter))
                loaded.append(version)
            results[name] = await evaluate_adapter(
                self.engine, version, items, self.judge, folder / "eval" / name,
                max_new_tokens=self.config.eval_max_tokens, system_prompt=self.config.system_prompt,
                metadata={"name": name if name != ACTIVE_RUN else f"active ({version or 'base'})", "cycle": cycle_id},
            )
            self.registry.record_step(cycle_id, "evaluate", {n: _figures(r.metrics) for n, r in results.items()})
        return results

    async def _decide(self, cycle_id: str, candidates: dict[str, dict], results: dict[str, EvaluationResult]) -> None:
        """The paired gate; its evidence goes into the cycle record and each candidate's metrics."""
        policy = self.config.gate
        decision = decide(results[ACTIVE_RUN].records, {v: results[v].records for v in candidates}, policy)
        active = self.registry.with_status("active")
        outcome = {"winner": decision.winner, "winner_method": candidates[decision.winner]["method"] if decision.winner
                   else None, "promote": decision.promote, "reason": decision.reason,
                   "compared_with": active["version"] if active else None}
        evidence = decision.to_dict()
        self.registry.record_step(cycle_id, "gate", {**evidence, **outcome, "alpha": policy.alpha,
                                                     "refusal_margin": policy.refusal_margin})
        for version, gate in evidence["comparisons"].items():
            self.registry.set_metrics(version, {**results[version].metrics, "gate": gate})
            if version != decision.winner or not decision.promote:
                self.registry.reject(version, decision.reason if version == decision.winner or decision.winner is None
                                     else f"{decision.winner} had the larger paired gain")
        if not decision.promote:
            return self.registry.finish_cycle(cycle_id, "kept", {**outcome, "decision": "kept"})
        if self.config.require_approval:
            return self.registry.finish_cycle(cycle_id, "awaiting_approval", {**outcome, "decision": "awaiting approval"})
        await asyncio.to_thread(promote, self.engine, self.registry, decision.winner, f"cycle:{cycle_id}")
        self.registry.finish_cycle(cycle_id, "promoted", {**outcome, "decision": "promoted"})

    def _unload_losers(self, loaded: list[str]) -> None:
        """Release the candidates this cycle evaluated, but the one awaiting approval (it stays
        loaded for a quick promotion); the promoted one serves."""
        pending = self.registry.with_status("candidate")
        for version in loaded:
            if pending is None or version != pending["version"]:
                self.engine.adapters.release(version)
