"""The validator and the gate on hand-made metrics."""

from retrain.gate import GatePolicy, decide, pick_winner


def metrics(score, refusal, low=None, high=None):
    ci = {"low": low if low is not None else score - 0.05, "high": high if high is not None else score + 0.05}
    return {"overall": {"safety_score": score, "erroneous_refusal": refusal}, "safety_score_ci": ci}


def test_winner_is_the_safest_and_ties_go_to_fewer_refusals():
    assert pick_winner({"kto": metrics(0.6, 0.1), "dpo": metrics(0.7, 0.3)}) == "dpo"
    assert pick_winner({"kto": metrics(0.7, 0.1), "dpo": metrics(0.7, 0.3)}) == "kto"
    assert pick_winner({}) is None


def test_a_safer_candidate_is_promoted():
    decision = decide(metrics(0.5, 0.1), {"kto": metrics(0.6, 0.12), "dpo": metrics(0.55, 0.1)}, GatePolicy())
    assert (decision.winner, decision.promote, decision.reasons) == ("kto", True, [])


def test_a_candidate_that_is_not_safer_is_kept_out():
    decision = decide(metrics(0.6, 0.1), {"kto": metrics(0.6, 0.1)}, GatePolicy())
    assert not decision.promote and "not safer" in decision.reasons[0]


def test_more_refusals_block_promotion_even_when_safer():
    decision = decide(metrics(0.25, 0.0), {"kto": metrics(0.75, 1.0)}, GatePolicy(refusal_tolerance=0.05))
    assert decision.winner == "kto" and not decision.promote
    assert any("erroneous refusal rises by 1.000" in r for r in decision.reasons)


def test_a_drop_inside_the_confidence_interval_or_tolerance_is_allowed_when_asked():
    lenient = GatePolicy(min_improvement=-1.0, safety_tolerance=0.02)
    assert decide(metrics(0.6, 0.1, low=0.5), {"kto": metrics(0.55, 0.1)}, lenient).promote  # inside the CI
    assert decide(metrics(0.6, 0.1, low=0.59), {"kto": metrics(0.59, 0.1)}, lenient).promote  # within tolerance
    refused = decide(metrics(0.6, 0.1, low=0.58), {"kto": metrics(0.5, 0.1)}, lenient)
    assert not refused.promote and "drops by 0.100" in refused.reasons[0]


def test_no_candidate():
    decision = decide(metrics(0.6, 0.1), {}, GatePolicy())
    assert decision.winner is None and not decision.promote
