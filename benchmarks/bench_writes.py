"""Votes over HTTP with the group-commit writer, against a bare DuckDB commit-per-row loop.

Usage: .venv/bin/python benchmarks/bench_writes.py [--clients 50] [--seconds 10] [--rate 200]
       [--baseline-rows 3000]

Starts a carecycle server in its own process on 127.0.0.1 (tiny model, no judges, no UI,
rate limits off) on a record seeded with one user, conversation and answer per client, and
drives ``POST /api/feedback`` with signed-in clients over keep-alive connections (a small
HTTP/1.1 client on asyncio streams, so that the client costs little of the shared CPU):

- saturation: ``--clients`` closed-loop clients, each sending its next vote when the last is
  answered, for ``--seconds``: votes/s and latency percentiles;
- offered load: votes sent at ``--rate`` per second on a fixed schedule (open loop: latency
  counts from the scheduled time, so a slow answer delays the ones behind it): p50/p99.

Both run twice: with the server's group commit and with it off (``max_batch`` 1, one
transaction per vote, the writer as it was). The baseline, measured in the same run, is a
bare DuckDB loop inserting the same rows into the same schema, one transaction per row (and,
for reference, all rows in one transaction). Prints the figures, the ratios and the load
average. Targets (issue 14): >= 1,000 votes/s at saturation, p99 < 50 ms at 200 votes/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="internal: run the carecycle server the benchmark talks to")
    serve.add_argument("--data-dir", required=True)
    serve.add_argument("--model", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--max-batch", type=int, required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="offered votes per second for the latency run")
    parser.add_argument("--baseline-rows", type=int, default=3000)
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the record ------------------------------------------------------------------------
def seed(store, clients: int) -> list[tuple[str, str]]:
    """One user, conversation and answer per client in ``store`` (either backend, closed after);
    returns (api key, answer id) per client."""
    from feedback.accounts import Accounts

    with store:
        accounts = Accounts(store)
        keys = [accounts.create("bench", f"voter{i}", "user") for i in range(clients)]

        def answers(conn):
            for i in range(clients):
                conn.execute("INSERT INTO conversations (id, user_id) VALUES (?, ?)", [f"conv{i}", f"voter{i}"])
                conn.execute("INSERT INTO messages (id, conversation_id, role, content) VALUES (?, ?, 'user', 'q')",
                             [f"q{i}", f"conv{i}"])
                conn.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content)"
                             " VALUES (?, ?, ?, 'assistant', 'a')", [f"a{i}", f"conv{i}", f"q{i}"])

        store.write(answers)
    return [(key, f"a{i}") for i, key in enumerate(keys)]


def bare_duckdb(folder: Path, rows: int) -> tuple[float, float]:
    """Inserts/s into the feedback table: one transaction per row, then all rows in one."""
    import duckdb

    from feedback.store import Store

    record = folder / "bare.duckdb"
    seed(Store(record), 1)
    conn = duckdb.connect(str(record))
    insert = "INSERT INTO feedback (message_id, user_id, rating, reason, comment) VALUES ('a0', 'voter0', ?, NULL, NULL)"
    started = time.perf_counter()
    for i in range(rows):
        conn.execute("BEGIN TRANSACTION")
        conn.execute(insert, ["up" if i % 2 else "down"])
        conn.execute("COMMIT")
    per_row = rows / (time.perf_counter() - started)
    started = time.perf_counter()
    conn.execute("BEGIN TRANSACTION")
    for i in range(rows):
        conn.execute(insert, ["up" if i % 2 else "down"])
    conn.execute("COMMIT")
    one_transaction = rows / (time.perf_counter() - started)
    conn.close()
    return per_row, one_transaction


# -- the server (subprocess) -----------------------------------------------------------
def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from deploy.app import build_app, build_services
    from deploy.settings import Settings
    from serve.local_engine import LocalEngine

    settings = Settings(data_dir=Path(args.data_dir), model=args.model, judges="", ui=False, cycle_enabled=False,
                        rate_limit_chat=0, rate_limit_feedback=0)
    services = build_services(settings, engine=LocalEngine(args.model, torch_threads=1))
    services.store.max_batch = args.max_batch
    # one worker (the process owns the DuckDB file); uvloop and httptools when installed (uvicorn's "auto")
    uvicorn.run(build_app(settings, services), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def start_server(data_dir: Path, model: Path, max_batch: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, __file__, "serve", "--data-dir", str(data_dir), "--model", str(model),
               "--port", str(port), "--max-batch", str(max_batch)]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, port
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the carecycle server did not start")


# -- the client ------------------------------------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection that posts a vote and reads the answer."""

    def __init__(self, port: int, api_key: str, answer_id: str):
        self.port, self.answer_id = port, answer_id
        self.header = (f"POST /api/feedback HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {api_key}\r\n"
                       "Content-Type: application/json\r\n")
        self.votes = 0

    async def open(self) -> "Connection":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def vote(self) -> None:
        self.votes += 1
        body = json.dumps({"message_id": self.answer_id, "rating": "up" if self.votes % 2 else "down"}).encode()
        self.writer.write(self.header.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status = (await self.reader.readline()).split(b" ", 2)[1]
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        answer = await self.reader.readexactly(length)
        if status != b"200":
            raise RuntimeError(f"vote answered {status.decode()}: {answer[:200]!r}")

    def close(self) -> None:
        self.writer.close()


async def saturate(connections: list[Connection], seconds: float) -> list[float]:
    """Closed loop: every connection votes again as soon as its vote is answered."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(connection: Connection) -> None:
        while (started := time.perf_counter()) < deadline:
            await connection.vote()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client(c) for c in connections))
    return latencies


async def offer(connections: list[Connection], rate: float, seconds: float) -> list[float]:
    """Open loop: vote i is due at start + i / rate; its latency counts from then."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for connection in connections:
        idle.put_nowait(connection)
    latencies: list[float] = []
    start = time.perf_counter()

    async def one(due: float) -> None:
        connection = await idle.get()
        await connection.vote()
        latencies.append(time.perf_counter() - due)
        idle.put_nowait(connection)

    tasks = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return latencies


async def measure(port: int, clients: list[tuple[str, str]], seconds: float, rate: float) -> dict[str, float]:
    connections = [await Connection(port, key, answer).open() for key, answer in clients]
    try:
        await saturate(connections, 1.0)  # warm-up
        started = time.perf_counter()
        closed = await saturate(connections, seconds)
        votes_per_s = len(closed) / (time.perf_counter() - started)
        opened = await offer(connections, rate, seconds)
    finally:
        for connection in connections:
            connection.close()
    return {"acknowledged": sum(c.votes for c in connections),"votes_per_s": votes_per_s, "sat_p50_ms": percentile(closed, 50), "sat_p99_ms": percentile(closed, 99),
            "open_p50_ms": percentile(opened, 50), "open_p99_ms": percentile(opened, 99), "open_n": len(opened)}


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if q < 100 else max(values) * 1000


def count_votes(record: Path) -> int:
    import duckdb

    with duckdb.connect(str(record), read_only=True) as conn:
        return conn.execute("SELECT count(*) FROM feedback").fetchone()[0]


def server_run(scratch: Path, model: Path, args: argparse.Namespace, max_batch: int) -> dict[str, float]:
    from feedback.store import Store

    data_dir = scratch / f"data-batch{max_batch}"
    clients = seed(Store(data_dir / "carecycle.duckdb"), args.clients)
    process, port = start_server(data_dir, model, max_batch)
    try:
        figures = asyncio.run(measure(port, clients, args.seconds, args.rate))
    finally:
        process.terminate()
        process.wait(60)
    figures["stored"] = count_votes(data_dir / "carecycle.duckdb")
    return figures


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    if args.command == "serve":
        return serve(args)
    from tests.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        model = build_tiny_model(scratch / "tiny")
        load_before = os.getloadavg()[0]
        per_row, one_transaction = bare_duckdb(scratch, args.baseline_rows)
        runs = {batch: server_run(scratch, model, args, batch) for batch in (256, 1)}
        (scratch / "after").mkdir()
        per_row_after, _ = bare_duckdb(scratch / "after", args.baseline_rows)
        load_after = os.getloadavg()[0]
    baseline = (per_row + per_row_after) / 2
    print(f"load average (1 min): {load_before:.1f} before, {load_after:.1f} after; {os.cpu_count()} CPUs; "
          f"event loop {'uvloop' if find_spec('uvloop') else 'asyncio'}, HTTP parser {'httptools' if find_spec('httptools') else 'h11'}")
    print(f"baseline, bare DuckDB, one transaction per row: {per_row:,.0f} rows/s before, {per_row_after:,.0f} after "
          f"(all {args.baseline_rows} rows in one transaction: {one_transaction:,.0f} rows/s)")
    for batch, figures in runs.items():
        name = "group commit (max_batch 256)" if batch > 1 else "one transaction per vote (max_batch 1)"
        print(f"{name}: {figures['votes_per_s']:,.0f} votes/s with {args.clients} clients "
              f"(p50 {figures['sat_p50_ms']:.1f} ms, p99 {figures['sat_p99_ms']:.1f} ms), "
              f"ratio to baseline {figures['votes_per_s'] / baseline:.2f}; at {args.rate:.0f} votes/s offered: "
              f"p50 {figures['open_p50_ms']:.1f} ms, p99 {figures['open_p99_ms']:.1f} ms (n={figures['open_n']}); "
              f"votes acknowledged {figures['acknowledged']:,}, stored {figures['stored']:,}")


if __name__ == "__main__":
    main()
