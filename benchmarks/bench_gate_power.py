"""How many evaluation items does the gate need to promote a candidate that really is safer?

    .venv/bin/python -m benchmarks.bench_gate_power [--draws 400] [--sizes 48 96 176]

Resamples the people-read answers of the recipe sweep (benchmarks/results/recipe_sweep_readings.jsonl:
the base model and the default KTO recipe on the same 176 held-out prompts) at several
evaluation-set sizes, n prompts drawn with replacement keeping each prompt's pair together, and
runs the gate's own comparison (retrain.gate.compare, default GatePolicy but 1,999 resamples)
on each draw. Two candidates:

- ``kto-default``: the adapter as people read it (more safety, more refusals of harmless questions);
- ``kto-default, harmless kept``: the same answers, except that on harmless prompts it answers as
  the base model did — the candidate a recipe that kept harmless questions answered would give.

(The A/A control — a candidate identical to the active adapter promoted no more often than α —
is tests/test_gate.py's.)

Printed per size: the share of draws with a significant gain (p ≤ α), the share the full gate
would promote (also non-inferior on erroneous refusal), and the median p.
"""

from __future__ import annotations

import argparse

from benchmarks.bench_recipe_sweep import READINGS, base_readings, people_record, read_jsonl


def paired_records() -> tuple[list[dict], list[dict]]:
    """Base and kto-default records (id, harmful_level, answer, label, score) on the same prompts."""
    rows = read_jsonl(READINGS)
    base = base_readings(rows, shipped_labels=False)  # as published: each base answer's first reading
    candidate = {r["item_id"]: r for r in rows if r["recipe"] == "kto-default" and r["item_id"] in base}
    ids = sorted(candidate)
    return [people_record(base[i]) for i in ids], [people_record(candidate[i]) for i in ids]


def harmless_kept(base: list[dict], candidate: list[dict]) -> list[dict]:
    return [b if b["harmful_level"] == 0 else c for b, c in zip(base, candidate)]


def draw(base: list[dict], candidate: list[dict], size: int, rng) -> tuple[list[dict], list[dict]]:
    picks = rng.integers(0, len(base), size)
    before = [dict(base[i], id=f"{k}") for k, i in enumerate(picks)]
    after = [dict(candidate[i], id=f"{k}") for k, i in enumerate(picks)]
    return before, after


def main() -> None:
    import numpy as np

    from retrain.gate import GatePolicy, compare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96, 176])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    policy = GatePolicy(resamples=1999)
    base, candidate = paired_records()
    candidates = {"kto-default": candidate, "kto-default, harmless kept": harmless_kept(base, candidate)}
    print(f"{len(base)} prompts read for both; {args.draws} draws per size; α {policy.alpha}, "
          f"refusal margin {policy.refusal_margin}")
    print("| candidate | items | significant gain | promoted | median p |")
    print("|---|---|---|---|---|")
    for name, records in candidates.items():
        for size in args.sizes:
            rng = np.random.default_rng(args.seed)
            significant = promoted = 0
            ps = []
            for _ in range(args.draws):
                c = compare(*draw(base, records, size, rng), policy)
                gain = c.p_value <= policy.alpha and c.mean_difference > 0
                refusal_ok = c.erroneous_refusal["items"] > 0 and c.erroneous_refusal["rise_upper"] < policy.refusal_margin
                significant += gain
                promoted += gain and refusal_ok
                ps.append(c.p_value)
            print(f"| {name} | {size} | {significant / args.draws:.2f} | {promoted / args.draws:.2f} | "
                  f"{float(np.median(ps)):.3f} |", flush=True)


if __name__ == "__main__":
    main()
