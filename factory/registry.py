"""The registry: the one contract between the build pipeline (writer) and the server (reader).

A model is a name with immutable versions `name@1`, `name@2`, ... Each version is a directory with one
sub-directory per artifact format (`mlx-float16/`, `gguf-q4_0/`, ...) and a `manifest.json` listing every file's
sha256 and size plus lineage (spec hash, source revision, flow-run id) and the validation report.
Aliases name versions: `latest` moves on every publish; `prod` and custom aliases move on promote; each alias keeps
its history so it can be rolled back.

Publish is atomic: files are written and fsynced in a locked staging directory, then, inside one SQLite write
transaction (WAL mode), the directory is renamed into place and the version row and alias moves are recorded.
A reader lists versions from the index only, so it never sees a partial version; a publisher killed at any moment
leaves at most an unlisted directory, which the next `Registry(...)` sweeps away.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.storage import LocalVersionStore, copy_and_hash, sha256_file, write_durably

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
LATEST = "latest"
MANIFEST = "manifest.json"
SQLITE_MAX_INT = 2**63 - 1  # version numbers are SQLite integers

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL, formats TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL, spec_hash TEXT, source_revision TEXT, flow_run_id TEXT,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS alias_moves (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER NOT NULL, moved_at REAL NOT NULL);
CREATE VIEW IF NOT EXISTS aliases AS
    SELECT name, alias, version FROM alias_moves AS m
    WHERE seq = (SELECT max(seq) FROM alias_moves WHERE name = m.name AND alias = m.alias);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', 0);
"""

class RegistryError(Exception):
    """A request the registry cannot satisfy (bad name, nothing to roll back to, ...)."""


