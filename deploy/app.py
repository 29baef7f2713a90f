"""The composition root: settings → store, engine, services → the FastAPI app (+ UI)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse

from deploy.settings import Settings
from feedback.chat_record import ChatRecord
from feedback.errors import CarecycleError
from feedback.store import Store
from serve.chat_service import ChatPolicy, ChatService
from serve.engine import Engine, GenerationParams, create_engine
from serve.errors import carecycle_error_handler, validation_error_handler
from serve.routes import router

UI_PATH = "/ui"


@dataclass
class Services:
    store: Store
    engine: Engine
    chat_record: ChatRecord
    chat_service: ChatService

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
    )


def build_engine(settings: Settings) -> Engine:
    return create_engine(
        settings.engine, model_path=settings.model_source, model_id=settings.model_id, torch_threads=settings.torch_threads
    )


def build_services(settings: Settings, engine: Engine | None = None) -> Services:
    """Open the record and load the engine; raises CarecycleError with a message to act on."""
    store = Store(settings.record_path).open()  # first: a locked record fails in a second, not after a model load
    try:
        engine = engine or build_engine(settings)
    except BaseException:
        store.close()
        raise
    record = ChatRecord(store)
    return Services(store, engine, record, ChatService(engine, record, chat_policy(settings)))


def build_app(settings: Settings, services: Services | None = None) -> FastAPI:
    services = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        services.close()

    app = FastAPI(title="carecycle", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.store = services.store
    app.state.engine = services.engine
    app.state.chat_record = services.chat_record
    app.state.chat_service = services.chat_service
    app.add_exception_handler(CarecycleError, carecycle_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.include_router(router)
    if settings.ui:
        _mount_ui(app, services)
    return app


def _mount_ui(app: FastAPI, services: Services) -> None:
    import gradio as gr

    from ui.chat_page import build_chat_page

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(UI_PATH + "/")

    page = build_chat_page(services.chat_service, services.chat_record)
    gr.mount_gradio_app(app, page, path=UI_PATH)
