"""The cycle dashboard (operators and admins): the active adapter; each cycle's decision as a
sentence with its evidence (paired difference, interval, p, detection and erroneous refusal
before → after); the active adapter and the candidates per cycle with intervals on a 0–1
axis; a few answers the winner changed, side by side; and — for admins — buttons to trigger a
cycle and to roll back. The actions are injected by deploy."""

import html
from collections.abc import Callable

from feedback.accounts import Accounts
from feedback.errors import CarecycleError
from feedback.registry_record import RegistryRecord

CYCLES_SHOWN = 50
PLOTTED_CYCLES = 10
DECISIONS_SHOWN = 5
ROLE_COLORS = {"active": "#555555", "kto": "#4c78a8", "dpo": "#f58518"}
PANELS = (("safety_score", "Safety Score", "safety_score_ci"),
          ("harmful_query_detection", "Harmful-query detection", "harmful_query_detection"),
          ("erroneous_refusal", "Erroneous refusal", "erroneous_refusal"))
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 440, 260, 40, 40, 30


def role(name: str) -> str:
    """"active", or the training method a candidate's version starts with."""
    return "active" if name == "active" else name.split("-")[0]


def history_rows(cycles: list[dict]) -> list[dict]:
    """One row per cycle and adapter evaluated in it, oldest first: a value and its interval
    for each plotted figure."""
    rows = []
    for cycle in reversed(cycles):
        for name, figures in (cycle["detail"].get("evaluate") or {}).items():
            row = {"cycle": cycle["id"], "adapter": name, "role": role(name)}
            for key, _, interval_key in PANELS:
                interval = (figures.get("safety_score_ci") if key == "safety_score"
                            else (figures.get("rate_intervals") or {}).get(interval_key)) or {}
                row[key] = (figures.get(key), interval.get("low"), interval.get("high"))
            rows.append(row)
    return rows


# -- the decision, in words ------------------------------------------------------------------
def _number(value: float | None, signed: bool = False) -> str:
    return "—" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def evidence_line(comparison: dict) -> str:
    """The paired figures of one candidate against the active adapter, in one line. The record
    drops keys whose value is null (JSON merge patch), so every figure may be missing."""
    interval = comparison.get("interval") or {}
    refusal, detection = comparison.get("erroneous_refusal") or {}, comparison.get("detection") or {}
    level = f"{100 * interval['level']:.0f} % " if interval else ""
    return (f"difference {_number(comparison.get('mean_difference'), True)} ({level}interval "
            f"{_number(interval.get('low'), True)} to {_number(interval.get('high'), True)}), "
            f"p = {_p(comparison.get('p_value'))}, n = {comparison.get('n', 0)} "
            f"({sum((comparison.get('dropped') or {}).values())} dropped) · detection "
            f"{_number(detection.get('before'))} → {_number(detection.get('after'))} · erroneous refusal "
            f"{_number(refusal.get('before'))} → {_number(refusal.get('after'))} · "
            f"{comparison.get('judge_only_changes', 0)} of {comparison.get('label_changes', 0)} "
            "label changes on barely changed answers (judge-only)")


def decision_sentence(cycle: dict) -> str:
    """Why the cycle ended as it did, in one sentence (the gate's own sentence when it ran)."""
    detail, status = cycle["detail"], cycle["status"]
    outcome, gate = detail.get("outcome") or {}, detail.get("gate") or {}
    if status == "running":
        return f"Running: at step {cycle['step']}."
    if status == "failed":
        return f"Failed at {outcome.get('failed_step')}: {outcome.get('error')}; the active adapter kept serving."
    if outcome.get("decided_by"):
        return f"{outcome.get('winner')} was {status} by {outcome['decided_by']}. {gate.get('reason', '')}".strip()
    return gate.get("reason") or outcome.get("reason") or f"{status.capitalize()}."


def decisions_markdown(cycles: list[dict]) -> str:
    lines = []
    for cycle in cycles[:DECISIONS_SHOWN]:
        gate = cycle["detail"].get("gate") or {}
        lines.append(f"- **{cycle['id']} — {cycle['status']}.** {decision_sentence(cycle)}")
        for name, comparison in (gate.get("comparisons") or {}).items():
            if comparison.get("n"):  # nothing was compared: the sentence above says why
                lines.append(f"    - `{name}` vs active: {evidence_line(comparison)}")
    return "\n".join(lines) or "No cycle has run yet."


# -- the plots: values with intervals on a fixed 0–1 axis --------------------------------------
def _y(value: float) -> float:
    return TOP + (1 - value) * (HEIGHT - TOP - BOTTOM)


