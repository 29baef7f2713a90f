"""The user's turn is written while the engine starts answering: nothing of the answer is shown
or stored before the user's message is, and an answer whose message could not be stored is
stopped and never stored (no answer without its prompt)."""

import asyncio
import threading
import time

import pytest

from feedback.chat_record import ChatRecord
from feedback.errors import NotFoundError
from feedback.store import Store
from serve.chat_service import ChatPolicy, ChatService
from serve.engine import GenerationParams
from serve.protocol import ChatCompletionRequest

QUESTION = {"role": "user", "content": "the patient has a fever, what dose of paracetamol?"}


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "rec.duckdb") as opened:
        yield opened


@pytest.fixture
def service(store, tiny_engine):
    policy = ChatPolicy(system_prompt="You are careful.", defaults=GenerationParams(max_tokens=8, temperature=0.0))
    return ChatService(tiny_engine, ChatRecord(store), policy)


def hold_writer(store: Store) -> threading.Event:
    """Keep the writer thread busy until the returned event is set: writes queue meanwhile."""
    started, release = threading.Event(), threading.Event()
    store.submit(lambda conn: (started.set(), release.wait(60)))
    assert started.wait(30)
    return release


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


def test_generation_starts_while_the_user_turn_is_queued_and_shows_only_once_it_is_stored(store, service):
    async def scenario():
        release = hold_writer(store)
        # prepare returns with the write still queued (it used to wait for it)
        chat = await asyncio.wait_for(service.prepare(ChatCompletionRequest(messages=[QUESTION]), "u1"), 60)
        deltas = service.deltas(chat)
        first = asyncio.ensure_future(anext(deltas, None))
        await until(lambda: chat.generation is not None, "the engine starting")  # while the write waits
        assert not first.done() and store.read("SELECT id FROM messages") == []
        release.set()
        text = (await first or "") + "".join([d async for d in deltas])
        return chat, text

    chat, text = asyncio.run(scenario())
    rows = store.read("SELECT id, role, content, parent_id FROM messages ORDER BY role DESC")
    assert rows == [
        {"id": chat.turn.parent_id, "role": "user", "content": QUESTION["content"], "parent_id": None},
        {"id": chat.turn.answer_id, "role": "assistant", "content": text, "parent_id": chat.turn.parent_id},
    ]


def test_an_answer_whose_user_turn_fails_to_store_is_stopped_and_never_stored(store, service):
    store.write(lambda conn: conn.execute("INSERT INTO conversations (id, user_id) VALUES ('visit-42', 'alice')"))

    async def scenario():
        release = hold_writer(store)
        request = ChatCompletionRequest(messages=[QUESTION], metadata={"conversation_id": "visit-42"})
        chat = await asyncio.wait_for(service.prepare(request, "mallory"), 60)  # alice's conversation: the write will refuse
        deltas = service.deltas(chat)
        first = asyncio.ensure_future(anext(deltas, None))
        await until(lambda: chat.generation is not None, "the engine starting")
        release.set()
        with pytest.raises(NotFoundError, match="unknown conversation 'visit-42'"):
            await first
        return chat

    chat = asyncio.run(scenario())
    assert chat.generation.cancelled.is_set()
    assert store.read("SELECT id FROM messages") == []
    assert store.read("SELECT id, user_id FROM conversations") == [{"id": "visit-42", "user_id": "alice"}]
