"""Shared fixtures: a tiny random Llama, settings on a temp data dir, a real HTTP server."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from tests.tiny_model import build_tiny_model
from tests.postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures of the postgres tests)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # two threads on a loaded 2-core machine made training steps 10x slower (stack notes)
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from serve.local_engine import LocalEngine

    return LocalEngine(str(tiny_model_dir), model_id="tiny-llama")


# the record's backends; the PostgreSQL one needs the throwaway cluster (tests/postgres_server.py)
RECORD_BACKENDS = ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)]


def pytest_generate_tests(metafunc):
    """A test marked ``both_backends`` runs once per record backend: its ``settings`` (and so
    its server) and ``any_store`` use the DuckDB file, then a fresh PostgreSQL database."""
    if metafunc.definition.get_closest_marker("both_backends") and "record_url" in metafunc.fixturenames:
        metafunc.parametrize("record_url", RECORD_BACKENDS, indirect=True)


@pytest.fixture
def record_url(request) -> str | None:
    """CARECYCLE_DATABASE_URL of the test's record: None (the DuckDB file), or a new, empty
    PostgreSQL database when the test runs on that backend."""
    if getattr(request, "param", "duckdb") == "postgresql":
        return request.getfixturevalue("postgres_url")
    return None


@pytest.fixture
def any_store(record_url, tmp_path):
    """An open record on the test's backend (DuckDB unless parametrized by ``both_backends``)."""
    from feedback.store import Store

    if record_url is None:
        store = Store(tmp_path / "record.duckdb")
    else:
        from feedback.pg_store import PgStore

        store = PgStore(record_url)
    with store:
        yield store


@pytest.fixture
def settings(tmp_path, tiny_model_dir, record_url):
    from deploy.settings import Settings

    return Settings(
        data_dir=tmp_path / "data", model=str(tiny_model_dir), temperature=0.0, max_tokens=12, ui=False,
        max_message_chars=500, max_tokens_limit=64, judges="", database_url=record_url,
    )


def wait_for(condition, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn serving the real app on 127.0.0.1 in a background thread."""

    def __init__(self, app, services):
        import uvicorn

        self.app = app
        self.services = services
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.server_loop = asyncio.new_event_loop()  # tests schedule coroutines on it
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.server_loop)
        self.server_loop.run_until_complete(self.server.serve())

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def store(self):
        return self.services.store


def start_server(settings, engine, judges=None) -> LiveServer:
    """A live server; ``judges`` replaces the judges the settings name (e.g. a test judge)."""
    from deploy.app import build_app, build_services

    services = build_services(settings, engine=engine)
    if judges is not None:
        services.judging.judges = judges
    return LiveServer(build_app(settings, services), services)


@pytest.fixture
def server(settings, tiny_engine):
    with start_server(settings, tiny_engine) as live:
        yield live


@pytest.fixture
def client(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@pytest.fixture
def keys(server) -> dict[str, str]:
    """API keys of test accounts: chat users, an operator and an admin."""
    from feedback.accounts import Accounts

    accounts = Accounts(server.store)
    users = {name: "user" for name in ("alice", "bob", "carol", "dave", "eve", "mallory", "user0", "user1", "user2")}
    return {name: accounts.create("test", name, role) for name, role in {**users, "olga": "operator", "ada": "admin"}.items()}
