"""Votes over HTTP on the DuckDB file (one server) against PostgreSQL with one and two replicas.

Usage: .venv/bin/python benchmarks/bench_replicas.py [--clients 32] [--seconds 8] [--rate 100]

In one run, on the same machine: a throwaway PostgreSQL cluster (Debian's server binaries,
tests/postgres_server.py, fsync on as in production) and `carecycle serve` processes on
127.0.0.1 (tiny model, no judges, no UI, rate limits off), each on a record seeded with one user,
conversation and answer per client. Three set-ups: the DuckDB file with one server; PostgreSQL
with one replica; PostgreSQL with two replicas (clients split between them, as a load balancer
would). Each measures ``POST /api/feedback`` with benchmarks/bench_writes.py's keep-alive client:
closed loop for ``--seconds`` (acknowledged votes/s, p50/p99 of all answers), then ``--rate``
votes/s offered (p50/p99), counting refused votes (503), and checks that every acknowledged vote is
stored. Prints the figures and the ratios to the DuckDB
file, and the load average (the machine is shared: compare within one run only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_writes import Connection, free_port, offer, percentile, saturate, seed  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=100.0, help="offered votes per second for the latency run")
    return parser.parse_args()


class CountingConnection(Connection):
    """bench_writes' client, counting the votes refused (e.g. 503 when a write lost its
    serialisation retries) instead of stopping at the first."""

    refused = 0

    async def vote(self) -> None:
        try:
            await super().vote()
        except RuntimeError as exc:
            self.refused += 1
            self.last_refusal = str(exc)


def start_replicas(count: int, env: dict[str, str], logs: Path) -> list[tuple[subprocess.Popen, int]]:
    carecycle = str(Path(sys.executable).with_name("carecycle"))
    started = []
    for n in range(count):
        port = free_port()
        with open(logs / f"replica{n}-{port}.log", "ab") as out:
            started.append((subprocess.Popen([carecycle, "serve", "--port", str(port)], env=env, stdout=out,
                                             stderr=subprocess.STDOUT), port))
    for process, port in started:
        wait_healthy(process, port)
    return started


def wait_healthy(process: subprocess.Popen, port: int) -> None:
    import httpx

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"carecycle serve on port {port} did not start")


async def measure(ports: list[int], clients: list[tuple[str, str]], seconds: float, rate: float) -> dict[str, float]:
    """Clients spread over the replicas round-robin."""
    connections = [await CountingConnection(ports[i % len(ports)], key, answer).open()
                   for i, (key, answer) in enumerate(clients)]
    try:
        await saturate(connections, 1.0)  # warm-up
        started = time.perf_counter()
        refused_before = sum(c.refused for c in connections)
        closed = await saturate(connections, seconds)
        acknowledged = len(closed) - (sum(c.refused for c in connections) - refused_before)
        votes_per_s = acknowledged / (time.perf_counter() - started)
        opened = await offer(connections, rate, seconds)
    finally:
        for connection in connections:
            connection.close()
    refused = sum(c.refused for c in connections)
    refusal = next((c.last_refusal for c in connections if c.refused), "")
    return {"acknowledged": sum(c.votes for c in connections) - refused, "refused": refused, "refusal": refusal[:160],
            "votes_per_s": votes_per_s,
            "sat_p50_ms": percentile(closed, 50), "sat_p99_ms": percentile(closed, 99),
            "open_p50_ms": percentile(opened, 50), "open_p99_ms": percentile(opened, 99)}


def run(name: str, store, replicas: int, env: dict[str, str], scratch: Path, args: argparse.Namespace) -> dict[str, float]:
    clients = seed(store, args.clients)
    started = start_replicas(replicas, env, scratch)
    try:
        figures = asyncio.run(measure([port for _, port in started], clients, args.seconds, args.rate))
    finally:
        for process, _ in started:
            process.terminate()
            process.wait(60)
    with store:
        figures["stored"] = store.read_one("SELECT count(*) FROM feedback")[0]
    print(f"{name}: {figures['votes_per_s']:,.0f} votes/s with {args.clients} clients (p50 {figures['sat_p50_ms']:.1f} ms, "
          f"p99 {figures['sat_p99_ms']:.1f} ms); at {args.rate:.0f} votes/s offered: p50 {figures['open_p50_ms']:.1f} ms, "
          f"p99 {figures['open_p99_ms']:.1f} ms; acknowledged {figures['acknowledged']:,}, stored {figures['stored']:,}, "
          f"refused {figures['refused']:,} {figures['refusal']}",
          flush=True)
    return figures


def main() -> None:
    args = parse_args()
    import psycopg

    from feedback.pg_store import PgStore
    from feedback.store import Store
    from tests.postgres_server import server_bin, throwaway_cluster
    from tests.tiny_model import build_tiny_model

    bin_dir = server_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries missing: install Debian's `postgresql` package")
    with tempfile.TemporaryDirectory() as scratch_dir, throwaway_cluster(bin_dir, fsync=True) as cluster:
        scratch = Path(scratch_dir)
        model = build_tiny_model(scratch / "tiny")
        base = {**os.environ, "OMP_NUM_THREADS": "1", "CARECYCLE_MODEL": str(model), "CARECYCLE_JUDGES": "",
                "CARECYCLE_UI": "false", "CARECYCLE_CYCLE_ENABLED": "false", "CARECYCLE_RATE_LIMIT_CHAT": "0",
                "CARECYCLE_RATE_LIMIT_FEEDBACK": "0", "CARECYCLE_TORCH_THREADS": "1"}
        load_before = os.getloadavg()[0]
        results = {}
        data = scratch / "duckdb"
        results["DuckDB file, 1 server"] = run(
            "DuckDB file, 1 server", Store(data / "carecycle.duckdb"), 1, {**base, "CARECYCLE_DATA_DIR": str(data)}, scratch, args)
        for replicas in (1, 2):
            url = f"{cluster}/votes{replicas}"
            with psycopg.connect(f"{cluster}/postgres", autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE votes{replicas}")
            env = {**base, "CARECYCLE_DATA_DIR": str(scratch / f"pg{replicas}"), "CARECYCLE_DATABASE_URL": url,
                   "CARECYCLE_WORKER": "external"}
            name = f"PostgreSQL, {replicas} replica{'s' if replicas > 1 else ''}"
            results[name] = run(name, PgStore(url), replicas, env, scratch, args)
        load_after = os.getloadavg()[0]
    print(f"load average (1 min): {load_before:.1f} before, {load_after:.1f} after; {os.cpu_count()} CPUs")
    duck = results["DuckDB file, 1 server"]
    for name, figures in results.items():
        print(f"{name}: votes/s x{figures['votes_per_s'] / duck['votes_per_s']:.2f} of the DuckDB file, "
              f"p99 at {args.rate:.0f}/s x{figures['open_p99_ms'] / duck['open_p99_ms']:.2f}")


if __name__ == "__main__":
    main()
