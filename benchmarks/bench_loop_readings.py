"""The loop benchmark's gate decisions read by people: was each candidate kept or promoted rightly?

    .venv/bin/python -m benchmarks.bench_loop_readings                 # the table, from results/loop_readings.jsonl
    .venv/bin/python -m benchmarks.bench_loop_readings export DIR --people FILE [FILE ...]

``export`` takes a loop benchmark's data directory (`bench_loop --keep`, or the one it printed)
and JSONL files of people's readings (prompt, answer, label: Accept / Caution / Refuse; the first
reading of a text wins, so list the earlier files first) and writes every cycle's gate evaluation
— the active adapter's and each candidate's answers to the validation items, the judge's label
and people's — to results/loop_readings.jsonl. It refuses while a text is unread.

The table pairs each candidate with the active adapter of its cycle twice through the gate's own
comparison (``retrain.gate.compare``, default policy): on the judge's labels (what the gate
decided on; items the judge abstained on either side left out) and on people's (every item);
then how often the judge agreed with people where it did not abstain.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from benchmarks.bench_recipe_sweep import read_jsonl
from serve.cares import safety_score

LOOP_READINGS = Path(__file__).resolve().parent / "results" / "loop_readings.jsonl"
ACTIVE = "active"


def export(data_dir: Path, people_files: list[Path], out: Path) -> None:
    people: dict[tuple[str, str], str] = {}
    for file in people_files:
        for row in read_jsonl(file):
            people.setdefault((row["prompt"], row["answer"]), row["label"])
    rows, unread = [], 0
    evaluated = sorted(folder.parent for folder in (data_dir / "cycles").glob("*/eval"))  # skipped, cut short: none
    for number, cycle in enumerate(evaluated, start=1):
        for folder in sorted((cycle / "eval").iterdir()):
            for item in read_jsonl(folder / "items.jsonl"):
                label = people.get((item["prompt"], item["answer"]))
                unread += label is None
                rows.append({"cycle": number, "cycle_id": cycle.name, "adapter": folder.name, "item_id": item["id"],
                             "harmful_level": item["harmful_level"], "prompt": item["prompt"], "answer": item["answer"],
                             "judge_label": None if item["abstained"] else item["label"], "people_label": label})
    if unread:
        raise SystemExit(f"{unread} answers have no people's reading; nothing written")
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(rows)} answers of {len({r['cycle'] for r in rows})} cycles written to {out}")


def gate_record(row: dict, labels: str) -> dict:
    label = row[f"{labels}_label"]
    return {"id": row["item_id"], "harmful_level": row["harmful_level"], "prompt": row["prompt"], "answer": row["answer"],
            "label": label, "abstained": label is None,
            "score": None if label is None else safety_score(row["harmful_level"], label)}


def table(rows: list[dict]) -> None:
    from retrain.gate import GatePolicy, compare

    by_run: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        by_run.setdefault((row["cycle"], row["adapter"]), []).append(row)
    print("| cycle | candidate | labels | n | Δ Safety Score [90 %] | p | detection | erroneous refusal (bound) | "
          "answers changed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (number, adapter), answers in sorted(by_run.items()):
        if adapter == ACTIVE:
            continue
        active = sorted(by_run[(number, ACTIVE)], key=lambda r: r["item_id"])
        answers = sorted(answers, key=lambda r: r["item_id"])
        changed = sum(a["answer"] != b["answer"] for a, b in zip(active, answers))
        for labels in ("judge", "people"):
            c = compare([gate_record(r, labels) for r in active], [gate_record(r, labels) for r in answers], GatePolicy())
            refusal = c.erroneous_refusal
            print(f"| {number} | {adapter} | {labels} | {c.n} | {c.mean_difference:+.3f} [{c.interval['low']:+.3f}, "
                  f"{c.interval['high']:+.3f}] | {c.p_value:.3f} | {c.detection['before']:.3f} → {c.detection['after']:.3f} | "
                  f"{refusal['before']:.3f} → {refusal['after']:.3f} ({refusal['rise_upper']:+.3f}) | {changed}/{len(active)} |")
    distinct = {(r["prompt"], r["answer"]): r for r in rows if r["judge_label"] is not None}
    active_texts = {(r["prompt"], r["answer"]) for r in rows if r["adapter"] == ACTIVE}
    agreed = Counter((text in active_texts, r["judge_label"] == r["people_label"]) for text, r in distinct.items())
    for is_active, name in ((True, "the active adapter's"), (False, "the candidates' new")):
        total = agreed[(is_active, True)] + agreed[(is_active, False)]
        print(f"judge agrees with people on {agreed[(is_active, True)]}/{total} of {name} distinct answers "
              f"({agreed[(is_active, True)] / total:.3f}; abstentions left out)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    exporter = commands.add_parser("export", help="write results/loop_readings.jsonl from a loop run and readings")
    exporter.add_argument("data_dir", type=Path)
    exporter.add_argument("--people", type=Path, nargs="+", required=True, help="JSONL: prompt, answer, label")
    exporter.add_argument("--out", type=Path, default=LOOP_READINGS)
    args = parser.parse_args()
    if args.command == "export":
        export(args.data_dir, args.people, args.out)
    else:
        table(read_jsonl(LOOP_READINGS))


if __name__ == "__main__":
    main()
