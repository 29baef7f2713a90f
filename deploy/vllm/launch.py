"""Start a vLLM OpenAI-compatible server for carecycle: loopback only, an API key, run-time LoRA.

vLLM runs from its own virtual environment (CPU: `bash deploy/vllm/install_vllm_cpu.sh`
builds `.venv-vllm`; GPU: a venv or image with the `vllm` package). This module imports
nothing from vLLM: it builds the command line and the environment, spawns the process and
waits for `/health`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from feedback.errors import CarecycleError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
INSTALL_HINT = "build it with `bash deploy/vllm/install_vllm_cpu.sh` (CPU) or install the `vllm` package (GPU)"


class VLLMStartError(CarecycleError):
    """vLLM could not be started or did not become healthy."""


def vllm_command(
    model: str,
    port: int,
    api_key: str,
    max_lora_rank: int,
    max_loras: int,
    cpu: bool,
    served_model_name: str | None = None,
    python: Path = DEFAULT_PYTHON,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The vLLM server command line (the `vllm` script fails under the vllm-cpu distribution);
    ``extra_args`` pass any other vLLM flag through (e.g. --gpu-memory-utilization, --max-model-len)."""
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", served_model_name or Path(model).name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--api-key", api_key,
        "--enable-lora",
        "--max-lora-rank", str(max_lora_rank),
        "--max-loras", str(max_loras),
    ]
    if cpu:
        command += ["--dtype", "float32"]
    return command + list(extra_args)


def vllm_env(cpu: bool) -> dict[str, str]:
    """The process environment: run-time adapter loading on; on CPU, loopback and a 1 GiB KV cache
    unless VLLM_CPU_KVCACHE_SPACE is set."""
    env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    if cpu:
        env["VLLM_HOST_IP"] = "127.0.0.1"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def wait_until_healthy(process: subprocess.Popen, port: int, timeout_s: float, log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise VLLMStartError(f"vLLM exited with status {process.returncode} while starting{_log_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise VLLMStartError(f"vLLM did not answer {url} within {timeout_s:g} s{_log_tail(log_path)}")


def _log_tail(log_path: Path | None, lines: int = 15) -> str:
    if log_path is None or not log_path.is_file():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"; the end of {log_path}:\n" + "\n".join(tail)


def start_vllm(
    model: str,
    port: int,
    api_key: str,
    max_lora_rank: int = 16,
    max_loras: int = 2,
    cpu: bool = True,
    served_model_name: str | None = None,
    python: Path = DEFAULT_PYTHON,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    timeout_s: float = 300.0,
) -> subprocess.Popen:
    """Spawn vLLM and return the process once `/health` answers; its output goes to ``log_path``
    (None: this process's stdout, e.g. the terminal or journald)."""
    if not Path(python).is_file():
        raise VLLMStartError(f"no vLLM environment at {python}: {INSTALL_HINT}")
    command = vllm_command(model, port, api_key, max_lora_rank, max_loras, cpu, served_model_name, python, extra_args)
    output = open(log_path, "ab") if log_path else None
    try:
        # its own process group: stopping it also stops vLLM's engine and worker processes
        process = subprocess.Popen(
            command, env=vllm_env(cpu), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if output:
            output.close()
    try:
        wait_until_healthy(process, port, timeout_s, log_path)
    except BaseException:  # not ready in time, or Ctrl-C while waiting
        stop_vllm(process)
        raise
    return process


def stop_vllm(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM vLLM's process group, then SIGKILL whatever of it is left, and wait."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def run_vllm(**options) -> int:
    """Start vLLM (``start_vllm``'s options), wait until it exits, and stop it on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # runs the cleanups below
    process = start_vllm(**options)
    try:
        return process.wait()
    finally:
        stop_vllm(process)
