"""The composition root: settings → store, engine, services → the FastAPI app (+ UI)."""

from __future__ import annotations

import asyncio
import gc
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse

from deploy import cycle_routes
from deploy.cycle import Cycle, CycleConfig
from deploy.promotion import restore_active, rollback
from deploy.scheduler import Jobs, ask_for_cycle, follow_registry, start_jobs
from deploy.record import record_store
from deploy.settings import Settings
from feedback.accounts import Accounts
from feedback.chat_record import ChatRecord
from feedback.errors import CarecycleError
from feedback.judgment_record import JudgmentRecord
from feedback.review_record import ReviewRecord
from feedback.store import Store
from retrain.gate import GatePolicy
from retrain.training.runner import stop_all_training
from serve import admin_routes, chat_routes, review_routes
from serve.body_limit import BodySizeLimit
from serve.metrics import Metrics, MetricsMiddleware
from serve.chat_service import ChatPolicy, ChatService, PreparedChat
from serve.engine import Engine, GenerationParams, create_engine
from serve.judges.base import Judge, create_judge
from serve.judging_worker import JudgingPolicy, JudgingWorker
from serve.errors import carecycle_error_handler, validation_error_handler
from serve.rate_limit import RateLimiter, SharedRateLimiter

UI_PATH = "/ui"
REVIEW_PATH = "/review"
CYCLES_PATH = "/cycles"


@dataclass
class Services:
    store: Store
    engine: Engine
    chat_record: ChatRecord
    chat_service: ChatService
    judging: JudgingWorker
    cycle: Cycle

    def close(self) -> None:
        self.engine.close()
        self.store.close()


def chat_policy(settings: Settings) -> ChatPolicy:
    return ChatPolicy(
        system_prompt=settings.system_prompt,
        defaults=GenerationParams(
            max_tokens=settings.max_tokens, temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed
        ),
        max_tokens_limit=settings.max_tokens_limit,
        max_message_chars=settings.max_message_chars,
        max_messages=settings.max_messages,
        safety_reminder=settings.safety_reminder,
    )


def judging_policy(settings: Settings) -> JudgingPolicy:
    return JudgingPolicy(
        timeout_s=settings.judge_timeout_s * (settings.judge_retries + 1) + 5,
        retry_after_s=settings.judge_retry_after_s,
        max_attempts=settings.judge_max_attempts,
        sweep_every_s=settings.judge_sweep_every_s,
    )


def build_judge(kind: str, settings: Settings, engine: Engine) -> Judge:
    if kind == "self":
        return create_judge("self", engine=engine)
    if kind == "external":
        return create_judge(
            "external", url=settings.judge_url, model=settings.judge_model, api_key=settings.judge_api_key,
            timeout_s=settings.judge_timeout_s, retries=settings.judge_retries,
        )
    from serve.judges.finetuned import resolve_classifier

    return create_judge("finetuned", model_dir=resolve_classifier(settings.judge_classifier, settings.judges_dir))


def live_judging(settings: Settings, engine: Engine, store: Store, chat_service: ChatService) -> JudgingWorker:
    judges = [build_judge(kind, settings, engine) for kind in settings.judge_kinds]
    worker = JudgingWorker(judges, JudgmentRecord(store), judging_policy(settings))

    def judge_answer(chat: PreparedChat, text: str) -> None:
        worker.submit(chat.turn.answer_id, chat.messages, text)  # the prompt just stored with the answer

    chat_service.listeners.append(judge_answer)
    return worker


def cycle_config(settings: Settings) -> CycleConfig:
    return CycleConfig(
        methods=tuple(settings.cycle_method_list), min_signal=settings.cycle_min_signal,
        gate=GatePolicy(alpha=settings.cycle_alpha, refusal_margin=settings.cycle_refusal_tolerance),
        require_approval=settings.cycle_require_approval, benchmark=settings.cycle_benchmark,
        eval_split=settings.cycle_eval_split, eval_extra_files=tuple(settings.cycle_eval_extra_files),
        eval_limit=settings.cycle_eval_limit,
        eval_max_tokens=settings.cycle_eval_max_tokens, sample_cap=settings.cycle_sample_cap,
        sample_n=settings.cycle_sample_n, sample_budget_s=settings.cycle_sample_budget_s,
        half_score=settings.cycle_half_score, anchors=settings.cycle_anchors, anchor_ratio=settings.cycle_anchor_ratio,
        judge_new_verdicts=(settings.cycle_judge_new_verdicts  # only a judge someone uses
                            if "finetuned" in {*settings.judge_kinds, settings.cycle_judge} else None),
        system_prompt=settings.system_prompt, train=settings.cycle_train,
    )


