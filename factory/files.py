"""Uploaded files (OpenAI's /v1/files): one immutable file per id under `$FACTORY_ROOT/files/`, plus its metadata.

The server writes them; fine-tuning flows read them by path. Writes are atomic (temp file, fsync, rename), so a
reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from factory.storage import write_durably

FILE_ID = re.compile(r"file-[0-9a-f]{24}")  # what `adopt` names files


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int

    def openai(self) -> dict:
        return {"object": "file", "status": "processed", **asdict(self)}


class FileStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def staging_path(self) -> Path:
        """A private path to receive an upload into before `adopt` checks nothing else and files it."""
        return self.root / f".upload-{uuid.uuid4().hex}.tmp"

    def adopt(self, staged: Path, filename: str, purpose: str) -> StoredFile:
        """File a fully written upload under a new id: fsync it, rename it into place, then write its metadata
        (the metadata is what makes a file exist, so a crash in between leaves no half-listed file)."""
        stored = StoredFile(id=f"file-{uuid.uuid4().hex[:24]}", filename=filename, purpose=purpose,
                            bytes=staged.stat().st_size, created_at=int(time.time()))
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        os.rename(staged, self.path(stored.id))
        meta = self._meta(stored.id)
        temporary = meta.with_name(meta.name + ".tmp")
        write_durably(temporary, json.dumps(asdict(stored)).encode())
        os.rename(temporary, meta)
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        if not FILE_ID.fullmatch(file_id):  # not an id this store makes: never a path, nor a name too long for one
            return None
        meta = self._meta(file_id)
        if not meta.is_file():
            return None
        return StoredFile(**json.loads(meta.read_text()))

    def list(self) -> list[StoredFile]:
        files = [self.get(p.name.removesuffix(".meta.json")) for p in self.root.glob("*.meta.json")]
        return sorted((f for f in files if f is not None), key=lambda f: f.created_at)

    def delete(self, file_id: str) -> bool:
        if self.get(file_id) is None:
            return False
        self._meta(file_id).unlink()
        self.path(file_id).unlink(missing_ok=True)
        return True

    def path(self, file_id: str) -> Path:
        return self.root / f"{file_id}.jsonl"

    def _meta(self, file_id: str) -> Path:
        return self.root / f"{file_id}.meta.json"
