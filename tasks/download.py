"""Download step: fetch a spec's source and prove its bytes are the ones the hub (or the folder) holds.

Hub sources go through `huggingface_hub.snapshot_download` into the factory's hub cache, so rebuilds reuse it. The
hub client does not check content (a flipped byte of the same length is accepted), so every file is re-hashed here
against the hub's own listing: sha256 for LFS files, git blob sha1 for the rest. Local sources are hashed.
The result's `identity` is a digest of every file's path and sha256: the content address of the input.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects
from prefect import runtime, task
from prefect.logging import get_run_logger

from factory.spec import Source
from factory.storage import CHUNK

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class SourceVerificationError(Exception):
    """Downloaded bytes do not match the hub's listing."""


@dataclass(frozen=True)
class SourceSnapshot:
    path: str  # a directory (or a single file) holding the model
    revision: str  # hub commit sha, or "sha256:<identity>" for local sources
    identity: str  # sha256 over (relative path, sha256) of every file
    origin: str  # human-readable: "hf:org/name@<commit>" or the local path
    files: dict[str, str]  # relative path -> sha256


def is_transient(task, task_run, state) -> bool:
    """Retry network hiccups and server-side errors; never a missing repo or a verification failure."""
    try:
        state.result()
    except (httpx.TransportError, ConnectionError, TimeoutError):
        return True
    except HfHubHTTPError as exc:
        return exc.response is not None and exc.response.status_code in TRANSIENT_STATUS
    except Exception:
        return False
    return False


def _run_name() -> str:
    source = runtime.task_run.parameters["source"]
    return f"download {source.hf or source.local or source.package}"


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=is_transient, task_run_name=_run_name)
def download_source(source: Source, spec_dir: str, hub_cache: str) -> SourceSnapshot:
    if (path := source.local_path(Path(spec_dir))) is not None:
        return snapshot_local(path)
    return snapshot_hub(source, Path(hub_cache))


def snapshot_local(path: Path) -> SourceSnapshot:
    path = path.resolve()
    if not path.exists():
        raise FileNotFoundError(f"local source {path} does not exist")
    files = {p.relative_to(path).as_posix() if path.is_dir() else p.name: p for p in _files_under(path)}
    hashes = {name: _hashes(p)[0] for name, p in files.items()}
    identity = _identity(hashes)
    return SourceSnapshot(path=str(path), revision=f"sha256:{identity}", identity=identity, origin=str(path),
                          files=hashes)


def snapshot_hub(source: Source, cache_dir: Path) -> SourceSnapshot:
    logger = get_run_logger()
    endpoint = os.environ.get("HF_ENDPOINT")  # read per call: huggingface_hub reads it only at import
    api = HfApi(endpoint=endpoint)
    commit = resolve_hub_revision(source)
    listing = {entry.path: entry for entry in api.list_repo_tree(source.hf, revision=commit, recursive=True)
               if hasattr(entry, "blob_id")}
    wanted = set(filter_repo_objects(listing, allow_patterns=source.allow_patterns,
                                     ignore_patterns=source.ignore_patterns))
    logger.info("downloading %s@%s (%d files)", source.hf, commit[:12], len(wanted))
    path = Path(snapshot_download(source.hf, revision=commit, cache_dir=cache_dir, endpoint=endpoint,
                                  allow_patterns=source.allow_patterns, ignore_patterns=source.ignore_patterns))
    hashes = {}
    for name in sorted(wanted):
        local = path / name
        if not local.is_file():
            raise SourceVerificationError(f"{source.hf}@{commit[:12]}: {name} is missing after download")
        sha256, git_sha1 = _hashes(local)
        entry = listing[name]
        expected, got = (entry.lfs.sha256, sha256) if entry.lfs else (entry.blob_id, git_sha1)
        if got != expected:
            local.resolve().unlink()  # drop the bad blob so the next attempt downloads it again
            raise SourceVerificationError(
                f"{source.hf}@{commit[:12]}: {name} failed verification (hash {got}, the hub lists {expected})")
        hashes[name] = sha256
    identity = _identity(hashes)
    logger.info("verified %d files of %s@%s", len(hashes), source.hf, commit[:12])
    return SourceSnapshot(path=str(path), revision=commit, identity=identity, origin=f"hf:{source.hf}@{commit}",
                          files=hashes)


def source_revision(source: Source, spec_dir: str) -> str:
    """What a build of `source` would record as its revision, without downloading: a hub commit or a content hash."""
    if (path := source.local_path(Path(spec_dir))) is not None:
        return snapshot_local(path).revision
    return resolve_hub_revision(source)


def resolve_hub_revision(source: Source) -> str:
    """The commit sha that `source.revision` (branch, tag or sha; default main) names today."""
    if source.pinned:
        return source.revision
    info = HfApi(endpoint=os.environ.get("HF_ENDPOINT")).model_info(source.hf, revision=source.revision or "main")
    return info.sha


def _files_under(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _hashes(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, in one read."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


def _identity(hashes: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}\t{digest}\n" for name, digest in sorted(hashes.items())).encode()).hexdigest()
