"""The review queue is ordered by expected harm: (1 − score), harm level, the judge's uncertainty."""

from __future__ import annotations

import pytest

from feedback.review_record import ReviewRecord
from serve.cares import over_refusal, safety_score, unsafe_compliance

pytestmark = pytest.mark.both_backends

# answer -> judgments (judge, label, harm, confidence, abstained), in the order they are written
ANSWERS = {
    "confident_ok": [("finetuned", "Accept", 0, 0.99, False)],
    "downvoted": [("finetuned", "Accept", 0, 1.0, False)],
    "abstained": [("finetuned", "Accept", 0, 0.4, True)],
    "caution_h0": [("finetuned", "Caution", 0, 1.0, False)],
    "refused_h0": [("finetuned", "Refuse", 0, 1.0, False)],
    "unsafe_h2": [("finetuned", "Accept", 2, 0.95, False)],
    "two_judges": [("finetuned", "Accept", 0, 1.0, False), ("self", "Caution", 2, None, False)],
    "caution_h3": [("finetuned", "Caution", 3, 0.9, False)],
}


@pytest.fixture
def store(any_store):
    for minute, (answer, judgments) in enumerate(ANSWERS.items()):
        any_store.write(lambda conn, a=answer, js=judgments, m=minute: _insert(conn, a, js, m))
    any_store.write(lambda conn: conn.execute(
        "INSERT INTO feedback (message_id, user_id, rating) VALUES ('downvoted', 'pat', 'down')"))
    return any_store


def _insert(conn, answer: str, judgments: list[tuple], minute: int) -> None:
    at = f"2026-01-01 00:{minute:02d}:00+00"
    conn.execute("INSERT INTO conversations (id, user_id) VALUES (?, 'pat')", [f"c-{answer}"])
    conn.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) VALUES (?, ?, 'user', 'q', ?)",
                 [f"q-{answer}", f"c-{answer}", at])
    conn.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, status, created_at)"
                 " VALUES (?, ?, ?, 'assistant', 'an answer', 'complete', ?)", [answer, f"c-{answer}", f"q-{answer}", at])
    for judge, label, harm, confidence, abstained in judgments:
        conn.execute(
            "INSERT INTO judgments (id, message_id, judge, judge_version, label, harm_level, confidence, score,"
            " unsafe_compliance, over_refusal, abstained) VALUES (?, ?, ?, 'v1', ?, ?, ?, ?, ?, ?, ?)",
            [f"j-{judge}-{answer}", answer, judge, label, harm, confidence, safety_score(harm, label),
             unsafe_compliance(harm, label), over_refusal(harm, label), abstained])


def test_a_caution_at_harm_3_comes_first_and_an_abstention_before_a_confident_accept(store):
    queue = ReviewRecord(store).queue(calibration_percent=100)
    assert [(item["message_id"], item["reason"]) for item in queue] == [
        ("caution_h3", "low_score"),  # score 0 at harm 3: 1 × (0.9 + 0.1 × 0.5) = 0.95
        ("unsafe_h2", "unsafe_compliance"),  # 0.75 × (0.95 + 0.05 × 0.5)
        ("two_judges", "low_score"),  # its riskier judge: a Caution at harm 2, 0.75 × 0.5
        ("caution_h0", "low_score"),  # 0.25, written before refused_h0
        ("refused_h0", "over_refusal"),  # 0.25
        ("abstained", "abstained"),  # 0.25 × (0.4 × 0 + 0.6 × 0.5)
        ("downvoted", "thumbs_down"),  # judged safe, but a person disliked it
        ("confident_ok", "calibration"),
    ]
    assert [item["expected_harm"] for item in queue[:6]] == pytest.approx([0.95, 0.73125, 0.375, 0.25, 0.25, 0.075], abs=1e-4)
    assert queue[2]["labels"] == "finetuned:Accept, self:Caution"
    assert queue[5]["labels"] == "finetuned:Accept (abstained)"


def test_the_calibration_sample_is_a_setting_and_reviewed_answers_leave(store):
    reviews = ReviewRecord(store)
    assert "confident_ok" not in [item["message_id"] for item in reviews.queue(calibration_percent=0)]
    store.write(lambda conn: conn.execute(
        "INSERT INTO reviews (id, message_id, operator_id, label, harm_level, verdict)"
        " VALUES ('r1', 'caution_h3', 'olga', 'Caution', 3, 'undesirable')"))
    assert reviews.queue(limit=1)[0]["message_id"] == "unsafe_h2"
