"""Accounts and roles. Passwords are hashed with argon2id (argon2-cffi); API keys are 256-bit
random tokens of which only a SHA-256 digest is stored (they are not guessable, so a slow hash
adds nothing) and which are shown once, at creation.

Signed-in requests find their account in a small in-process cache of API key → account, so
that a request costs no read of the record. An entry lives ``key_cache_s`` seconds at most;
a change made through this process (``set_role``, ``disable``) empties the cache at once, and a
change made elsewhere (another replica on the same PostgreSQL record) is seen within that time."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import duckdb

from feedback.audit import audit
from feedback.errors import ConflictError, NotFoundError
from feedback.store import Store

ROLES = ("user", "operator", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
API_KEY_PREFIX = "cc_"  # every key carecycle issues starts so: such a token is never taken as anonymous
ANONYMOUS_PREFIX = "anonymous@"  # ids of anonymous callers; no account may be created under it


@dataclass(frozen=True)
class Account:
    id: str
    role: str
    anonymous: bool = False

    def has_role(self, role: str) -> bool:
        return not self.anonymous and ROLE_RANK[self.role] >= ROLE_RANK[role]


def anonymous_account(source: str, token: str | None) -> Account:
    """An anonymous chat user: one per bearer token (its digest names it), else one per ``source``
    (the client's address). Never a signed-in user: it reads no transcripts."""
    name = f"token:{_key_digest(token)[:24]}" if token else source
    return Account(ANONYMOUS_PREFIX + name, "user", anonymous=True)


def looks_like_api_key(token: str) -> bool:
    return token.startswith(API_KEY_PREFIX)


def _key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


class Accounts:
    def __init__(self, store: Store, key_cache_s: float = 5.0, key_cache_size: int = 10_000):
        self.store = store
        self.key_cache_s = key_cache_s
        self.key_cache_size = key_cache_size
        self._by_key: dict[str, tuple[Account, float]] = {}  # key digest -> (account, expiry on time.monotonic())
        self._generation = 0  # bumped by every invalidation: a lookup that straddles one is not cached

    def create(self, actor: str, user_id: str, role: str, password: str | None = None) -> str:
        """Create an account; returns its API key (shown once, stored only as a digest)."""
        if role not in ROLES:
            raise ConflictError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        if user_id.startswith(ANONYMOUS_PREFIX):
            raise ConflictError(f"{user_id!r}: ids starting with {ANONYMOUS_PREFIX!r} belong to anonymous callers")
        api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        password_hash = _hasher().hash(password) if password else None

        def task(conn: duckdb.DuckDBPyConnection) -> None:
            if conn.execute("SELECT 1 FROM users WHERE id = ?", [user_id]).fetchone():
                raise ConflictError(f"user {user_id!r} already exists")
            conn.execute(
                "INSERT INTO users (id, role, password_hash, api_key_hash) VALUES (?, ?, ?, ?)",
                [user_id, role, password_hash, _key_digest(api_key)],
            )
            audit(conn, actor, "user.create", user_id, role=role)

        self.store.write(task)
        return api_key

    def set_role(self, actor: str, user_id: str, role: str) -> None:
        if role not in ROLES:
            raise ConflictError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")

        def task(conn: duckdb.DuckDBPyConnection) -> None:
            row = conn.execute("SELECT role FROM users WHERE id = ?", [user_id]).fetchone()
            if row is None:
                raise NotFoundError(f"unknown user {user_id!r}")
            conn.execute("UPDATE users SET role = ? WHERE id = ?", [role, user_id])
            audit(conn, actor, "user.role", user_id, before=row[0], after=role)

        self._write_and_forget_keys(task)

    def disable(self, actor: str, user_id: str) -> None:
        """Revoke an account: its API key and password stop working at once (audited)."""

        def task(conn: duckdb.DuckDBPyConnection) -> None:
            if conn.execute("SELECT 1 FROM users WHERE id = ?", [user_id]).fetchone() is None:
                raise NotFoundError(f"unknown user {user_id!r}")
            conn.execute("UPDATE users SET disabled = true WHERE id = ?", [user_id])
            audit(conn, actor, "user.disable", user_id)

        self._write_and_forget_keys(task)

    def _write_and_forget_keys(self, task) -> None:
        """A write that changes who a key signs in as: once it is committed the cache is emptied,
        and a lookup that read the record before then is not cached (the generation moved on)."""
        self.store.write(task)
        self.forget_cached_keys()

    def forget_cached_keys(self) -> None:
        self._generation += 1
        self._by_key.clear()

    def cached_api_key(self, api_key: str) -> Account | None:
        """The account of ``api_key`` if the cache has it fresh, else None (ask ``by_api_key``)."""
        entry = self._by_key.get(_key_digest(api_key))
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None

    def by_api_key(self, api_key: str) -> Account | None:
        digest, generation = _key_digest(api_key), self._generation
        rows = self.store.read("SELECT id, role FROM users WHERE api_key_hash = ? AND NOT disabled", [digest])
        if not rows:
            return None  # unknown keys are not cached: guessed tokens cannot fill the cache
        account = Account(**rows[0])
        if generation == self._generation:
            if len(self._by_key) >= self.key_cache_size:
                self._by_key.pop(next(iter(self._by_key)), None)  # the oldest entry
            self._by_key[digest] = (account, time.monotonic() + self.key_cache_s)
        return account

    def by_id(self, user_id: str) -> Account | None:
        rows = self.store.read("SELECT id, role FROM users WHERE id = ? AND NOT disabled", [user_id])
        return Account(**rows[0]) if rows else None

    def by_password(self, user_id: str, password: str) -> Account | None:
        from argon2.exceptions import VerificationError

        rows = self.store.read(
            "SELECT id, role, password_hash FROM users WHERE id = ? AND NOT disabled AND password_hash IS NOT NULL",
            [user_id],
        )
        if not rows:
            return None
        try:
            _hasher().verify(rows[0]["password_hash"], password)
        except VerificationError:
            return None
        return Account(rows[0]["id"], rows[0]["role"])

    def list(self) -> list[dict]:
        return self.store.read("SELECT id, role, disabled, created_at FROM users ORDER BY id")
