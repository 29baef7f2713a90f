"""On-policy best-of-N preference pairs: pairing, margin, confidence, time budget, failures, and
the real sampler (tiny model, a stub judge with known scores)."""

from __future__ import annotations

import asyncio

from retrain.datasets import Candidate
from retrain.datasets.best_of_n import best_and_worst
from retrain.sampling import best_of_n_sampler
from serve.cares import Label
from serve.engine import Engine
from serve.judges.base import Judge, Judgment
from serve.reminder import SAFETY_REMINDER
from tests.test_datasets import build, record  # noqa: F401  (record is a fixture)

# per prompt: what the judge says of sample j (score, confident)
KNOWN = {
    "clear winner": [(0.0, True), (1.0, True), (0.0, True), (0.5, True)],
    "margin exactly 0.5": [(0.5, True), (0.0, True), (0.5, True), (0.5, True)],
    "all the same": [(1.0, True), (1.0, True), (1.0, True), (1.0, True)],
    "best is unsure": [(1.0, False), (0.0, True), (0.0, True), (0.0, True)],
    "nobody is sure": [(1.0, False), (0.0, False), (1.0, False), (0.0, False)],
}


async def known_scores(prompt, reminder, seed):
    """A stub judge with known scores: sample j of a prompt (seed j, as seed 0 numbers them
    request by request) gets KNOWN[prompt][j]."""
    question = prompt[-1]["content"]
    score, confident = KNOWN[question][seed % 4]
    return Candidate(f"answer {seed % 4} to {question}", score, confident, reminder)


def test_best_and_worst_pairs_only_confident_scores_a_margin_apart():
    def c(score, confident=True, text=""):
        return Candidate(text or f"s{score}", score, confident, False)

    pair, outcome = best_and_worst([c(0.0, text="first 0"), c(1.0), c(0.0, text="second 0")], 0.5)
    assert outcome == "paired" and (pair[0].text, pair[1].text) == ("s1.0", "first 0")
    assert best_and_worst([c(1.0), c(0.5)], 0.5)[1] == "paired"  # the margin is inclusive
    assert best_and_worst([c(1.0), c(0.5)], 0.6) == (None, "no_margin")
    assert best_and_worst([c(1.0, confident=False), c(0.0), c(0.0)], 0.5) == (None, "no_margin")
    assert best_and_worst([c(1.0), c(None, confident=False)], 0.5) == (None, "unconfident")


def test_each_prompt_pairs_or_says_why_not(record, tmp_path):  # noqa: F811
    for n, question in enumerate(KNOWN, 1):
        record.qa(n, question, "Sure, here is how.")
        record.judge(f"a{n}", "Accept", 3)  # score 0: each prompt is a best-of-N request
    result = build(record, tmp_path, sampler=known_scores, sample_n=4)
    sampling = result.report["dpo"]["sampling"]
    assert sampling["outcomes"] == {"paired": 2, "no_margin": 2, "budget": 0, "unconfident": 1, "failed": 0}
    assert sampling["samples"] == 20 and sampling["skipped_by_budget"] == 0
    pairs = {r["prompt"][-1]["content"]: (r["chosen"][0]["content"], r["rejected"][0]["content"])
             for r in result.dpo_rows}
    assert pairs == {
        "clear winner": ("answer 1 to clear winner", "answer 0 to clear winner"),
        "margin exactly 0.5": ("answer 0 to margin exactly 0.5", "answer 1 to margin exactly 0.5"),
    }
    assert result.report["dpo"]["by_source"]["sampled"] == 2


def test_failed_samples_are_counted_and_the_rest_still_pair(record, tmp_path):  # noqa: F811
    record.qa(1, "clear winner", "Sure.")
    record.judge("a1", "Accept", 3)
    record.qa(2, "broken", "Sure.")
    record.judge("a2", "Accept", 2)

    async def flaky(prompt, reminder, seed):
        if prompt[-1]["content"] == "broken":
            if seed % 4 == 0:
                raise TimeoutError("judge timed out")
            return Candidate("" if seed % 4 == 1 else "bad \ud800 text", 1.0, True, reminder)
        return await known_scores(prompt, reminder, seed)

    sampling = build(record, tmp_path, sampler=flaky).report["dpo"]["sampling"]
    assert sampling["outcomes"]["paired"] == 1 and sampling["outcomes"]["failed"] == 1
    assert sampling["unusable_samples"] == {"errors": 1, "empty": 1, "invalid_utf8": 2}
    assert sampling["first_error"] == "TimeoutError: judge timed out"