class NotFound(RegistryError):
    """No such model, version or alias."""


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    created: float
    formats: list[str]
    path: Path
    spec_hash: str | None
    source_revision: str | None
    flow_run_id: str | None
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())

    def artifact(self, format_key: str) -> Path:
        if format_key not in self.formats:
            raise NotFound(f"{self.ref} has no {format_key!r} artifact (it has: {', '.join(self.formats)})")
        return self.path / format_key


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.store = LocalVersionStore(self.root)
        self.index = self.root / "index.sqlite"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        self.sweep()

    # ------------------------------------------------------------ writing

    def publish(
        self,
        name: str,
        artifacts: Mapping[str, Path],
        *,
        spec_hash: str | None = None,
        source_revision: str | None = None,
        flow_run_id: str | None = None,
        report: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        serve: dict[str, Any] | None = None,
        aliases: Sequence[str] = (),
        embedding: dict[str, Any] | None = None,
    ) -> Version:
        """Publish `artifacts` ({format key: file or directory}) as the next version of `name`.

        `serve` is the spec's serving section (aliases, context length, generation defaults) for the server.
        `embedding` (an embedding model's settings and request limits) makes the manifest say `task: embedding`;
        a chat model's manifest has neither key.
        """
        _check_name(name, "model name")
        if not artifacts:
            raise RegistryError("a version needs at least one artifact")
        for key, source in artifacts.items():
            _check_name(key, "format key")
            if not Path(source).exists():
                raise RegistryError(f"artifact {key!r}: {source} does not exist")
        with self.store.new_staging() as staged:
            files = {key: _stage_artifact(Path(source), staged / key) for key, source in artifacts.items()}
            with self._write() as db:
                number = db.execute("SELECT coalesce(max(version), 0) + 1 FROM versions WHERE name = ?", (name,))
                version = number.fetchone()[0]
                created = time.time()
                manifest = {
                    "name": name, "version": version, "created": created,
                    "spec_hash": spec_hash, "source_revision": source_revision, "flow_run_id": flow_run_id,
                    "lineage": lineage or {}, "report": report or {}, "serve": serve or {},
                    "artifacts": {key: {"files": entries} for key, entries in files.items()},
                }
                if embedding is not None:
                    manifest |= {"task": "embedding", "embedding": embedding}
                manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
                write_durably(staged / MANIFEST, manifest_bytes)
                self.store.commit(staged, name, version)
                db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, version, created, json.dumps(sorted(artifacts)), _sha256_bytes(manifest_bytes),
                     spec_hash, source_revision, flow_run_id),
                )
                for alias in dict.fromkeys([LATEST, *aliases]):
                    self._move_alias(db, name, alias, version)
        return self.get(name, version)

    def promote(self, ref: str, alias: str) -> Version:
        """Point `alias` (e.g. `prod`) at the version `ref` resolves to."""
        if alias == LATEST:
            raise RegistryError("'latest' always names the newest version; promote to another alias")
        _check_name(alias, "alias")
        if alias.isdigit():
            raise RegistryError("an alias cannot be a number (it would read as a version)")
        target = self.resolve(ref)
        with self._write() as db:
            self._move_alias(db, target.name, alias, target.version)
        return self.get(target.name, target.version)

    def rollback(self, name: str, alias: str = "prod") -> Version:
        """Move `alias` back to where it pointed before its last move."""
        with self._write() as db:
            moves = db.execute(
                "SELECT seq, version FROM alias_moves WHERE name = ? AND alias = ? ORDER BY seq DESC LIMIT 2",
                (name, alias),
            ).fetchall()
            if not moves:
                raise NotFound(f"{name}@{alias} does not exist")
            if len(moves) < 2:
                raise RegistryError(f"{name}@{alias} has no earlier version to roll back to")
            db.execute("DELETE FROM alias_moves WHERE seq = ?", (moves[0][0],))
            _bump_generation(db)
        return self.get(name, moves[1][1])

    def sweep(self) -> None:
        """Remove what dead publishers left: unlocked staging directories and version directories not in the index."""
        self.store.sweep_staging()
        with self._write() as db:
            known = set(db.execute("SELECT name, version FROM versions").fetchall())
            for name, version in self.store.stored() - known:
                self.store.discard(self.store.path(name, version))

    # ------------------------------------------------------------ reading

    def names(self) -> list[str]:
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def list(self, name: str | None = None) -> list[Version]:
        query = "SELECT * FROM versions" + (" WHERE name = ?" if name else "") + " ORDER BY name, version"
        with self._connect() as db:
            rows = db.execute(query, (name,) if name else ()).fetchall()
            aliases = self._aliases(db)
        return [self._version(row, aliases) for row in rows]

    def get(self, name: str, version: int) -> Version:
        with self._connect() as db:
            row = db.execute("SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
            if row is None:
                raise NotFound(f"{name}@{version} does not exist")
            return self._version(row, self._aliases(db))

    def resolve(self, ref: str) -> Version:
        """`name` (its latest), `name@N` or `name@alias` → that version."""
        name, _, selector = ref.partition("@")
        selector = selector or LATEST
        if selector.isascii() and selector.isdigit():
            number = int(selector)
            if number > SQLITE_MAX_INT:  # SQLite would raise OverflowError binding it; no such version can exist
                raise NotFound(f"{ref} does not exist")
            return self.get(name, number)
        with self._connect() as db:
            row = db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, selector)).fetchone()
        if row is None:
            known = self.names()
            raise NotFound(f"{ref} does not exist" if name in known else f"no model named {name!r} in the registry")
        return self.get(name, row[0])

    def aliases(self, name: str) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (name,))
            return dict(rows.fetchall())

    def alias_moves(self) -> list[tuple[int, str, str, int, float]]:
        """The alias log, oldest first: (seq, name, alias, version, moved_at). A rollback deletes the alias's last
        move, so watchers tell a rollback by a seq that disappeared (seqs are never reused)."""
        with self._connect() as db:
            return db.execute("SELECT seq, name, alias, version, moved_at FROM alias_moves ORDER BY seq").fetchall()

    def generation(self) -> int:
        """A counter that changes on every publish, promote and rollback: cheap to poll for watchers."""
        with self._connect() as db:
            return db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]

    def verify(self, ref: str) -> list[str]:
        """Re-hash a version against its manifest; returns the problems found (empty when intact)."""
        version = self.resolve(ref)
        manifest_path = version.path / MANIFEST
        if not manifest_path.is_file():
            return [f"{version.ref}: manifest.json is missing"]
        with self._connect() as db:
            expected = db.execute(
                "SELECT manifest_sha256 FROM versions WHERE name = ? AND version = ?", (version.name, version.version)
            ).fetchone()[0]
        if sha256_file(manifest_path) != expected:
            return [f"{version.ref}: manifest.json was modified after publish"]
        problems = []
        listed = set()
        for key, artifact in version.manifest()["artifacts"].items():
            for relative, entry in artifact["files"].items():
                path = version.path / key / relative
                listed.add(path)
                if not path.is_file():
                    problems.append(f"{version.ref}: {key}/{relative} is missing")
                elif path.stat().st_size != entry["size"]:
                    problems.append(f"{version.ref}: {key}/{relative} has size {path.stat().st_size}, expected {entry['size']}")
                elif sha256_file(path) != entry["sha256"]:
                    problems.append(f"{version.ref}: {key}/{relative} does not match its sha256")
        extra = {p for p in version.path.rglob("*") if p.is_file() and p != manifest_path} - listed
        problems += [f"{version.ref}: unexpected file {p.relative_to(version.path)}" for p in sorted(extra)]
        return problems

    # ------------------------------------------------------------ internals

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation keeps the registry safe to share between threads (the server's watcher).
        db = sqlite3.connect(self.index, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE serialises publishers before they pick a version number."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _move_alias(self, db: sqlite3.Connection, name: str, alias: str, version: int) -> None:
        db.execute(
            "INSERT INTO alias_moves (name, alias, version, moved_at) VALUES (?, ?, ?, ?)",
            (name, alias, version, time.time()),
        )
        _bump_generation(db)

    @staticmethod
    def _aliases(db: sqlite3.Connection) -> dict[tuple[str, int], list[str]]:
        by_version: dict[tuple[str, int], list[str]] = {}
        for name, alias, version in db.execute("SELECT name, alias, version FROM aliases ORDER BY alias"):
            by_version.setdefault((name, version), []).append(alias)
        return by_version

    def _version(self, row: tuple, aliases: dict[tuple[str, int], list[str]]) -> Version:
        name, version, created, formats, _manifest_sha, spec_hash, source_revision, flow_run_id = row
        return Version(
            name=name, version=version, created=created, formats=json.loads(formats),
            path=self.store.path(name, version), spec_hash=spec_hash, source_revision=source_revision,
            flow_run_id=flow_run_id, aliases=aliases.get((name, version), []),
        )


def _stage_artifact(source: Path, target: Path) -> dict[str, dict[str, Any]]:
    """Copy a file or directory tree into the staging area; returns {relative path: {sha256, size}}."""
    target.mkdir()
    sources = [(source, source.name)] if source.is_file() else [
        (path, path.relative_to(source).as_posix()) for path in sorted(source.rglob("*")) if path.is_file()
    ]
    entries = {}
    for path, relative in sources:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        digest, size = copy_and_hash(path, target / relative)
        entries[relative] = {"sha256": digest, "size": size}
    return entries


def _bump_generation(db: sqlite3.Connection) -> None:
    db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_name(value: str, what: str) -> None:
    if not NAME.match(value):
        raise RegistryError(f"{what} {value!r} must match {NAME.pattern}")
