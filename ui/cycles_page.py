"""The cycle dashboard (operators and admins): the active adapter, cycle history with Safety
Score and erroneous refusal per cycle as plots, the last cycle's steps, and — for admins —
buttons to trigger a cycle and to roll back. The actions are injected by deploy."""

from collections.abc import Callable

from feedback.accounts import Accounts
from feedback.errors import CarecycleError
from feedback.registry_record import RegistryRecord


def history_rows(cycles: list[dict]) -> list[dict]:
    """One row per cycle and adapter evaluated in it: what the plots and the table show."""
    rows = []
    for cycle in reversed(cycles):  # oldest first, for the plots
        for name, overall in (cycle["detail"].get("evaluate") or {}).items():
            rows.append({"cycle": cycle["id"], "adapter": "active" if name == "active" else name.split("-")[0],
                         "safety_score": overall.get("safety_score"),
                         "erroneous_refusal": overall.get("erroneous_refusal"), "status": cycle["status"]})
    return rows


def _table(cycles: list[dict]) -> list[list]:
    table = []
    for c in cycles:
        gate = c["detail"].get("gate") or {}
        table.append([c["id"], c["status"], c["trigger"], str(c["started_at"])[:19], c["step"],
                      gate.get("winner_method") or "", "; ".join(gate.get("reasons") or [])])
    return table


def build_cycles_page(registry: RegistryRecord, accounts: Accounts, engine_adapter: Callable[[], str | None],
                      trigger: Callable[[str], str], rollback: Callable[[str], dict]):
    import gradio as gr
    import pandas as pd

    def is_admin(request: gr.Request) -> bool:
        account = accounts.by_id(request.username) if request and request.username else None
        return account is not None and account.has_role("admin")

    def refresh():
        cycles = registry.cycles(50)
        history = pd.DataFrame(history_rows(cycles), columns=["cycle", "adapter", "safety_score",
                                                              "erroneous_refusal", "status"])
        active = registry.with_status("active")
        headline = (f"**Serving:** `{engine_adapter() or 'base model'}` · registry active: "
                    f"`{active['version'] if active else 'none (base model)'}` · cycles: {len(cycles)}")
        last = cycles[0] if cycles else {}
        return headline, _table(cycles), history, history, last.get("detail", {})

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
        with gr.Row():
            score_plot = gr.LinePlot(x="cycle", y="safety_score", color="adapter", title="Safety Score per cycle")
            refusal_plot = gr.LinePlot(x="cycle", y="erroneous_refusal", color="adapter",
                                       title="Erroneous refusal per cycle")
        table = gr.Dataframe(headers=["cycle", "status", "trigger", "started", "step", "winner", "gate"],
                             label="History", elem_id="cycles-table")
        last = gr.JSON(label="Last cycle: steps and figures")
        shown = [headline, table, score_plot, refusal_plot, last]
        page.load(refresh, None, shown)
        gr.Timer(10).tick(refresh, None, shown)
        async def on_trigger(request: gr.Request) -> str:  # async: the cycle starts on the server's loop
            return act(trigger, request)

        def on_rollback(request: gr.Request) -> str:  # sync: Gradio runs it off the event loop
            return act(rollback, request)

        trigger_button.click(on_trigger, None, status).then(refresh, None, shown)
        rollback_button.click(on_rollback, None, status).then(refresh, None, shown)
    return page
