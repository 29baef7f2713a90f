"""Per-user rate limits: a token bucket per (user, action), in memory.

In memory is enough for one app process; several app replicas would need a shared counter
(the store or a cache) — that is the scale-out path, not needed for one clinic.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from serve.errors import RateLimitedError


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: dict[str, int]):
        self.per_minute = per_minute
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, action: str, key: str) -> None:
        """Take one token for ``key`` doing ``action``, or raise RateLimitedError."""
        limit = self.per_minute.get(action)
        if not limit:
            return
        now = time.monotonic()
        rate = limit / 60.0
        with self._lock:
            bucket = self._buckets.setdefault((action, key), _Bucket(float(limit), now))
            bucket.tokens = min(float(limit), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / rate
                raise RateLimitedError(f"too many {action} requests: at most {limit} a minute; retry in {wait:.0f} s", wait)
            bucket.tokens -= 1.0
