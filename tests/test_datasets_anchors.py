"""KTO anchor rows (retrain/datasets/anchors.py): the safety set's hand-written answers to harmless
questions of its train split, asked after the system prompt the record served, mixed into the KTO
rows by the build's seed. Real DuckDB records and snapshots, as in test_datasets.py."""

from __future__ import annotations

import json

import pytest

from deploy.app import cycle_config
from deploy.cycle import build_config
from deploy.settings import Settings
from feedback.errors import CarecycleError
from retrain.datasets import BuildConfig, build_datasets, summary_line
from serve.cares import safety_score, safety_set_file
from tests.test_datasets import Record, record, snapshot  # noqa: F401 (record: the fixture)

SYSTEM = "You are a careful medical assistant."
OTHER_SYSTEM = "You are a terse assistant."


def harmless_train() -> dict[str, dict]:
    """The safety set's harm-0 train rows, by anchor id."""
    rows = [json.loads(line) for line in safety_set_file().read_text().splitlines() if line.strip()]
    return {f"anchor:{r['id']}": r for r in rows if r["split"] == "train" and r["harmful_level"] == 0}


def served_record(record: Record, n: int, system: str | None = SYSTEM, other: int = 0) -> None:
    """``n`` judged one-turn answers (half desirable) served after ``system``, and ``other`` more after
    another system prompt."""
    for i in range(n + other):
        question = f"question {i}"
        first = [{"role": "system", "content": system if i < n else OTHER_SYSTEM}] if system else []
        record.question(f"q{i}", f"c{i}", question)
        record.answer(f"a{i}", f"q{i}", f"answer {i}", prompt=[*first, {"role": "user", "content": question}])
        record.judge(f"a{i}", "Accept", 0 if i % 2 else 3)


def build(record: Record, tmp_path, **options):
    return build_datasets(snapshot(record, tmp_path), BuildConfig(phi_library=False, **options))


def anchor_rows(result) -> list[dict]:
    return [row for row in result.kto_rows if row["message_ids"][0].startswith("anchor:")]


def test_the_safety_set_has_the_harmless_train_answers_anchors_come_from():
    rows = harmless_train()
    assert len(rows) == 107
    scores = [safety_score(0, r["label"]) for r in rows.values()]
    assert (scores.count(1.0), scores.count(0.0)) == (40, 67)  # Accept; Caution or Refuse


def test_no_anchors_by_default_and_the_rows_are_unchanged(record, tmp_path):
    served_record(record, 10)
    path = snapshot(record, tmp_path)
    default = build_datasets(path, BuildConfig(phi_library=False))
    off = build_datasets(path, BuildConfig(phi_library=False, anchors="none", anchor_ratio=3.0))
    assert default.kto.equals(off.kto)
    assert default.kto.num_rows == 10 and not anchor_rows(default)
    assert default.report["kto"]["anchors"]["rows"] == 0
    assert default.report["kto"]["anchors"]["available"] == 0


def test_harmless_anchors_are_the_safety_sets_answers_after_the_served_system_prompt(record, tmp_path):
    served_record(record, 20, other=4)  # the record's most frequent system prompt: SYSTEM
    result = build(record, tmp_path, anchors="harmless", anchor_ratio=0.5)
    anchors, source = anchor_rows(result), harmless_train()
    assert len(anchors) == 12  # 0.5 × 24 record rows, of 107 available
    for row in anchors:
        (anchor_id,) = row["message_ids"]
        item = source[anchor_id]
        assert row["prompt"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": item["prompt"]}]
        assert row["completion"] == [{"role": "assistant", "content": item["answer"]}]
        assert row["label"] is (safety_score(0, item["label"]) == 1.0)
    report = result.report["kto"]
    assert report["anchors"]["available"] == 107 and report["anchors"]["with_system_prompt"]
    desirable = sum(row["label"] for row in anchors)
    assert (report["anchors"]["desirable"], report["anchors"]["undesirable"]) == (desirable, 12 - desirable)
    # the class weights count every row trained on: 12 record rows of each label plus the anchors
    assert (report["desirable"], report["undesirable"], report["rows"]) == (12 + desirable, 24 - desirable, 36)
    assert result.kto_weights == {"desirable_weight": (24 - desirable) / (12 + desirable), "undesirable_weight": 1.0}
    assert "12 anchors" in summary_line(result)


def test_anchors_are_shuffled_in_and_drawn_by_the_seed(record, tmp_path):
    served_record(record, 40)
    path = snapshot(record, tmp_path)
    first, again, other = (
        build_datasets(path, BuildConfig(phi_library=False, anchors="harmless", anchor_ratio=0.25, seed=seed))
        for seed in (1, 1, 2)
    )
    assert first.kto.equals(again.kto)
    assert {r["message_ids"][0] for r in anchor_rows(first)} != {r["message_ids"][0] for r in anchor_rows(other)}
    positions = [i for i, row in enumerate(first.kto_rows) if row["message_ids"][0].startswith("anchor:")]
    # mixed in through the whole table: neither appended, nor bunched where training starts
    assert len(positions) == 10 and min(positions) < 25 <= max(positions)


def test_the_ratio_caps_at_the_anchors_available(record, tmp_path):
    served_record(record, 30)
    result = build(record, tmp_path, anchors="harmless", anchor_ratio=10.0)
    assert len(anchor_rows(result)) == 107
    assert len({row["message_ids"][0] for row in anchor_rows(result)}) == 107


def test_no_record_rows_no_anchors(record, tmp_path):
    record.qa(1, "question", "an answer nobody judged")
    result = build(record, tmp_path, anchors="harmless")
    assert result.kto.num_rows == 0 and result.report["kto"]["anchors"]["rows"] == 0


def test_anchors_without_a_served_system_prompt_have_none(record, tmp_path):
    served_record(record, 4, system=None)
    (row, *_) = anchor_rows(build(record, tmp_path, anchors="harmless", anchor_ratio=1.0))
    assert [m["role"] for m in row["prompt"]] == ["user"]


def test_adapter_provenance_leaves_the_anchors_out(record, tmp_path):
    served_record(record, 6)
    result = build(record, tmp_path, anchors="harmless", anchor_ratio=1.0)
    assert len(anchor_rows(result)) == 6
    assert result.message_ids("kto") == sorted([f"a{i}" for i in range(6)] + [f"q{i}" for i in range(6)])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"anchors": "all"}, "anchors must be one of \\['none', 'harmless'\\], not 'all'"),
        ({"anchor_ratio": -0.5}, "anchor_ratio must be a number, 0 or more"),
        ({"anchor_ratio": float("nan")}, "anchor_ratio must be a number, 0 or more"),
        ({"anchor_ratio": "half"}, "anchor_ratio must be a number, 0 or more"),
    ],
)
def test_bad_anchor_settings_are_refused(options, message):
    with pytest.raises(CarecycleError, match=message):
        BuildConfig(**options)


def test_the_cycle_builds_with_the_anchor_settings():
    chosen = build_config(cycle_config(Settings(cycle_anchors="harmless", cycle_anchor_ratio=0.25)))
    assert (chosen.anchors, chosen.anchor_ratio) == ("harmless", 0.25)
    assert build_config(cycle_config(Settings())).anchors == "none"  # off until the sweep's measurement says on
