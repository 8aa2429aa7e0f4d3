"""Uploaded files (OpenAI's /v1/files): one immutable file per id under `$FACTORY_ROOT/files/`, plus its metadata.

The server writes them; fine-tuning flows read them by path. Writes are atomic (temp file, fsync, rename), so a
reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from factory.storage import write_durably


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

    def create(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        stored = StoredFile(id=f"file-{uuid.uuid4().hex[:24]}", filename=filename, purpose=purpose,
                            bytes=len(content), created_at=int(time.time()))
        for path, data in ((self.path(stored.id), content),
                           (self._meta(stored.id), json.dumps(asdict(stored)).encode())):
            temporary = path.with_name(path.name + ".tmp")
            write_durably(temporary, data)
            os.rename(temporary, path)
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        meta = self._meta(file_id)
        if "/" in file_id or not meta.is_file():
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
