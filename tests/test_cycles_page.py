"""The dashboard's pieces on cycle records as the registry stores them (no browser)."""

from retrain.gate import GatePolicy, decide
from serve.cares import Label, safety_score
from ui.cycles_page import changed_answers_html, decisions_markdown, history_rows, plots_html

HARMS = [0, 1, 2, 3] * 3


def records(label_for_harm, answer):
    return [{"id": f"i{i}", "harmful_level": h, "prompt": f"prompt {i}", "answer": f"{answer} {i}",
             "label": label_for_harm(h), "score": safety_score(h, Label(label_for_harm(h)))}
            for i, h in enumerate(HARMS)]


def cycle(cycle_id, status, figures, gate=None):
    detail = {"evaluate": figures, "outcome": {"decision": status}}
    if gate is not None:
        detail["gate"] = gate
    return {"id": cycle_id, "status": status, "trigger": "schedule", "started_at": "2026-11-28", "step": "gate",
            "detail": detail}


ACTIVE = records(lambda h: "Accept", "Sure")
SAFER = records(lambda h: "Accept" if h == 0 else "Refuse", "I cannot help")
NEAR = {"safety_score": 0.52, "safety_score_ci": {"low": 0.5, "high": 0.54}, "harmful_query_detection": 0.5,
        "rate_intervals": {"harmful_query_detection": {"low": 0.3, "high": 0.7}}}  # erroneous refusal: dropped (null)


def test_plots_show_the_active_series_with_intervals_on_a_fixed_axis():
    cycles = [cycle("cyc-2", "kept", {"active": NEAR, "kto-2": {**NEAR, "safety_score": 0.53}})]
    rows = history_rows(cycles)
    assert [(r["adapter"], r["role"]) for r in rows] == [("active", "active"), ("kto-2", "kto")]
    assert rows[0]["safety_score"] == (0.52, 0.5, 0.54) and rows[0]["erroneous_refusal"] == (None, None, None)
    page = plots_html(cycles)
    assert page.count("<svg") == 3 and page.count("<circle") == 4  # 2 adapters × 2 panels with figures
    assert ">0</text>" in page and ">1</text>" in page  # the axis spans 0–1 however close the values are
    assert "active: 0.520 [0.500, 0.540]" in page and page.count("<path d=") == 4  # one error bar per point


def test_decisions_are_sentences_with_their_evidence_and_changed_answers_side_by_side():
    gate = decide(ACTIVE, {"kto-3": SAFER}, GatePolicy()).to_dict()
    gate["comparisons"]["kto-3"]["erroneous_refusal"].pop("rise_upper")  # a null the record dropped
    cycles = [cycle("cyc-3", "promoted", {}, {**gate, "winner_method": "kto"}),
              {**cycle("cyc-1", "failed", {}), "detail": {"outcome": {"failed_step": "train", "error": "OOM"}}}]
    text = decisions_markdown(cycles)
    assert f"**cyc-3 — promoted.** {gate['reason']}" in text and gate["reason"].startswith("kto-3 is safer")
    assert "`kto-3` vs active: difference +0.750 (90 % interval" in text and "n = 12 (0 dropped)" in text
    assert "detection 0.000 → 1.000 · erroneous refusal 0.000 → 0.000" in text
    assert "**cyc-1 — failed.** Failed at train: OOM; the active adapter kept serving." in text
    table = changed_answers_html(cycles)
    assert "active vs kto-3" in table and table.count("<tr>") == 1 + 4  # header + GatePolicy.examples
    assert "Sure 1" in table and "I cannot help 1" in table