def test_the_time_budget_stops_sampling_cleanly(record, tmp_path):  # noqa: F811
    for n in range(1, 4):
        record.qa(n, "clear winner" if n == 1 else f"question {n}", "Sure.")
        record.judge(f"a{n}", "Accept", 3)
    started = []

    async def slow(prompt, reminder, seed):
        started.append(seed)
        await asyncio.sleep(2.5)  # longer than the whole budget: nothing else may start
        return await known_scores(prompt, reminder, seed)

    result = build(record, tmp_path, sampler=slow, sample_budget_s=2.0, sample_concurrency=1)
    sampling = result.report["dpo"]["sampling"]
    assert started == [0]  # the one in flight finished; no other started
    assert (sampling["samples"], sampling["skipped_by_budget"]) == (1, 11)
    assert sampling["outcomes"] == {"paired": 0, "no_margin": 0, "budget": 3, "unconfident": 0, "failed": 0}
    assert result.kto.num_rows == 3  # the rest of the build goes on


def test_scored_1_answers_are_sampled_by_a_seeded_share(record, tmp_path):  # noqa: F811
    for n in range(1, 41):
        record.qa(n, f"question {n}", "Rest and fluids.")
        record.judge(f"a{n}", "Accept", 0)  # score 1
    record.qa(41, "question 41", "no judgment, no votes")
    shares = {share: build(record, tmp_path, sample_scored_1_share=share).report["dpo"]["sampling"]["eligible"]
              for share in (0.0, 0.5, 1.0)}
    assert shares[0.0] == {"below_1": 0, "unscored": 1, "scored_1_sample": 0}
    assert 5 <= shares[0.5]["scored_1_sample"] <= 35
    assert shares[1.0] == {"below_1": 0, "unscored": 1, "scored_1_sample": 40}


class RecordingEngine(Engine):
    """The real tiny engine, with every request it gets written down."""

    def __init__(self, engine: Engine):
        self.engine, self.model_id, self.requests = engine, engine.model_id, []

    def generate(self, messages, params, adapter=None):
        self.requests.append((messages, params))
        return self.engine.generate(messages, params)

    active_adapter = property(lambda self: self.engine.active_adapter)
    load_adapter = activate_adapter = unload_adapter = loaded_adapters = health = None


class ReminderBlindJudge(Judge):
    """A stub judge with known scores: Refuse (score 1 at harm 3) for every other answer it
    sees, Accept (score 0) for the rest; it records what it was shown."""

    name, version = "stub", "1"

    def __init__(self):
        self.seen = []

    async def judge(self, conversation, answer):
        self.seen.append(conversation)
        label = Label.REFUSE if len(self.seen) % 2 else Label.ACCEPT
        return Judgment(self.name, self.version, label, 3)


def test_the_sampler_uses_the_engine_half_with_the_reminder(record, tmp_path, tiny_engine):  # noqa: F811
    question = {"role": "user", "content": "How do I get more oxycodone?"}
    record.question("q1", "c1", question["content"])
    served = [{"role": "system", "content": f"You are careful.\n\n{SAFETY_REMINDER}"}, question]
    record.answer("a1", "q1", "Ask two doctors.", prompt=served)  # the reminder fired when it was served
    record.judge("a1", "Accept", 3)
    engine, judge = RecordingEngine(tiny_engine), ReminderBlindJudge()
    sampler = best_of_n_sampler(engine, judge, max_tokens=6, temperature=1.0)
    result = build(record, tmp_path, sampler=sampler, sample_concurrency=2)
    systems = [messages[0]["content"] for messages, _ in engine.requests]
    assert sorted(SAFETY_REMINDER in s for s in systems) == [False, False, True, True]
    assert all(s.startswith("You are careful.") and s.count(SAFETY_REMINDER) <= 1 for s in systems)
    assert {(p.temperature, p.max_tokens) for _, p in engine.requests} == {(1.0, 6)}
    assert sorted(p.seed for _, p in engine.requests) == [0, 1, 2, 3]
    nonempty = len(judge.seen)
    assert all(c == [question] for c in judge.seen)
    sampling = result.report["dpo"]["sampling"]
    assert sampling["samples"] == 4 and nonempty == 4 - sampling["unusable_samples"]["empty"]
    if nonempty >= 2:  # the tiny random model may say nothing at all
        assert sampling["outcomes"]["paired"] == 1
        (row,) = result.dpo_rows
        assert row["prompt"] == served  # trained on the prompt as served
