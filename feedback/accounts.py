"""Accounts and roles. Passwords are hashed with argon2id (argon2-cffi); API keys are 256-bit
random tokens of which only a SHA-256 digest is stored (they are not guessable, so a slow hash
adds nothing) and which are shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
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
    def __init__(self, store: Store):
        self.store = store

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

        self.store.write(task)

    def by_api_key(self, api_key: str) -> Account | None:
        rows = self.store.read(
            "SELECT id, role FROM users WHERE api_key_hash = ? AND NOT disabled", [_key_digest(api_key)]
        )
        return Account(**rows[0]) if rows else None

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
