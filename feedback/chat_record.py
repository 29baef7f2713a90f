"""Named queries for the chat record: conversations, messages and votes."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import duckdb

from feedback.errors import NotFoundError
from feedback.store import BatchWrite, Store, read_committed


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Turn:
    """Where a new answer goes: its conversation and the user message it replies to."""

    conversation_id: str
    parent_id: str
    # allocated up front: a stream announces the answer's id in its first chunk
    answer_id: str


@dataclass(frozen=True)
class Answer:
    content: str
    status: str  # 'complete' or 'error'
    model_id: str
    adapter_version: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    # the messages the engine received (system prompt, safety reminder, history), as it got them
    prompt: list[dict[str, str]]
    error: str | None = None
    safety_reminder: bool = False


def served_prompt(messages: list[dict[str, str]]) -> tuple[str, str]:
    """(id, JSON) of a prompt: its canonical JSON (keys sorted, no spaces, UTF-8) and that
    text's sha256, which keys the ``prompts`` table."""
    text = json.dumps(messages, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest(), text


def store_prompt(conn: duckdb.DuckDBPyConnection, prompt_id: str, text: str) -> None:
    """Add a prompt unless the record has it already: one row per distinct prompt. ON CONFLICT
    keeps it right where several writers insert the same prompt at once (PostgreSQL replicas)."""
    conn.execute("INSERT INTO prompts (id, messages) VALUES (?, ?) ON CONFLICT DO NOTHING", [prompt_id, text])


@dataclass(frozen=True)
class Vote:
    message_id: str
    user_id: str
    rating: str
    reason: str | None
    comment: str | None


@read_committed
def _record_votes(conn: duckdb.DuckDBPyConnection, votes: list[Vote]) -> list[dict[str, Any] | NotFoundError]:
    """Insert votes in order, two statements for the lot: which answers are the voter's own (with
    how many votes they already have there), then the accepted rows in one INSERT. A vote on an
    answer outside the voter's conversations is refused (else unknown, as in reads).

    READ COMMITTED keeps this right: who owns an answer never changes, the foreign key refuses a
    vote on an answer erased meanwhile, and rows are only appended, so ``current_feedback`` (the
    row with the highest ``seq``) is one vote per user and answer whatever the order. Only
    ``replaced`` may say False for both of two votes on one answer that commit at the same time."""
    pairs = list(dict.fromkeys((vote.message_id, vote.user_id) for vote in votes))
    owned = {
        (message_id, user_id): prior
        for message_id, user_id, prior in conn.execute(
            "SELECT v.message_id, v.user_id, count(f.message_id)"
            f" FROM (VALUES {', '.join(['(?, ?)'] * len(pairs))}) AS v (message_id, user_id)"
            " JOIN messages m ON m.id = v.message_id AND m.role = 'assistant'"
            " JOIN conversations c ON c.id = m.conversation_id AND c.user_id = v.user_id"
            " LEFT JOIN feedback f ON f.message_id = v.message_id AND f.user_id = v.user_id"
            " GROUP BY v.message_id, v.user_id",
            [value for pair in pairs for value in pair],
        ).fetchall()
    }
    outcomes: list[dict[str, Any] | NotFoundError] = []
    accepted: list[Vote] = []
    for vote in votes:
        key = (vote.message_id, vote.user_id)
        if key not in owned:
            outcomes.append(NotFoundError(
                f"unknown message {vote.message_id!r}: feedback needs the id of an answer in one of your conversations"))
            continue
        outcomes.append({"message_id": vote.message_id, "rating": vote.rating, "replaced": owned[key] > 0})
        owned[key] += 1  # a later vote in this batch replaces this one
        accepted.append(vote)
    if accepted:
        conn.execute(
            "INSERT INTO feedback (message_id, user_id, rating, reason, comment)"
            f" VALUES {', '.join(['(?, ?, ?, ?, ?)'] * len(accepted))}",
            [value for v in accepted for value in (v.message_id, v.user_id, v.rating, v.reason, v.comment)],
        )
    return outcomes


def _owned_conversation(conn: duckdb.DuckDBPyConnection, conversation_id: str, user_id: str) -> bool:
    """True if it exists and is this user's; NotFoundError if it is someone else's.

    Someone else's conversation is reported as unknown, so ids cannot be probed.
    """
    row = conn.execute("SELECT user_id FROM conversations WHERE id = ?", [conversation_id]).fetchone()
    if row is not None and row[0] != user_id:
        raise NotFoundError(f"unknown conversation {conversation_id!r}")
    return row is not None


class ChatRecord:
    def __init__(self, store: Store):
        self.store = store

    @staticmethod
    def new_turn(conversation_id: str | None) -> Turn:
        """The ids of a new user message and its answer, in ``conversation_id`` or a new
        conversation: known before anything is stored, so that generation may start meanwhile."""
        return Turn(conversation_id or new_id("conv"), new_id("msg"), new_id("msg"))

    async def store_turn(self, user_id: str, turn: Turn, user_content: str) -> Turn:
        """Store the user's message of ``turn`` (creating its conversation if needed)."""

        @read_committed  # the conversation's key decides a race to create it, and its owner never changes
        def task(conn: duckdb.DuckDBPyConnection) -> Turn:
            if not _owned_conversation(conn, turn.conversation_id, user_id):
                # another replica may create the same conversation meanwhile: then whose it is decides
                conn.execute("INSERT INTO conversations (id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                             [turn.conversation_id, user_id])
                _owned_conversation(conn, turn.conversation_id, user_id)
            conn.execute(
                "INSERT INTO messages (id, conversation_id, role, content) VALUES (?, ?, 'user', ?)",
                [turn.parent_id, turn.conversation_id, user_content],
            )
            return turn

        return await self.store.awrite(task)

    async def start_turn(self, user_id: str, conversation_id: str | None, user_content: str) -> Turn:
        """Store the user's message of a new turn (creating the conversation if needed)."""
        return await self.store_turn(user_id, self.new_turn(conversation_id), user_content)

    async def regeneration_turn(self, user_id: str, answer_id: str) -> Turn:
        """A new answer to the same user message as ``answer_id``: it will be a sibling."""

        @read_committed  # reads only what never changes
        def task(conn: duckdb.DuckDBPyConnection) -> Turn:
            row = conn.execute(
                "SELECT m.conversation_id, m.parent_id FROM messages m"
                " JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.id = ? AND m.role = 'assistant' AND c.user_id = ?",
                [answer_id, user_id],
            ).fetchone()
            if row is None:
                raise NotFoundError(f"unknown answer {answer_id!r} to regenerate")
            return Turn(row[0], row[1], new_id("msg"))

        return await self.store.awrite(task)

    async def add_answer(self, turn: Turn, answer: Answer) -> str:
        """Store the answer with the prompt it was given (hashed here, off the writer thread)."""
        prompt_id, prompt_json = served_prompt(answer.prompt)

        @read_committed  # appends rows; the prompt's key decides a race (ON CONFLICT)
        def task(conn: duckdb.DuckDBPyConnection) -> str:
            store_prompt(conn, prompt_id, prompt_json)
            conn.execute(
                "INSERT INTO messages (id, conversation_id, parent_id, role, content, status, error,"
                " model_id, adapter_version, prompt_tokens, completion_tokens, latency_ms, safety_reminder,"
                " prompt_id) VALUES (?, ?, ?, 'assistant', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    turn.answer_id, turn.conversation_id, turn.parent_id, answer.content, answer.status,
                    answer.error, answer.model_id, answer.adapter_version, answer.prompt_tokens,
                    answer.completion_tokens, answer.latency_ms, answer.safety_reminder, prompt_id,
                ],
            )
            return turn.answer_id

        return await self.store.awrite(task)

    async def vote(self, user_id: str, message_id: str, rating: str, reason: str | None, comment: str | None) -> dict[str, Any]:
        """Record a vote; a later vote by the same user on the same answer replaces it. Votes
        become training labels: only on answers in one's own conversations. Votes queued
        together are written together (``BatchWrite``)."""
        return await self.store.awrite(BatchWrite(_record_votes, Vote(message_id, user_id, rating, reason, comment)))

    # -- reads -----------------------------------------------------------------------
    def conversation(self, conversation_id: str, owner: str) -> list[dict[str, Any]]:
        """The messages of one of ``owner``'s conversations; someone else's is unknown."""
        rows = self.store.read(
            "SELECT m.id, m.parent_id, m.role, m.content, m.status, m.adapter_version, m.created_at"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            " WHERE c.id = ? AND c.user_id = ? ORDER BY m.created_at, m.role DESC",
            [conversation_id, owner],
        )
        if not rows:
            raise NotFoundError(f"unknown conversation {conversation_id!r}")
        return rows

    def conversations_of(self, owner: str) -> list[dict[str, Any]]:
        return self.store.read(
            "SELECT c.id, c.created_at, count(m.id) AS messages, max(m.created_at) AS last_message_at"
            " FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id"
            " WHERE c.user_id = ? GROUP BY c.id, c.created_at ORDER BY last_message_at DESC NULLS LAST",
            [owner],
        )
