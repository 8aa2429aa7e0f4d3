"""Stored Responses API responses: what `GET /v1/responses/{id}` returns and `previous_response_id` continues from.

One SQLite file, ROOT/responses.db, shared by every gunicorn worker (factory.sqlite_files: a connection per
thread, WAL), so a response created on one worker is found by the next request on any other:

    responses(id PRIMARY KEY, owner, created, body, history)

`body` is the response object as it was returned; `history` the whole conversation's input before its output (a
previous response's input and output, then this request's input), so a continuation needs one read. `owner` is
the API key's name ("" while the server has no keys): another key's response is as unknown as a missing one.

Retention is bounded (server config `responses`): every write first deletes what is older than `max_age_days`,
then the oldest beyond `max_stored`. Reads skip what has aged out since.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.sqlite_files import SharedSqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL,
    history TEXT NOT NULL
)"""
INDEX = "CREATE INDEX IF NOT EXISTS responses_created ON responses (created)"


@dataclass(frozen=True)
class Stored:
    response: dict[str, Any]
    history: list[dict[str, Any]]


class ResponseStore:
    def __init__(self, root: Path, max_age_days: float, max_stored: int):
        self.db = SharedSqlite(Path(root) / "responses.db", SCHEMA, INDEX)
        self.max_age_s, self.max_stored = max_age_days * 86400, max_stored

    def save(self, owner: str, response: dict[str, Any], history: list[dict[str, Any]]) -> None:
        db = self.db.connection()
        now = time.time()
        with db:  # one transaction: pruning and the insert commit together
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM responses WHERE created < ?", (now - self.max_age_s,))
            # the newest max_stored - 1 stay, and this one makes max_stored
            db.execute("DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created DESC "
                       "LIMIT -1 OFFSET ?)", (self.max_stored - 1,))
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                       (response["id"], owner, now, json.dumps(response), json.dumps(history)))

    def get(self, owner: str, response_id: str) -> Stored | None:
        row = self.db.connection().execute(
            "SELECT body, history FROM responses WHERE id = ? AND owner = ? AND created >= ?",
            (response_id, owner, time.time() - self.max_age_s)).fetchone()
        return Stored(json.loads(row[0]), json.loads(row[1])) if row else None

    def delete(self, owner: str, response_id: str) -> bool:
        cursor = self.db.connection().execute("DELETE FROM responses WHERE id = ? AND owner = ?",
                                              (response_id, owner))
        return cursor.rowcount > 0

    def count(self) -> int:
        return self.db.connection().execute("SELECT count(*) FROM responses").fetchone()[0]
