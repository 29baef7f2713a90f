"""The chat logic: store the user's turn, generate, store the answer, shape the response.

Every answer that reaches a user is stored with its id, model, adapter version, latency, token
counts and the exact messages the engine received (``PreparedChat.messages``: system prompt,
safety reminder, history). Generation starts while the user's message is being written, but
nothing of the answer is shown or stored before that write commits: an engine failure never
loses the user's message, and a failed write stops the answer (no answer without its message).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field

from feedback.chat_record import Answer, ChatRecord, Turn
from feedback.errors import CarecycleError
from serve.engine import Engine, Generation, GenerationParams
from serve.errors import EngineUnavailableError, InvalidRequestError, error_payload
from serve.reminder import SAFETY_REMINDER, jailbreak_style
from serve.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    Delta,
    ResponseMessage,
    StreamChoice,
    Usage,
)


@dataclass(frozen=True)
class ChatPolicy:
    """What the deployment allows and assumes; built from settings by the app factory."""

    system_prompt: str
    defaults: GenerationParams
    max_tokens_limit: int = 1024
    max_message_chars: int = 8000
    max_messages: int = 64
    # the CARES mitigation: a safety reminder for prompts that look like jailbreaks
    safety_reminder: bool = False


@dataclass
class PreparedChat:
    turn: Turn
    messages: list[dict[str, str]]  # what the engine gets, stored with the answer as its prompt
    params: GenerationParams
    started: float
    safety_reminder: bool = False
    generation: Generation | None = None
    # the user's message being written (None: nothing to write, a regeneration)
    turn_write: asyncio.Task[Turn] | None = None

    async def turn_stored(self) -> None:
        """Return once the user's message is stored; raise what storing it raised."""
        if self.turn_write is not None:
            await self.turn_write


# called with (chat, answer text) after a complete answer is stored — e.g. live judging
AnswerListener = Callable[[PreparedChat, str], None]


