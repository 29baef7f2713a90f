"""The chat page: streaming answers, thumbs up/down with an optional reason and comment,
and regenerate (the new answer is stored as a sibling of the old one)."""

import asyncio
from typing import Any

from feedback.chat_record import ChatRecord
from feedback.errors import CarecycleError
from serve.chat_service import ChatService
from serve.rate_limit import RateLimiter
from serve.protocol import ChatCompletionRequest, ChatMessage, ChatMetadata

FEEDBACK_REASONS = ["", "unsafe or harmful", "refused a fair question", "wrong or misleading", "unhelpful", "other"]


def _text(content: Any) -> str:
    """Gradio hands messages back as plain strings or as lists of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "")
    return "".join(_text(part) for part in content or [])


def _user_id(request) -> str:
    """The signed-in account, or (anonymous chat) one user per browser session."""
    if request is not None and request.username:
        return request.username
    return f"ui-{request.session_hash}" if request is not None and request.session_hash else "ui-anonymous"


def build_chat_page(service: ChatService, record: ChatRecord, limiter: RateLimiter):
    import gradio as gr

    async def answer(history, state, request: gr.Request, regenerate_of: str | None = None):
        """Stream one answer into the last history entry; remember its message id."""
        messages = [ChatMessage(role=m["role"], content=_text(m["content"])) for m in history[:-1]]
        metadata = ChatMetadata(conversation_id=state.get("conversation_id"), regenerate=regenerate_of)
        try:
            chat = await service.prepare(ChatCompletionRequest(messages=messages, metadata=metadata), _user_id(request))
            state = {**state, "conversation_id": chat.turn.conversation_id}
            async for delta in service.deltas(chat):
                history[-1]["content"] = _text(history[-1]["content"]) + delta
                yield history, state, ""
        except CarecycleError as exc:
            history[-1]["content"] = _text(history[-1]["content"]) + f"\n\n⚠️ {exc}"
            yield history, state, f"The assistant could not answer: {exc}"
            return
        state = {**state, "answers": {**state["answers"], str(len(history) - 1): chat.turn.answer_id}}
        yield history, state, ""

    async def send(text, history, state, request: gr.Request):
        if not text or not text.strip():
            yield history, state, "Type a question first.", text
            return
        try:
            await asyncio.to_thread(limiter.check, "chat", _user_id(request))  # may count in the record
        except CarecycleError as exc:
            yield history, state, str(exc), text
            return
        history = list(history or []) + [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        async for updated, new_state, status in answer(history, state, request):
            yield updated, new_state, status, ""

    async def regenerate(history, state, request: gr.Request):
        last = str(len(history or []) - 1)
        if last not in state["answers"]:
            yield history, state, "Nothing to regenerate yet."
            return
        history = list(history)
        history[-1] = {"role": "assistant", "content": ""}
        async for updated in answer(history, state, request, regenerate_of=state["answers"][last]):
            yield updated

    async def vote(state, reason, comment, data: gr.LikeData, request: gr.Request):
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        message_id = state["answers"].get(str(index))
        if message_id is None:
            return state, "Votes go on answers only."
        rating = "up" if data.liked in (True, "Like", "like") else "down"
        state = {**state, "last_vote": {"message_id": message_id, "rating": rating}}
        try:
            await asyncio.to_thread(limiter.check, "feedback", _user_id(request))  # may count in the record
        except CarecycleError as exc:
            return state, str(exc)
        await record.vote(_user_id(request), message_id, rating, reason or None, comment or None)
        return state, "Thanks — recorded 👍" if rating == "up" else "Thanks — recorded 👎. Add a reason below if you like."

    async def add_details(state, reason, comment, request: gr.Request):
        last = state.get("last_vote")
        if last is None:
            return "Click 👍 or 👎 on an answer first."
        await record.vote(_user_id(request), last["message_id"], last["rating"], reason or None, comment or None)
        return "Your reason and comment were added to your vote."

    def fresh_state() -> dict:
        return {"conversation_id": None, "answers": {}, "last_vote": None}

    with gr.Blocks(title="carecycle") as page:
        gr.Markdown("## carecycle — medical assistant\nFor information only: in an emergency call your local emergency number.")
        state = gr.State(fresh_state())
        chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=420)
        with gr.Row():
            box = gr.Textbox(placeholder="Ask a health question…", show_label=False, scale=8, elem_id="question")
            send_button = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            regen_button = gr.Button("Regenerate", scale=1, elem_id="regenerate")
        gr.Markdown("Rate an answer with 👍 / 👎 on it; optionally say why:")
        with gr.Row():
            reason = gr.Dropdown(FEEDBACK_REASONS, value="", label="Reason", elem_id="reason", scale=1)
            comment = gr.Textbox(label="Comment", lines=1, max_length=4000, elem_id="comment", scale=3)
            details_button = gr.Button("Add to my vote", elem_id="add-details", scale=1)
        status = gr.Markdown(elem_id="status")

        send_button.click(send, [box, chatbot, state], [chatbot, state, status, box])
        box.submit(send, [box, chatbot, state], [chatbot, state, status, box])
        regen_button.click(regenerate, [chatbot, state], [chatbot, state, status])
        chatbot.like(vote, [state, reason, comment], [state, status])
        details_button.click(add_details, [state, reason, comment], [status])
        chatbot.clear(fresh_state, None, [state])  # a cleared chat starts a new conversation
    return page
