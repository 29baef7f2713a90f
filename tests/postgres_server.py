"""A throwaway PostgreSQL cluster for the `postgres` tests: Debian's server binaries, a fresh
data folder, a free port on 127.0.0.1, stopped when the session ends. Each test gets its own
empty database in it."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def server_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(argv: list[str]) -> None:
    """Run a server command; as root, as the ``postgres`` user (initdb refuses root)."""
    command = ["su", "postgres", "-c", shlex.join(argv)] if os.geteuid() == 0 else argv
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL (without a database name) of a running throwaway cluster; trust auth on loopback."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries missing: install Debian's `postgresql` package (.ci/run does)")
    with throwaway_cluster(bin_dir) as url:
        yield url


@contextlib.contextmanager
def throwaway_cluster(bin_dir: Path, fsync: bool = False) -> Iterator[str]:
    """Start a cluster in a fresh folder on a free loopback port (fsync off for tests, on for a
    benchmark's figures); stop and delete it after."""
    with stoppable_cluster(bin_dir, fsync) as cluster:
        yield cluster.url


@dataclasses.dataclass
class Cluster:
    """A running throwaway cluster that a test may stop and start again (same folder and port)."""

    bin_dir: Path
    folder: Path
    port: int
    options: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def pg_ctl(self, *args: str) -> None:
        _as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), *args])

    def start(self) -> None:
        self.pg_ctl("-o", self.options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "stop")


@contextlib.contextmanager
def stoppable_cluster(bin_dir: Path, fsync: bool = False) -> Iterator[Cluster]:
    """Like ``throwaway_cluster``, but yields the ``Cluster`` itself."""
    folder = Path(tempfile.mkdtemp(prefix="carecycle-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    _as_server_user([str(bin_dir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "--no-sync"])
    cluster = Cluster(bin_dir, folder, port, f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync={'on' if fsync else 'off'}")
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # a test may have left it stopped
            cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """URL of a new, empty database in the session's cluster."""
    import psycopg

    name = f"record_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"
