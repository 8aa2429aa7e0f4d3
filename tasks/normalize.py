"""Normalise step: pickled PyTorch checkpoints (`*.bin`, `*.pt`) become safetensors before conversion.

Pickles can run code when loaded and cannot be memory-mapped, so they never go further than this step. Tensors are
loaded with `weights_only=True`; huggingface_hub's `save_torch_state_dict` then drops shared (tied) duplicates, makes
tensors contiguous and shards large models.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from tasks.caching import content_key
from tasks.download import SourceSnapshot, snapshot_local

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def needs_normalising(snapshot: SourceSnapshot) -> bool:
    names = snapshot.files
    return not any(n.endswith(".safetensors") for n in names) and any(n.endswith(PICKLE_SUFFIXES) for n in names)


def untie_shared_tensors(state: dict, keep_tied: bool) -> dict:
    """Give every name its own contiguous storage, except tied embeddings the config declares tied.

    A tied checkpoint (config `tie_word_embeddings: true`) stores the embedding once: its output-head alias is
    dropped, as transformers does. Any other shared storage is copied, so no loader depends on the sharing.
    """
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in state.items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            if keep_tied and "lm_head" in name:
                continue
            tensor = tensor.clone()
        seen.setdefault(pointer, name)
        out[name] = tensor.contiguous()
    return out


@task(task_run_name="normalise to safetensors")
def normalise_checkpoint(snapshot: SourceSnapshot, runs_dir: str) -> SourceSnapshot:
    """Return `snapshot` unchanged, or a copy with its pickled weights rewritten as safetensors."""
    if not needs_normalising(snapshot):
        return snapshot
    import torch
    from huggingface_hub import save_torch_state_dict

    source = Path(snapshot.path)
    out = Path(runs_dir) / "normalise" / content_key(snapshot.identity)[:24]
    if not out.exists():
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        state: dict = {}
        for name in sorted(snapshot.files):
            path = source / name if source.is_dir() else source
            if name.endswith(PICKLE_SUFFIXES):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
                state.update(loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded)
            elif not name.endswith(".index.json"):
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staging / name)
        tied = json.loads((staging / "config.json").read_text()).get("tie_word_embeddings", False) \
            if (staging / "config.json").exists() else False
        save_torch_state_dict(untie_shared_tensors(state, keep_tied=tied), staging)
        staging.rename(out)
        get_run_logger().info("rewrote %d pickled tensors as safetensors in %s", len(state), out)
    normalised = snapshot_local(out)
    # Keep the source's revision: lineage points at what was downloaded, not at our rewrite of it.
    return SourceSnapshot(path=normalised.path, revision=snapshot.revision, identity=normalised.identity,
                          origin=snapshot.origin, files=normalised.files)
