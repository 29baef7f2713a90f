"""Per-user rate limits: a token bucket per (user, action), in memory, for one app process;
with several replicas on one PostgreSQL record, a counter per (user, action) and minute in the
record, so the limit holds whichever replica a request reaches.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from feedback.coordination import count_request
from feedback.store import Store

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


class SharedRateLimiter:
    """The same limits counted in the record: at most N requests per user in each minute of the
    database's clock (a fixed window, so a burst may straddle two minutes). Each counted request
    costs one small write."""

    def __init__(self, store: Store, per_minute: dict[str, int]):
        self.store = store
        self.per_minute = per_minute

    def check(self, action: str, key: str) -> None:
        limit = self.per_minute.get(action)
        if not limit:
            return
        if count_request(self.store, action, key) > limit:
            wait = 60.0 - time.time() % 60.0
            raise RateLimitedError(f"too many {action} requests: at most {limit} a minute; retry in {wait:.0f} s", wait)
