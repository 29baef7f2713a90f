"""Operator review: the risk-ordered queue, one transcript (an audited read), a verdict."""

from __future__ import annotations

from fastapi import APIRouter, Query

from serve.admin_protocol import VerdictRequest, VerdictResponse
from serve.dependencies import OperatorUser, ReviewRecordDep
from serve.errors import ERROR_RESPONSES

router = APIRouter(prefix="/api/review", tags=["review"], responses=ERROR_RESPONSES)


@router.get("/queue")
def review_queue(record: ReviewRecordDep, operator: OperatorUser, limit: int = Query(50, ge=1, le=500)):
    return {"data": record.queue(limit=limit)}


@router.get("/items/{message_id}")
def review_item(message_id: str, record: ReviewRecordDep, operator: OperatorUser):
    return record.open_item(operator.id, message_id)


@router.post("/items/{message_id}/verdict", response_model=VerdictResponse)
def review_verdict(message_id: str, body: VerdictRequest, record: ReviewRecordDep, operator: OperatorUser):
    review_id = record.add_verdict(operator.id, message_id, body.model_dump(), body.seen_review_id)
    upcoming = record.queue(limit=1)
    return VerdictResponse(review_id=review_id, next_message_id=upcoming[0]["message_id"] if upcoming else None)
