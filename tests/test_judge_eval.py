"""`carecycle judge eval --labelled FILE`: any judge against any labelled file, figures computed
by hand; one-line errors for a bad file. The judge here is the external one, asking a scripted
OpenAI-compatible endpoint on 127.0.0.1 that answers what each answer's marker says."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve.judges.agreement import judge_figures
from serve.judges.labelled import LabelledFileError, read_labelled
from tests.test_cli import run_cli

# truth (label, harm) and what the judge will say (label, harm), row by row
CASES = [
    (("Accept", 0), ("Accept", 0)),
    (("Accept", 0), ("Refuse", 0)),
    (("Caution", 1), ("Caution", 2)),
    (("Refuse", 3), ("Refuse", 3)),
    (("Refuse", 2), ("Caution", 2)),
    (("Caution", 2), ("Caution", 2)),
]
# by hand: correct labels on rows 1, 3, 4, 6 → accuracy 4/6. Confusion (true A/C/R × predicted):
# A [1 0 1], C [0 2 0], R [0 1 1]. F1: Accept 2·1/(2·1+1) = 2/3, Caution 2·2/(2·2+1) = 4/5,
# Refuse 2·1/(2·1+2) = 1/2 → macro-F1 0.6556. Kappa: observed 4/6, expected (2·1 + 2·3 + 2·2)/36
# = 1/3 → (2/3 − 1/3)/(1 − 1/3) = 1/2. Harm: wrong only on row 3 → 5/6.
EXPECTED = {"items": 6, "accuracy": 4 / 6, "macro_f1": (2 / 3 + 4 / 5 + 1 / 2) / 3, "kappa": 0.5,
            "harm_accuracy": 5 / 6, "abstained": 0, "abstention_rate": 0.0,
            "confusion": [[1, 0, 1], [0, 2, 0], [0, 1, 1]]}
PER_LEVEL = {0: (2, 0.5, 1.0), 1: (1, 1.0, 0.0), 2: (2, 0.5, 1.0), 3: (1, 1.0, 1.0)}  # items, accuracy, harm accuracy


def labelled_rows() -> list[dict]:
    return [{"principle_index": 3, "generation_model": "m", "harmful_level": harm, "method": "direct",
             "base_prompt": f"question {n}", "prompt": f"question {n}", "answer": f"answer {n} <<{said} {said_harm}>>",
             "label": label} for n, ((label, harm), (said, said_harm)) in enumerate(CASES)]


def write(path, rows: list[dict]):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pandas as pd

        frame = pd.DataFrame(rows)
        frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)
    return path


@pytest.fixture
def scripted_judge():
    """An OpenAI-compatible chat endpoint whose reply is the label and harm in the answer's marker."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            label, harm = re.search(r"<<(\w+) (\d)>>", body["messages"][-1]["content"]).groups()
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"Label: {label}\nHarm: {harm}"}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_figures_by_hand():
    rows = labelled_rows()
    figures = judge_figures([r["label"] for r in rows], [said for _, (said, _) in CASES],
                            [r["harmful_level"] for r in rows], [h for _, (_, h) in CASES], [False] * 6)
    for key, value in EXPECTED.items():
        assert figures[key] == (pytest.approx(value) if key != "confusion" else value), key
    for level, (items, accuracy, harm_accuracy) in PER_LEVEL.items():
        assert (figures["per_harm_level"][level]["items"], figures["per_harm_level"][level]["accuracy"],
                figures["per_harm_level"][level]["harm_accuracy"]) == pytest.approx((items, accuracy, harm_accuracy))


def test_abstained_items_leave_the_figures_and_count_in_the_rate():
    rows = labelled_rows()
    # abstaining on row 2 (a wrong Refuse): 4 of 5 answered are right; the best guesses still count in all_items
    figures = judge_figures([r["label"] for r in rows], [said for _, (said, _) in CASES],
                            [r["harmful_level"] for r in rows], [h for _, (_, h) in CASES],
                            [False, True, False, False, False, False])
    assert (figures["items"], figures["abstained"]) == (5, 1)
    assert figures["abstention_rate"] == pytest.approx(1 / 6) and figures["accuracy"] == pytest.approx(4 / 5)
    assert figures["all_items"]["accuracy"] == pytest.approx(4 / 6)
    assert figures["confusion"] == [[1, 0, 0], [0, 2, 0], [0, 1, 1]]


def test_judge_eval_scores_a_labelled_file_by_hand(scripted_judge, tmp_path):
    labelled = write(tmp_path / "answers.csv", labelled_rows())  # every format reads the same (below)
    out = tmp_path / "report.json"
    result = run_cli("judge", "eval", "--judges", "external", "--labelled", str(labelled), "--out", str(out),
                     data_dir=tmp_path, CARECYCLE_JUDGES="", CARECYCLE_JUDGE_URL=scripted_judge,
                     CARECYCLE_JUDGE_MODEL="scripted", CARECYCLE_JUDGE_RETRIES="0")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())["reports"][0]["figures"]
    for key, value in EXPECTED.items():
        assert figures[key] == (pytest.approx(value) if key != "confusion" else value), key
    assert "external   scripted+jud    0.667    0.656  0.500    0.833      0.0%" in result.stdout
    assert "0: 0.50 / 1.00 / 2, 1: 1.00 / 0.00 / 1, 2: 0.50 / 1.00 / 2, 3: 1.00 / 1.00 / 1" in result.stdout


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[1].update(label="Maybe"), "row 2, column label: 'Maybe' is not Accept, Caution or Refuse"),
    (lambda rows: rows[2].update(harmful_level=4), "row 3, column harmful_level: 4 is not a harm level 0–3"),
    (lambda rows: rows[0].update(answer=" "), "row 1, column answer: empty"),
    (lambda rows: [r.pop("label") for r in rows], "missing column(s) label; a labelled file needs principle_index, "
                                                  "harmful_level, method, prompt, answer, label"),
])
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_bad_labelled_file_names_the_row_and_the_column(tmp_path, suffix, change, message):
    rows = labelled_rows()
    change(rows)
    path = write(tmp_path / f"answers{suffix}", rows)
    with pytest.raises(LabelledFileError) as caught:
        read_labelled(path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_labelled_file_reads_the_same_in_every_format(tmp_path):
    rows = labelled_rows()
    rows[3]["label"] = "reject"  # the CARES judge's word for Refuse
    read = [read_labelled(write(tmp_path / f"answers{suffix}", rows)) for suffix in (".jsonl", ".csv", ".parquet")]
    keys = ("prompt", "answer", "label", "harmful_level")
    assert [[tuple(r[k] for k in keys) for r in each] for each in read] == [
        [(r["prompt"], r["answer"], "Refuse" if r["label"] == "reject" else r["label"], r["harmful_level"]) for r in rows]] * 3


def test_judge_eval_with_a_bad_file_fails_in_one_line(tmp_path):
    labelled = write(tmp_path / "answers.jsonl", [{**labelled_rows()[0], "harmful_level": 7}])
    result = run_cli("judge", "eval", "--judges", "self", "--labelled", str(labelled), data_dir=tmp_path,
                     CARECYCLE_JUDGES="")
    assert result.returncode == 2
    assert result.stderr.strip() == f"carecycle: {labelled}: row 1, column harmful_level: 7 is not a harm level 0–3"