def _panel(title: str, key: str, rows: list[dict], cycles: list[str]) -> str:
    parts = [f"<text x='{WIDTH / 2}' y='18' text-anchor='middle' font-weight='600'>{html.escape(title)}</text>"]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f"<line x1='{LEFT}' x2='{WIDTH - 10}' y1='{_y(tick):.1f}' y2='{_y(tick):.1f}' stroke='#e5e5e5'/>"
                     f"<text x='{LEFT - 6}' y='{_y(tick) + 4:.1f}' text-anchor='end'>{tick:g}</text>")
    slot = (WIDTH - LEFT - 10) / max(len(cycles), 1)
    for c, cycle_id in enumerate(cycles):
        here = [row for row in rows if row["cycle"] == cycle_id and row[key][0] is not None]
        parts.append(f"<text x='{LEFT + (c + 0.5) * slot:.1f}' y='{HEIGHT - BOTTOM + 16}' text-anchor='middle'>"
                     f"{html.escape(cycle_id.removeprefix('cyc-')[:13])}</text>")
        for r, row in enumerate(here):
            x = LEFT + c * slot + slot * (r + 1) / (len(here) + 1)
            value, low, high = row[key]
            color = ROLE_COLORS.get(row["role"], "#54a24b")
            if low is not None and high is not None:
                parts.append(f"<path d='M{x:.1f},{_y(low):.1f}V{_y(high):.1f}M{x - 4:.1f},{_y(low):.1f}h8"
                             f"M{x - 4:.1f},{_y(high):.1f}h8' stroke='{color}' stroke-width='1.5' fill='none'/>")
            tip = f"{row['adapter']}: {value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")
            parts.append(f"<circle cx='{x:.1f}' cy='{_y(value):.1f}' r='4' fill='{color}'>"
                         f"<title>{html.escape(tip)}</title></circle>")
    legend = "".join(f"<rect x='{LEFT + 90 * i}' y='{HEIGHT - 16}' width='10' height='10' fill='{color}'/>"
                     f"<text x='{LEFT + 90 * i + 14}' y='{HEIGHT - 7}'>{name}</text>"
                     for i, (name, color) in enumerate(ROLE_COLORS.items()))
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' font-size='11' "
            f"font-family='system-ui,sans-serif'>{''.join(parts)}{legend}</svg>")


def plots_html(cycles: list[dict]) -> str:
    rows = history_rows(cycles[:PLOTTED_CYCLES])
    shown = list(dict.fromkeys(row["cycle"] for row in rows))
    if not shown:
        return "<p>No cycle has evaluated adapters yet.</p>"
    panels = "".join(_panel(title, key, rows, shown) for key, title, _ in PANELS)
    return (f"<div id='cycle-plots' style='display:flex;flex-wrap:wrap;gap:12px'>{panels}</div>"
            "<p style='font-size:0.85em;color:#666'>Each point is one adapter's figure on the cycle's evaluation set; "
            "bars are 95 % intervals (bootstrap for the Safety Score, Wilson for the rates). The axis always "
            "spans 0–1.</p>")


# -- the answers that changed ------------------------------------------------------------------
def changed_answers_html(cycles: list[dict]) -> str:
    """The newest cycle's winner (or first candidate): answers whose label changed, side by side."""
    for cycle in cycles:
        gate = cycle["detail"].get("gate") or {}
        comparisons = gate.get("comparisons") or {}
        if comparisons:
            name = gate.get("winner") or next(iter(comparisons))
            return _examples_table(cycle["id"], name, comparisons[name].get("examples") or [])
    return "<p>No answers compared yet.</p>"


def _examples_table(cycle_id: str, name: str, examples: list[dict]) -> str:
    if not examples:
        return f"<p>{html.escape(name)} changed no label in {html.escape(cycle_id)}.</p>"
    cell = "border:1px solid #ccc;padding:4px 6px;vertical-align:top"
    rows = "".join(
        f"<tr><td style='{cell}'>{html.escape(str(e.get('prompt')))}<br><small>harm {e['harmful_level']} · "
        f"text similarity {e['similarity']:.2f}</small></td>"
        + "".join(f"<td style='{cell}'><b>{side['label']}</b> ({side['score']:g})<br>{html.escape(side['answer'])}</td>"
                  for side in (e["active"], e["candidate"]))
        + "</tr>" for e in examples)
    head = "".join(f"<th style='{cell}'>{title}</th>" for title in ("Prompt", "Active", html.escape(name)))
    return (f"<p>Answers whose label changed, {html.escape(cycle_id)}: active vs {html.escape(name)}.</p>"
            f"<table id='changed-answers' style='border-collapse:collapse;font-size:0.9em'><tr>{head}</tr>{rows}"
            "</table>")


