"""The operator review page: the riskiest answer first, its whole conversation, the judges'
view, and a verdict in one click (keys A / C / R) with optional harm level and corrected answer."""

from feedback.accounts import Accounts
from feedback.errors import CarecycleError
from feedback.review_record import ReviewRecord
from serve.admin_protocol import VerdictRequest

# one-key verdicts, ignored while the operator types in a text box
SHORTCUTS_JS = """
() => {
  document.addEventListener('keydown', (event) => {
    if (['INPUT', 'TEXTAREA'].includes(document.activeElement.tagName)) return;
    const id = {a: 'verdict-accept', c: 'verdict-caution', r: 'verdict-refuse', s: 'skip'}[event.key.toLowerCase()];
    if (id) document.getElementById(id)?.click();
  });
}
"""


def _transcript_markdown(item: dict) -> str:
    lines = []
    for message in item["transcript"]:
        marker = " ← **under review**" if message["id"] == item["answer"]["id"] else ""
        lines.append(f"**{message['role']}**{marker}\n\n{message['content']}\n")
    return "\n---\n".join(lines)


def _judges_markdown(item: dict) -> str:
    judged = [f"- {j['judge']}: **{j['label'] or 'unparsed'}**, harm {j['harm_level']}" for j in item["judgments"]]
    votes = ["- 👍" if v["rating"] == "up" else f"- 👎 {v['reason'] or ''} {v['comment'] or ''}" for v in item["votes"]]
    return "\n".join(["**Judges**", *(judged or ["- none yet"]), "", "**Votes**", *(votes or ["- none"])])


def build_review_page(reviews: ReviewRecord, accounts: Accounts):
    import gradio as gr

    def operator_of(request: gr.Request) -> str:
        """The signed-in operator, checked again on every action: a demoted or disabled
        account loses access at once, not when its Gradio session ends."""
        account = accounts.by_id(request.username) if request and request.username else None
        if account is None or not account.has_role("operator"):
            raise gr.Error("Your account may no longer review; sign in again.")
        return account.id

    def load_next(request: gr.Request, skip: tuple = ()):
        operator = operator_of(request)
        queue = [row for row in reviews.queue(limit=len(skip) + 1) if row["message_id"] not in skip]
        if not queue:
            return None, "Nothing left to review. 🎉", "", 0, "", ""
        item = reviews.open_item(operator, queue[0]["message_id"])
        harm = max((j["harm_level"] for j in item["judgments"] if j["harm_level"] is not None), default=0)
        state = {"message_id": item["answer"]["id"], "seen_review_id": item["reviews"][0]["id"] if item["reviews"] else None,
                 "skipped": list(skip)}
        header = f"**{queue[0]['reason'].replace('_', ' ')}** — answer `{state['message_id']}`"
        return state, header, _transcript_markdown(item), harm, _judges_markdown(item), ""

    def submit(label, state, harm, corrected, request: gr.Request):
        if not state:
            return load_next(request) + ("Nothing to judge.",)
        try:
            verdict = VerdictRequest(label=label, harm_level=int(harm), corrected_answer=corrected or None,
                                     seen_review_id=state["seen_review_id"])
            reviews.add_verdict(operator_of(request), state["message_id"], verdict.model_dump(), verdict.seen_review_id)
        except CarecycleError as exc:
            return load_next(request, tuple(state["skipped"])) + (f"⚠️ {exc}",)
        return load_next(request, tuple(state["skipped"])) + (f"Saved: {label}, harm {int(harm)}.",)

    def skip(state, request: gr.Request):
        skipped = tuple(state["skipped"]) + (state["message_id"],) if state else ()
        return load_next(request, skipped) + ("Skipped.",)

    with gr.Blocks(title="carecycle review") as page:
        gr.Markdown("## Review flagged answers\nWhat did the answer do? One click (or key **A** / **C** / **R**) "
                    "saves the verdict and opens the next answer; **S** skips.")
        state = gr.State(None)
        header = gr.Markdown(elem_id="review-header")
        with gr.Row():
            transcript = gr.Markdown(elem_id="transcript")
            judges = gr.Markdown(elem_id="judges")
        harm = gr.Radio([0, 1, 2, 3], value=0, label="Harm level of the request", elem_id="harm")
        corrected = gr.Textbox(label="The answer that should have been given (optional)", lines=3, elem_id="corrected")
        with gr.Row():
            buttons = {label: gr.Button(label, elem_id=f"verdict-{label.lower()}") for label in ("Accept", "Caution", "Refuse")}
            skip_button = gr.Button("Skip", elem_id="skip")
        status = gr.Markdown(elem_id="review-status")
        shown = [state, header, transcript, harm, judges, corrected]
        page.load(load_next, None, shown)
        for label, button in buttons.items():
            button.click(_submitter(submit, label), [state, harm, corrected], shown + [status])
        skip_button.click(skip, [state], shown + [status])
    return page


def _submitter(submit, label):
    import gradio as gr

    def handler(state, harm, corrected, request: gr.Request):
        return submit(label, state, harm, corrected, request)

    return handler
