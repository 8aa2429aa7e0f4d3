"""One SQLite file shared by processes: a connection per thread (sqlite3 objects stay in the thread that made
them), in autocommit mode, so every read sees the latest commit of any process (a key revoked by the CLI counts
from the next request of every worker), in WAL mode, so readers never wait for a writer."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class SharedSqlite:
    def __init__(self, path: Path, *setup: str):
        self.path, self.setup = path, setup  # setup: statements run once per connection (schema, pragmas)
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5)
            db.execute("PRAGMA journal_mode=WAL")
            for statement in self.setup:
                db.execute(statement)
            self._local.db = db
        return db
