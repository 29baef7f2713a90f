"""The protocol between the training process and the runner: one JSON object per stdout line.

{"event": "start", "pid"} first; {"event": "progress", "step", "total", "loss", "tokens",
"elapsed_s"} per logged step (`elapsed_s` from the start of the training loop); then one of
{"event": "done", "adapter"}, {"event": "skipped", "reason"}, {"event": "error", "reason"}.
Lines that are not such objects (a library printing to stdout) are ignored.
"""

from __future__ import annotations

import json
from typing import Any


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def parse_event(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
