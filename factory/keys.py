"""API keys: created by `factory keys create`, checked by the server on every request (serving/api/auth.py).

One SQLite file, ROOT/keys.db (WAL mode, so the server's reads never wait on the CLI's writes):

    keys(name PRIMARY KEY, digest UNIQUE, prefix, scope, rpm, tpm, created, revoked)

The secret (`sk-fac-` + 32 random bytes, URL-safe base64) is shown once, when it is made, and stored only as its
sha256. A fast hash is right here, unlike for passwords: a key has 256 bits of entropy, so no dictionary or brute
force reaches it however fast each guess is, and a fast hash keeps the per-request lookup an index probe. `prefix`
(the first characters, 4 of them random) lets a person tell keys apart in `factory keys ls` without revealing them.

Revoking keeps the row (marked `revoked`): a key stops working at once, because the server looks every request's key
up here rather than caching it, and `auth.keys: required_if_any` keeps counting it, so revoking the last key does not
silently open the server again.

Stdlib only: this is the kernel both the CLI and the server import.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from factory.sqlite_files import SharedSqlite

SECRET_PREFIX = "sk-fac-"
SHOWN_CHARS = len(SECRET_PREFIX) + 4  # the non-secret part `ls` shows
SCOPES = ("inference", "fine-tune", "admin")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # names appear in logs, metric labels and messages

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    scope TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    created REAL NOT NULL,
    revoked REAL
)"""
COLUMNS = "name, prefix, scope, rpm, tpm, created, revoked"


class KeyStoreError(Exception):
    """A refused change: a bad name or scope, a name in use, a key that does not exist."""


@dataclass(frozen=True)
class Key:
    name: str
    prefix: str
    scope: str
    rpm: int | None  # requests per minute; None: unlimited
    tpm: int | None  # tokens (prompt + completion) per minute; None: unlimited
    created: float
    revoked: float | None = None

    def allows(self, scope: str) -> bool:
        """`admin` may do everything; the other scopes only their own routes."""
        return self.scope == "admin" or self.scope == scope


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def keys_path(root: Path) -> Path:
    return Path(root) / "keys.db"


class KeyStore:
    """The keys under one factory root. Each thread gets its own connection (sqlite3 objects stay in their thread);
    a process that forks opens fresh ones."""

    def __init__(self, root: Path):
        self.path = keys_path(root)
        self._file = SharedSqlite(self.path, SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return self._file.connection()

    def create(self, name: str, scope: str, *, rpm: int | None = None, tpm: int | None = None) -> str:
        """A new key's secret: the only time it exists outside the caller's hands is this return value."""
        if not NAME.fullmatch(name):
            raise KeyStoreError(f"key name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        if scope not in SCOPES:
            raise KeyStoreError(f"scope {scope!r}: one of {', '.join(SCOPES)}")
        for label, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise KeyStoreError(f"--{label} must be at least 1 (leave it out for no limit)")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        db = self._db()
        with _immediate(db):
            row = db.execute("SELECT revoked FROM keys WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise KeyStoreError(f"a key named {name!r} exists; revoke it first or choose another name")
            # a revoked key's name may be reused: its row (and so its old secret) is replaced
            db.execute("INSERT OR REPLACE INTO keys (name, digest, prefix, scope, rpm, tpm, created, revoked) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                       (name, digest(secret), secret[:SHOWN_CHARS], scope, rpm, tpm, time.time()))
        return secret

    def revoke(self, name: str) -> Key:
        db = self._db()
        with _immediate(db):
            if db.execute("UPDATE keys SET revoked = ? WHERE name = ? AND revoked IS NULL",
                          (time.time(), name)).rowcount == 0:
                raise KeyStoreError(f"no active key named {name!r}")
        return self.get(name)

    def get(self, name: str) -> Key | None:
        row = self._db().execute(f"SELECT {COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
        return Key(*row) if row else None

    def list(self) -> list[Key]:
        return [Key(*row) for row in self._db().execute(f"SELECT {COLUMNS} FROM keys ORDER BY created")]

    def find(self, secret: str) -> Key | None:
        """The active key with this secret, or None. One indexed read (tens of microseconds), so the server calls it
        on its event loop for every request."""
        row = self._db().execute(f"SELECT {COLUMNS} FROM keys WHERE digest = ? AND revoked IS NULL",
                                 (digest(secret),)).fetchone()
        return Key(*row) if row else None

    def any(self) -> bool:
        """Whether a key was ever created (revoked ones count: see the module docstring)."""
        return self._db().execute("SELECT EXISTS (SELECT 1 FROM keys)").fetchone()[0] == 1


class _immediate:
    """A write transaction that takes the lock at BEGIN, so check-then-write is atomic across processes."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
