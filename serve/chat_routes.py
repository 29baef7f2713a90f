"""Chat routes: thin — they turn a service result, error or stream into a response."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve.dependencies import ChatRecordDep, ChatServiceDep, ChattingUser, CurrentUser, SignedInUser, VotingUser
from serve.errors import ERROR_RESPONSES
from serve.protocol import ChatCompletionRequest, ChatCompletionResponse, FeedbackRequest, FeedbackResponse

router = APIRouter(responses=ERROR_RESPONSES)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, service: ChatServiceDep, user: ChattingUser):
    chat = await service.prepare(body, user.id)
    headers = {"X-Conversation-Id": chat.turn.conversation_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = await service.stream(chat, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    response = await service.complete(chat)
    return JSONResponse(response.model_dump(), headers=headers)


@router.get("/v1/models")
async def list_models(service: ChatServiceDep, user: CurrentUser):
    return {
        "object": "list",
        "data": [{"id": service.engine.model_id, "object": "model", "created": int(time.time()), "owned_by": "carecycle"}],
    }


@router.post("/api/feedback", response_model=FeedbackResponse)
async def feedback(body: FeedbackRequest, record: ChatRecordDep, user: VotingUser) -> FeedbackResponse:
    result = await record.vote(user.id, body.message_id, body.rating, body.reason, body.comment)
    return FeedbackResponse(**result)


@router.get("/api/conversations")
def my_conversations(record: ChatRecordDep, user: SignedInUser):
    """The caller's own conversations, newest first (a plain def: the read runs off the event loop)."""
    return {"data": record.conversations_of(user.id)}


@router.get("/api/conversations/{conversation_id}")
def my_conversation(conversation_id: str, record: ChatRecordDep, user: SignedInUser):
    return {"id": conversation_id, "messages": record.conversation(conversation_id, owner=user.id)}


@router.get("/healthz")
def healthz(request: Request, service: ChatServiceDep):
    # a plain def runs in the thread pool: vLLM's health is blocking HTTP (and may re-load an adapter)
    engine = service.engine.health()
    return {"status": "ok", "engine": engine, "schema_version": request.app.state.store.schema_version()}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, service: ChatServiceDep):
    """Prometheus text format (counts and latencies only)."""
    body = request.app.state.metrics.render(service.engine.active_adapter)
    return Response(body, media_type="text/plain; version=0.0.4")
