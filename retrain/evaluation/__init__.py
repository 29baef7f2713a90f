"""Safety evaluation: CARES-format benchmarks, batched answers, judged labels, metrics, reports.

- ``benchmark``: load a benchmark (``load_benchmark``) into ``BenchmarkItem`` rows.
- ``runner``: answer, judge and score a benchmark, resumably (``run_evaluation``).
- ``adapter_check``: refuse an adapter trained for another base model (``check_adapter_matches``).
- ``metrics``: the Safety Score and derived rates, overall and sliced, with a bootstrap CI.
- ``report``: one self-contained HTML page comparing runs (``write_report``).
"""