class ChatService:
    def __init__(self, engine: Engine, record: ChatRecord, policy: ChatPolicy):
        self.engine = engine
        self.record = record
        self.policy = policy
        self.listeners: list[AnswerListener] = []
        self._background: set[asyncio.Task] = set()  # stores and stops still running after their client left

    # -- request checks --------------------------------------------------------------
    def _check(self, request: ChatCompletionRequest) -> None:
        policy = self.policy
        if len(request.messages) > policy.max_messages:
            raise InvalidRequestError(
                f"too many messages ({len(request.messages)}); at most {policy.max_messages} per request",
                param="messages",
            )
        for index, message in enumerate(request.messages):
            if len(message.text) > policy.max_message_chars:
                raise InvalidRequestError(
                    f"messages[{index}] has {len(message.text)} characters; at most {policy.max_message_chars} allowed",
                    param=f"messages.{index}.content",
                )
        if request.messages[-1].role != "user":
            raise InvalidRequestError("the last message must come from the user", param="messages")
        limit = request.token_limit
        if limit is not None and limit > policy.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens {limit} is over this server's limit of {policy.max_tokens_limit}", param="max_tokens"
            )

    def _params(self, request: ChatCompletionRequest) -> GenerationParams:
        defaults = self.policy.defaults
        return GenerationParams(
            max_tokens=request.token_limit or defaults.max_tokens,
            temperature=defaults.temperature if request.temperature is None else request.temperature,
            top_p=request.top_p or defaults.top_p,
            seed=request.seed if request.seed is not None else defaults.seed,
        )

    def _prompt(self, request: ChatCompletionRequest) -> tuple[list[dict[str, str]], bool]:
        """The messages the engine sees, and whether a safety reminder was added to them."""
        messages = [{"role": m.role, "content": m.text} for m in request.messages]
        remind = self.policy.safety_reminder and jailbreak_style(messages[-1]["content"]) is not None
        base = messages.pop(0)["content"] if messages[0]["role"] == "system" else self.policy.system_prompt
        system = "\n\n".join(part for part in (base, SAFETY_REMINDER if remind else "") if part)
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return messages, remind

    async def prepare(self, request: ChatCompletionRequest, user_id: str) -> PreparedChat:
        """Validate, then queue the write of the user's turn (or locate the answer being regenerated)."""
        self._check(request)
        metadata = request.metadata
        turn_write = None
        if metadata is not None and metadata.regenerate:
            turn = await self.record.regeneration_turn(user_id, metadata.regenerate)
        else:
            turn = self.record.new_turn(metadata.conversation_id if metadata else None)
            turn_write = asyncio.ensure_future(self.record.store_turn(user_id, turn, request.messages[-1].text))
        messages, remind = self._prompt(request)
        return PreparedChat(turn, messages, self._params(request), time.perf_counter(), safety_reminder=remind,
                            turn_write=turn_write)

    # -- answering -------------------------------------------------------------------
    def _start(self, chat: PreparedChat) -> Generation:
        try:
            return self.engine.generate(chat.messages, chat.params)
        except CarecycleError:
            raise
        except Exception as exc:
            raise EngineUnavailableError(f"the engine could not start answering: {exc}") from exc

    async def _store(self, chat: PreparedChat, text: str, error: str | None) -> None:
        generation = chat.generation
        await self.record.add_answer(
            chat.turn,
            Answer(
                content=text,
                status="error" if error else "complete",
                error=error,
                model_id=self.engine.model_id,
                adapter_version=generation.adapter_version if generation else self.engine.active_adapter,
                prompt_tokens=generation.prompt_tokens if generation else 0,
                completion_tokens=generation.completion_tokens if generation else 0,
                latency_ms=(time.perf_counter() - chat.started) * 1000,
                prompt=chat.messages,
                safety_reminder=chat.safety_reminder,
            ),
        )
        if error is None:
            for listener in self.listeners:
                listener(chat, text)

    async def _generated(self, chat: PreparedChat) -> AsyncGenerator[str, None]:
        chat.generation = self._start(chat)
        async for delta in chat.generation:
            yield delta

    async def deltas(self, chat: PreparedChat) -> AsyncIterator[str]:
        """The answer's text as it is generated. The engine starts at once; the first delta comes
        out once the user's message is stored, and if storing it fails the answer is stopped and
        that error raised. From then on the answer is stored when it ends, however it ends."""
        answer = self._generated(chat)
        first = asyncio.ensure_future(anext(answer, None))  # generating while the user's message is written
        try:
            await chat.turn_stored()
        except BaseException:  # no answer without its user message (or the client left meanwhile)
            self._stop(chat, answer, first)
            raise
        parts: list[str] = []
        try:
            delta = await first
            while delta is not None:
                parts.append(delta)
                yield delta
                delta = await anext(answer, None)
        except (GeneratorExit, asyncio.CancelledError):
            # the client went away: stop generating, keep what was said
            self._stop(chat, answer, first)
            self._in_background(self._store(chat, "".join(parts), "client disconnected"))
            raise
        except CarecycleError as exc:
            await self._store(chat, "".join(parts), str(exc))
            raise
        except Exception as exc:  # an engine bug is still a failed answer, stored and reported as such
            await self._store(chat, "".join(parts), f"{type(exc).__name__}: {exc}")
            raise EngineUnavailableError(f"the engine failed while answering: {exc}") from exc
        await self._store(chat, "".join(parts), None)

    def _stop(self, chat: PreparedChat, answer: AsyncGenerator[str, None], first: asyncio.Future) -> None:
        """Stop the engine (at its next token) and close the answer's generator once its first step is over."""
        if chat.generation is not None:
            chat.generation.cancelled.set()
        first.cancel()

        async def close() -> None:
            await asyncio.gather(first, return_exceptions=True)
            await answer.aclose()

        self._in_background(close())

    def _in_background(self, work: Coroutine) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def complete(self, chat: PreparedChat) -> ChatCompletionResponse:
        text = "".join([delta async for delta in self.deltas(chat)])
        generation = chat.generation
        return ChatCompletionResponse(
            id=chat.turn.answer_id,
            model=self.engine.model_id,
            choices=[Choice(message=ResponseMessage(content=text), finish_reason=generation.finish_reason)],
            usage=_usage(generation),
            conversation_id=chat.turn.conversation_id,
            adapter_version=generation.adapter_version,
        )

    async def stream(self, chat: PreparedChat, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events. The first delta is awaited before this returns, so an engine
        that cannot answer at all still gets a plain 503; later failures go in-band."""
        deltas = self.deltas(chat)
        first = await anext(deltas, None)
        return self._events(chat, deltas, first, include_usage)

    async def _events(self, chat: PreparedChat, deltas: AsyncIterator[str], first: str | None, include_usage: bool):
        def event(delta: Delta, finish: str | None = None, usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(
                id=chat.turn.answer_id,
                model=self.engine.model_id,
                choices=[] if usage else [StreamChoice(delta=delta, finish_reason=finish)],
                usage=usage,
                conversation_id=chat.turn.conversation_id,
            )
            return f"data: {body.model_dump_json()}\n\n"

        yield event(Delta(role="assistant", content=first or ""))
        try:
            async for delta in deltas:
                yield event(Delta(content=delta))
        except CarecycleError as exc:
            _, body = error_payload(exc)
            yield f"data: {json.dumps(body.model_dump())}\n\n"
            yield "data: [DONE]\n\n"
            return
        finally:
            await deltas.aclose()  # a client that left mid-answer: stop and store now
        yield event(Delta(), finish=chat.generation.finish_reason)
        if include_usage:
            yield event(Delta(), usage=_usage(chat.generation))
        yield "data: [DONE]\n\n"


def _usage(generation: Generation) -> Usage:
    return Usage(
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        total_tokens=generation.prompt_tokens + generation.completion_tokens,
    )
