"""Where registry versions live on disk: a staging area and immutable `versions/<name>/<N>/` directories.

The registry's index (SQLite) decides which versions exist; this module only moves bytes. It is the one place that
knows the storage is a local filesystem, so an object store can take its place behind the same methods.

Crash safety rests on three facts: a staging directory is flock()ed by its writer for as long as it lives, so a
sweeper can tell a live one from a dead writer's leftovers; a directory rename is atomic; fsync of files and of the
parent directory makes the rename durable before the index records it.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_and_hash(source: Path, target: Path) -> tuple[str, int]:
    """Copy one file, fsync it, and return (sha256, size) of what was written, reading the source once."""
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest(), size


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class LocalVersionStore:
    """Immutable version directories under `root/versions`, written through `root/staging`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.staging = self.root / "staging"
        self.versions.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, version: int) -> Path:
        return self.versions / name / str(version)

    @contextmanager
    def new_staging(self) -> Iterator[Path]:
        """A fresh private directory, locked for as long as the block runs; removed afterwards if still there."""
        while True:
            path = Path(tempfile.mkdtemp(prefix="publish-", dir=self.staging))
            path.chmod(0o755)  # mkdtemp makes it private; published versions are world-readable
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                break  # a sweeper did not take it between mkdtemp and flock
            os.close(fd)
        try:
            yield path
        finally:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def commit(self, staged: Path, name: str, version: int) -> Path:
        """Rename a fully written staging directory into place, durably. Caller holds the index's write lock."""
        target = self.path(name, version)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            self.discard(target)  # an orphan of a publisher killed after its rename, before its index commit
        for directory in [staged, *(p for p in staged.rglob("*") if p.is_dir())]:
            fsync_dir(directory)
        os.rename(staged, target)
        fsync_dir(target.parent)
        fsync_dir(self.versions)
        return target

    def discard(self, directory: Path) -> None:
        """Remove a directory by first renaming it out of sight, so a half-finished delete is never visible."""
        trash = self.staging / f"trash-{uuid.uuid4().hex}"
        os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def stored(self) -> set[tuple[str, int]]:
        found = set()
        for name_dir in self.versions.iterdir():
            for version_dir in name_dir.iterdir() if name_dir.is_dir() else ():
                if version_dir.name.isdigit():
                    found.add((name_dir.name, int(version_dir.name)))
        return found

    def sweep_staging(self) -> int:
        """Remove staging directories whose writer is gone (their flock is free). Returns how many."""
        swept = 0
        for path in self.staging.iterdir():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live publisher owns it
            try:
                shutil.rmtree(path, ignore_errors=True)
                swept += 1
            finally:
                os.close(fd)
        return swept