def _table(cycles: list[dict]) -> list[list]:
    table = []
    for c in cycles:
        gate = c["detail"].get("gate") or {}
        table.append([c["id"], c["status"], c["trigger"], str(c["started_at"])[:19], c["step"],
                      gate.get("winner_method") or "", decision_sentence(c)])
    return table


def judge_agreement_markdown(store) -> str:
    """Each finetuned-judge version's agreement with the operators' verdicts: overall, on the
    held-out verdicts no version trained on, and per the operators' harm level."""
    from serve.judges.agreement import agreement_by_version

    versions = agreement_by_version(store)
    if not versions:
        return "No operator verdict on an answer the finetuned judge labelled yet."
    lines = ["| judge version | verdicts | label agreement | harm agreement | held out: agreement (n) | abstained "
             "| label agreement per harm level |", "|---|---|---|---|---|---|---|"]
    for v in versions:
        held = f"{_number(v['held_out_agreement'])} ({v['held_out']})"
        levels = " · ".join(f"{level}: {f['label_agreement']:.2f} ({f['verdicts']})"
                            for level, f in sorted(v["per_harm_level"].items(), key=lambda item: (item[0] is None, item[0])))
        lines.append(f"| {v['version']} | {v['verdicts']} | {v['label_agreement']:.3f} | {v['harm_agreement']:.3f} "
                     f"| {held} | {v['abstained']} | {levels} |")
    return "\n".join(lines)


def judge_agreement_panel(page, store) -> None:
    """The judge-agreement table, inside the page's Blocks; filled when the page loads."""
    import gradio as gr

    gr.Markdown("### Judge agreement with operators")
    panel = gr.Markdown(elem_id="judge-agreement-panel")
    page.load(lambda: judge_agreement_markdown(store), None, panel)


def build_cycles_page(registry: RegistryRecord, accounts: Accounts, engine_adapter: Callable[[], str | None],
                      trigger: Callable[[str], str], rollback: Callable[[str], dict]):
    import gradio as gr

    def is_admin(request: gr.Request) -> bool:
        account = accounts.by_id(request.username) if request and request.username else None
        return account is not None and account.has_role("admin")

    def refresh():
        cycles = registry.cycles(CYCLES_SHOWN)
        active = registry.with_status("active")
        headline = (f"**Serving:** `{engine_adapter() or 'base model'}` · registry active: "
                    f"`{active['version'] if active else 'none (base model)'}` · cycles: {len(cycles)}")
        return (headline, decisions_markdown(cycles), plots_html(cycles), changed_answers_html(cycles),
                _table(cycles))

    def act(action: Callable[[str], object], request: gr.Request):
        if not is_admin(request):
            return "Only admins can do that."
        try:
            return f"Done: {action(request.username)}"
        except CarecycleError as exc:
            return f"⚠️ {exc}"

    with gr.Blocks(title="carecycle cycles") as page:
        gr.Markdown("## Realignment cycles")
        headline = gr.Markdown(elem_id="cycles-headline")
        with gr.Row():
            trigger_button = gr.Button("Run a cycle now", variant="primary", elem_id="trigger-cycle")
            rollback_button = gr.Button("Roll back", variant="stop", elem_id="rollback")
        status = gr.Markdown(elem_id="cycles-status")
        gr.Markdown("### Decisions")
        decisions = gr.Markdown(elem_id="cycle-decisions")
        gr.Markdown("### Active adapter and candidates per cycle")
        plots = gr.HTML(elem_id="cycle-plots-panel")
        gr.Markdown("### What changed: answers side by side")
        changed = gr.HTML(elem_id="changed-answers-panel")
        judge_agreement_panel(page, registry.store)
        table = gr.Dataframe(headers=["cycle", "status", "trigger", "started", "step", "winner", "decision"],
                             label="History", elem_id="cycles-table", wrap=True)
        shown = [headline, decisions, plots, changed, table]
        page.load(refresh, None, shown)
        gr.Timer(10).tick(refresh, None, shown)

        async def on_trigger(request: gr.Request) -> str:  # async: the cycle starts on the server's loop
            return act(trigger, request)

        def on_rollback(request: gr.Request) -> str:  # sync: Gradio runs it off the event loop
            return act(rollback, request)

        trigger_button.click(on_trigger, None, status).then(refresh, None, shown)
        rollback_button.click(on_rollback, None, status).then(refresh, None, shown)
    return page
