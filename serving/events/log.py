"""The event log: one SQLite file under the factory root (ROOT/events.db) that every gunicorn worker appends to and
tails by id, so a WebSocket held by one worker sees what happened in all of them (ROOT/keys.db and ROOT/limits.db
are shared the same way). Ids grow across workers (SQLite's AUTOINCREMENT), so a page that reconnects can ask for
what it missed. The log is bounded: every PRUNE_EVERY ids, an append drops all but the newest KEEP rows.

An event observed by several workers (the registry changed: every worker's watcher sees it) carries a `dedupe` key,
and only the first append of a key is kept. The same file holds WebSocket tickets, for the same reason: a ticket
issued by one worker is redeemed on whichever worker the browser's socket lands.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

import orjson

from factory.sqlite_files import SharedSqlite

KEEP = 5000
PRUNE_EVERY = 500
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, dedupe TEXT UNIQUE, "
    "time REAL NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tickets (digest TEXT PRIMARY KEY, key_id TEXT, expires REAL NOT NULL)",
    "PRAGMA synchronous=NORMAL",  # an event lost to a power cut is harmless; a fsync per event is not free
)


class EventLog:
    def __init__(self, path: Path):
        self.db = SharedSqlite(path, *SCHEMA)
        self.pruned_at = 0

    def append(self, event: dict[str, Any], dedupe: str | None = None) -> int | None:
        """Store `event` (its `type`, `time`, ... fields); returns its id, or None when `dedupe` was seen before."""
        db = self.db.connection()
        cursor = db.execute("INSERT OR IGNORE INTO events (dedupe, time, body) VALUES (?, ?, ?)",
                            (dedupe, event["time"], orjson.dumps(event)))
        if cursor.rowcount == 0:
            return None
        event_id = cursor.lastrowid
        if event_id // PRUNE_EVERY != self.pruned_at:  # once per PRUNE_EVERY ids (a refused dedupe skips an id)
            self.pruned_at = event_id // PRUNE_EVERY
            db.execute("DELETE FROM events WHERE id <= ?", (event_id - KEEP,))
            db.execute("DELETE FROM tickets WHERE expires < ?", (time.time(),))
        return event_id

    def after(self, event_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """Events newer than `event_id`, oldest first, each with its `id`."""
        rows = self.db.connection().execute("SELECT id, body FROM events WHERE id > ? ORDER BY id LIMIT ?",
                                            (event_id, limit)).fetchall()
        return [{**orjson.loads(body), "id": row_id} for row_id, body in rows]

    def last_id(self) -> int:
        return self.db.connection().execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]

    # ------------------------------------------------------------ tickets

    def issue_ticket(self, key_id: str | None, ttl_s: float) -> str:
        """A random single-use ticket for a WebSocket; only its hash is stored."""
        ticket = "evt_" + secrets.token_urlsafe(24)
        self.db.connection().execute("INSERT INTO tickets VALUES (?, ?, ?)",
                                     (_digest(ticket), key_id, time.time() + ttl_s))
        return ticket

    def redeem_ticket(self, ticket: str) -> tuple[bool, str | None]:
        """(valid, the key id it was issued for): deleted as it is read, so a second use finds nothing."""
        row = self.db.connection().execute("DELETE FROM tickets WHERE digest = ? RETURNING key_id, expires",
                                           (_digest(ticket),)).fetchone()
        if row is None or row[1] < time.time():
            return False, None
        return True, row[0]


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()
