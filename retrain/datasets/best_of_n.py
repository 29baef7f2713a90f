"""On-policy best-of-N preference pairs (the DPO source ``sampled``).

For a prompt whose answer scored below 1, was not scored with confidence, or — a seeded sample —
scored 1, the current model answers it N more times (temperature about 1; half the samples,
rounded up, with the safety reminder added to the system prompt, half without), the judge
scores every sample, and the best is paired against the worst when their CARES scores differ by
at least the margin and both judgments are confident (parsed, not abstained). The pair's prompt
is the prompt as served, without the added reminder: the model learns to answer safely unasked.

One request per prompt that has no correction or sibling pair yet; riskiest first (lowest value,
an unscored answer counting as 0.5; higher harm; newer); at most ``sample_cap``. Samples run
concurrently, at most ``sample_concurrency`` at once (an engine that batches concurrent requests
uses that); none starts once ``sample_budget_s`` has passed — samples in flight finish, and a
request left with too few samples says ``budget``. Why each request gave no pair is counted:
``no_margin`` (confident scores too close), ``budget``, ``unconfident`` (fewer than two
confident judgments), ``failed`` (fewer than two usable samples: errors, empty or broken text).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb

from retrain.datasets.assemble import TextStore, assemble

if TYPE_CHECKING:
    from retrain.datasets.build import BuildConfig


@dataclass(frozen=True)
class SampleRequest:
    message_id: str  # the answer whose prompt is sampled: the pair's provenance
    value: float | None  # its labels.value (None: not scored)
    prompt: list[dict[str, str]]  # scrubbed, TRL-style messages ending with the user's


@dataclass(frozen=True)
class Candidate:
    """One sampled answer and what the judge said of it."""

    text: str
    score: float | None  # the CARES score (None: the judgment could not be parsed)
    confident: bool  # parsed and not abstained
    reminder: bool  # sampled with the safety reminder


# sampler(prompt messages, with the reminder?, seed) -> the judged sample
Sampler = Callable[[list[dict[str, str]], bool, int], Awaitable[Candidate]]

OUTCOMES = ("paired", "no_margin", "budget", "unconfident", "failed")
KINDS = ("below_1", "unscored", "scored_1_sample")
_SKIPPED = object()  # a sample not started: the time budget had run out

CANDIDATES_SQL = """
SELECT l.message_id, l.parent_id, l.value, l.harm_level, l.created_at,
       CASE WHEN l.value IS NULL THEN 'unscored' WHEN l.value < 1 THEN 'below_1' ELSE 'scored_1_sample' END AS kind
FROM labels l
WHERE l.parent_id NOT IN (SELECT parent_id FROM dpo_pairs)
  AND (l.value IS NULL OR l.value < 1 OR hash(l.message_id, {seed}) % 10000 < {share_in_10000})
QUALIFY row_number() OVER (PARTITION BY l.parent_id ORDER BY coalesce(l.value, 0.5), l.created_at DESC, l.message_id) = 1
"""

REQUESTS_SQL = """
SELECT c.message_id, c.value, p.prompt_idx
FROM ({candidates}) c JOIN prompts p USING (parent_id)
ORDER BY coalesce(1 - c.value, 0.5) DESC, c.harm_level DESC NULLS LAST, c.created_at DESC, c.message_id
LIMIT {cap}
"""


def _candidates_sql(config: BuildConfig) -> str:
    return CANDIDATES_SQL.format(seed=int(config.seed), share_in_10000=round(config.sample_scored_1_share * 10_000))


def eligible(con: duckdb.DuckDBPyConnection, config: BuildConfig) -> dict[str, int]:
    """Prompts best-of-N could sample, by why: below 1, unscored, or in the seeded sample of 1s."""
    counts = dict(con.execute(f"SELECT kind, count(*) FROM ({_candidates_sql(config)}) GROUP BY kind").fetchall())
    return {kind: counts.get(kind, 0) for kind in KINDS}


def sample_requests(con: duckdb.DuckDBPyConnection, store: TextStore, config: BuildConfig) -> list[SampleRequest]:
    """At most ``config.sample_cap`` requests, riskiest first."""
    sql = REQUESTS_SQL.format(candidates=_candidates_sql(config), cap=int(config.sample_cap))
    rows = assemble(store, con.sql(sql).to_arrow_table(), {"prompt_idx": "prompt"}).to_pylist()
    return [SampleRequest(r["message_id"], r["value"], r["prompt"]) for r in rows]


def best_and_worst(candidates: list[Candidate], margin: float) -> tuple[tuple[Candidate, Candidate] | None, str]:
    """(best, worst) of the confident candidates when their scores differ by ``margin`` or
    more, and the outcome; the first sample wins a tie."""
    confident = [c for c in candidates if c.confident and c.score is not None]
    if len(confident) < 2:
        return None, "unconfident"
    best = max(confident, key=lambda c: c.score)
    worst = min(confident, key=lambda c: c.score)
    return ((best, worst), "paired") if best.score - worst.score >= margin else (None, "no_margin")


def _usable(result: Any, tally: Counter, errors: list[str]) -> bool:
    if isinstance(result, BaseException):
        tally["errors"] += 1
        errors.append(f"{type(result).__name__}: {result}")
        return False
    if not isinstance(result, Candidate):
        tally["errors"] += 1
        errors.append(f"the sampler returned {type(result).__name__}, not a Candidate")
        return False
    if not result.text.strip():
        tally["empty"] += 1
        return False
    try:
        result.text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        tally["invalid_utf8"] += 1
        return False
    return True


def _outcome(results: list[Any], margin: float, tally: Counter, errors: list[str]):
    candidates = [r for r in results if r is not _SKIPPED and _usable(r, tally, errors)]
    pair, outcome = best_and_worst(candidates, margin)
    if pair is None and outcome == "unconfident":
        if any(r is _SKIPPED for r in results):
            outcome = "budget"
        elif len(candidates) < 2:
            outcome = "failed"
    return pair, outcome



async def acollect_pairs(
    requests: list[SampleRequest], sampler: Sampler, config: BuildConfig
) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    """Sample, judge and pair every request: ``[(message id, chosen, rejected)]`` and a report."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + config.sample_budget_s if config.sample_budget_s is not None else math.inf
    gate = asyncio.Semaphore(config.sample_concurrency)
    n = config.sample_n

    async def one(request: SampleRequest, k: int) -> Any:
        async with gate:
            if loop.time() >= deadline:
                return _SKIPPED
            try:
                return await sampler(request.prompt, k % 2 == 0, config.seed + k)
            except Exception as exc:  # this sample's model or judge failed: count it, go on
                return exc

    results = await asyncio.gather(*(one(r, i * n + j) for i, r in enumerate(requests) for j in range(n)))
    tally: Counter = Counter()
    outcomes: Counter = Counter()
    errors: list[str] = []
    pairs = []
    for i, request in enumerate(requests):
        pair, outcome = _outcome(results[i * n:(i + 1) * n], config.pair_margin, tally, errors)
        outcomes[outcome] += 1
        if pair is not None:
            pairs.append((request.message_id, pair[0].text, pair[1].text))
    report = {
        "requested": len(requests),
        "samples": sum(r is not _SKIPPED for r in results),
        "skipped_by_budget": sum(r is _SKIPPED for r in results),
        "outcomes": {name: outcomes.get(name, 0) for name in OUTCOMES},
        "unusable_samples": {name: tally.get(name, 0) for name in ("errors", "empty", "invalid_utf8")},
        "seconds": round(loop.time() - started, 3),
    }
    if errors:
        report["first_error"] = errors[0]
    return pairs, report
