"""Normalise step: whatever the source is, the convert step gets a Hugging Face–layout safetensors directory.

The source's format is detected, not declared:
    hf        a folder with config.json and *.safetensors              passed through
    mlx-q     an mlx-lm folder with quantized weights                  dequantized by mlx-lm's convert
    pickle    a folder with config.json and *.bin / *.pt / *.pth        rewritten as safetensors
    gguf      a .gguf file (or a folder holding just one)              imported by formats/gguf/importer.py
    zip       a .zip of a model folder (as some model wheels ship one)  unpacked, then read as that folder
Anything else is refused with an error naming the path. Pickles can run code when loaded and cannot be
memory-mapped, so they never go further than this step: tensors are loaded with `weights_only=True`, and
huggingface_hub's `save_torch_state_dict` drops shared (tied) duplicates, makes tensors contiguous and shards.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from factory.content_keys import content_key
from tasks.download import SourceSnapshot, snapshot_local

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


class UnsupportedSource(Exception):
    """The source is not a model in a format this factory reads."""


def source_kind(snapshot: SourceSnapshot) -> str:
    path, names = Path(snapshot.path), list(snapshot.files)
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        if path.suffix == ".zip":
            return "zip"
        raise UnsupportedSource(f"{path}: not a model file this factory reads (give a .gguf or .zip file, or a folder "
                                f"with config.json and safetensors or pickled PyTorch weights)")
    ggufs = [n for n in names if n.endswith(".gguf")]
    safetensors = [n for n in names if n.endswith(".safetensors")]
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if ggufs and not safetensors and not pickles:
        if len(ggufs) > 1:
            raise UnsupportedSource(f"{path} holds several .gguf files ({', '.join(ggufs)}); point at one of them")
        return "gguf"
    if "config.json" not in names:
        raise UnsupportedSource(f"{path} has no config.json, so it is not a model folder this factory reads")
    if safetensors:
        config = json.loads((path / "config.json").read_text())
        return "mlx-q" if "quantization" in config else "hf"
    if pickles:
        return "pickle"
    raise UnsupportedSource(f"{path} holds no weights (*.safetensors, *.bin, *.pt, *.pth or *.gguf)")


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
    """Return `snapshot` unchanged when it already is a safetensors model folder, or a normalised copy of it."""
    kind = source_kind(snapshot)
    if kind == "zip":
        snapshot = _unzipped(snapshot, Path(runs_dir))
        kind = source_kind(snapshot)
    if kind == "hf":
        return snapshot
    out = Path(runs_dir) / "normalise" / content_key(snapshot.identity, kind)[:24]
    if not out.exists():
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        {"pickle": _from_pickle, "gguf": _from_gguf, "mlx-q": _from_quantized_mlx}[kind](snapshot, staging)
        staging.rename(out)
        get_run_logger().info("normalised a %s source into %s", kind, out)
    normalised = snapshot_local(out)
    # Keep the source's revision: lineage points at what was downloaded, not at our rewrite of it.
    return SourceSnapshot(path=normalised.path, revision=snapshot.revision, identity=normalised.identity,
                          origin=snapshot.origin, files=normalised.files)


def _unzipped(snapshot: SourceSnapshot, runs_dir: Path) -> SourceSnapshot:
    """The archive's model folder (its single top folder, if it has one), unpacked once per archive content. A
    member whose path would land outside the folder (`../`, absolute) is refused rather than written."""
    out = runs_dir / "normalise" / content_key(snapshot.identity, "zip")[:24]
    if not out.exists():
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(snapshot.path) as archive:
            for member in archive.namelist():
                if not (staging / member).resolve().is_relative_to(staging.resolve()):
                    raise UnsupportedSource(f"{snapshot.path}: member {member!r} would unpack outside the folder")
            archive.extractall(staging)
        staging.rename(out)
    entries = list(out.iterdir())
    folder = entries[0] if len(entries) == 1 and entries[0].is_dir() else out
    unpacked = snapshot_local(folder)
    return SourceSnapshot(path=unpacked.path, revision=snapshot.revision, identity=unpacked.identity,
                          origin=snapshot.origin, files=unpacked.files)


def _from_gguf(snapshot: SourceSnapshot, out: Path) -> None:
    from formats.gguf.importer import GgufImportError, import_gguf

    path = Path(snapshot.path)
    file = path if path.is_file() else next(path / n for n in snapshot.files if n.endswith(".gguf"))
    try:
        import_gguf(file, out)
    except GgufImportError as exc:
        raise UnsupportedSource(str(exc)) from None


def _from_quantized_mlx(snapshot: SourceSnapshot, out: Path) -> None:
    from mlx_lm import convert

    convert(hf_path=snapshot.path, mlx_path=str(out), dequantize=True)


def _from_pickle(snapshot: SourceSnapshot, staging: Path) -> None:
    import torch
    from huggingface_hub import save_torch_state_dict

    source = Path(snapshot.path)
    staging.mkdir(parents=True)
    state: dict = {}
    for name in sorted(snapshot.files):
        path = source / name
        if name.endswith(PICKLE_SUFFIXES):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            state.update(loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded)
        elif not name.endswith(".index.json"):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, staging / name)
    tied = json.loads((staging / "config.json").read_text()).get("tie_word_embeddings", False)
    save_torch_state_dict(untie_shared_tensors(state, keep_tied=tied), staging)