def build_engine(settings: Settings, worker: bool = False) -> Engine:
    """The engine the settings name; ``worker``: for `carecycle worker`. Beside an external worker
    vLLM is shared, and only the worker frees adapters in it (replicas may still serve any other)."""
    if settings.engine == "vllm":
        return create_engine("vllm", base_url=settings.vllm_url, model_id=settings.model_id,
                             api_key=settings.vllm_api_key, timeout_s=settings.vllm_timeout_s,
                             frees_adapters=worker or settings.worker == "embedded")
    return create_engine(
        settings.engine, model_path=settings.model_source, model_id=settings.model_id, torch_threads=settings.torch_threads,
        device=settings.device,
    )


def build_services(settings: Settings, engine: Engine | None = None) -> Services:
    """Open the record, load the engine and the judges; raises CarecycleError with a message to act on."""
    # first: a locked record fails in a second, not after a model load
    store = record_store(settings).open()
    try:
        engine = engine or build_engine(settings)
        record = ChatRecord(store)
        chat_service = ChatService(engine, record, chat_policy(settings))
        judging = live_judging(settings, engine, store, chat_service)
        cycle = Cycle(store, engine, lambda: build_judge(settings.cycle_judge, settings, engine),
                      settings.model_source, settings.data_dir, cycle_config(settings))
    except BaseException:
        store.close()
        raise
    return Services(store, engine, record, chat_service, judging, cycle)


def build_app(settings: Settings, services: Services | None = None) -> FastAPI:
    services = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        embedded = settings.worker == "embedded"  # else `carecycle worker` runs the jobs and the sweep
        jobs = start_jobs(settings, services.cycle) if embedded else Jobs()
        restore_active(services.engine, services.cycle.registry)
        await services.judging.start(sweep=embedded)
        if not embedded:  # replicas: promotions and rollbacks may happen through any of them
            jobs.tasks.append(asyncio.create_task(
                follow_registry(services.engine, services.cycle.registry, settings.registry_poll_s)))
        app.state.scheduler = jobs.scheduler
        # the model and libraries are loaded: keep their objects out of the collector's full passes,
        # which otherwise stop every request for about half a second each (measured under load)
        gc.freeze()
        yield
        jobs.stop()
        await asyncio.to_thread(stop_all_training)  # a training child must not outlive the server
        await services.judging.stop()
        services.close()

    app = FastAPI(title="carecycle", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.store = services.store
    app.state.engine = services.engine
    app.state.chat_record = services.chat_record
    app.state.chat_service = services.chat_service
    app.state.judging = services.judging
    app.state.cycle = services.cycle
    app.state.accounts = Accounts(services.store)
    app.state.review_record = ReviewRecord(services.store)
    limits = {"chat": settings.rate_limit_chat, "feedback": settings.rate_limit_feedback}
    # replicas on one PostgreSQL record count in it, so a limit holds whichever replica a request reaches
    app.state.rate_limiter = SharedRateLimiter(services.store, limits) if settings.database_url else RateLimiter(limits)
    app.add_exception_handler(CarecycleError, carecycle_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.state.metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for module in (chat_routes, review_routes, admin_routes, cycle_routes):
        app.include_router(module.router)
    if settings.ui:
        _mount_ui(app, services)
    return app


def _mount_ui(app: FastAPI, services: Services) -> None:
    import gradio as gr

    from ui.chat_page import build_chat_page
    from ui.cycles_page import build_cycles_page
    from ui.access import sign_in
    from ui.review_page import SHORTCUTS_JS, build_review_page

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(UI_PATH + "/")

    accounts = app.state.accounts
    page = build_chat_page(services.chat_service, services.chat_record, app.state.rate_limiter)
    chat_auth = None if app.state.settings.anonymous_chat else sign_in(accounts, "user")
    gr.mount_gradio_app(app, page, path=UI_PATH, auth=chat_auth, auth_message="carecycle — sign in to chat")
    review = build_review_page(app.state.review_record, accounts)
    gr.mount_gradio_app(app, review, path=REVIEW_PATH, auth=sign_in(accounts, "operator"), js=SHORTCUTS_JS,
                        auth_message="carecycle review — operators sign in with their password")
    cycle = services.cycle
    dashboard = build_cycles_page(
        cycle.registry, accounts, lambda: services.engine.active_adapter,
        trigger=lambda actor: _cycle_asked(ask_for_cycle(app.state.settings, cycle, f"ui:{actor}", actor)),
        rollback=lambda actor: rollback(services.engine, cycle.registry, actor),  # the page runs it in a thread
    )
    gr.mount_gradio_app(app, dashboard, path=CYCLES_PATH, auth=sign_in(accounts, "operator"),
                        auth_message="carecycle cycles — operators and admins sign in")


def _cycle_asked(asked: dict) -> str:
    if "cycle_id" in asked:
        return f"cycle {asked['cycle_id']} started"
    return f"cycle queued for the worker (request {asked['request_id']})"
