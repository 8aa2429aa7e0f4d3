"""How a model turns token states into one sentence vector: pooling (`mean`, `cls`, `last`) and normalisation.

Resolved once per build from the spec and the source: what the spec says wins; otherwise the sentence-transformers
files decide when present (`modules.json` lists a `Normalize` module; `1_Pooling/config.json` names the pooling
mode; `sentence_bert_config.json` the longest input), and otherwise the architecture does: encoders (BERT family)
pool by mean, decoder LMs by their last token (the only position that has seen the whole input), both normalised.
Every embedding artifact carries the result as `embedding.json`, so a runtime needs nothing but the artifact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

Pooling = Literal["mean", "cls", "last"]
SETTINGS_FILE = "embedding.json"
ENCODERS = ("bert",)  # model_type values served as bidirectional encoders (formats.embeddings.mlx_bert)
DECODERS = ("llama", "qwen2")  # decoder LMs with last-token pooling (mlx-lm; the GGUF export's architectures)
# sentence-transformers' pooling config flag -> pooling mode
POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                 "pooling_mode_lasttoken": "last"}


class EmbeddingSourceError(Exception):
    """The source cannot be made into an embedding model as asked."""


def resolve_settings(source: Path, pooling: str | None = None, normalize: bool | None = None) -> dict[str, Any]:
    """The settings an embedding model built from `source` has: {architecture, model_type, pooling, normalize,
    dimensions, max_tokens}. `pooling` / `normalize` are the spec's (None: decide from the files)."""
    config = json.loads((source / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type in ENCODERS:
        architecture = "encoder"
    elif model_type in DECODERS:
        architecture = "decoder"
    else:
        raise EmbeddingSourceError(f"embedding models are built from {', '.join(ENCODERS + DECODERS)} sources; "
                                   f"this one is {model_type!r}")
    modules = _read_json(source / "modules.json") or []
    declared = _sentence_transformers_pooling(source, modules)
    if pooling is None:
        pooling = declared or ("mean" if architecture == "encoder" else "last")
    if normalize is None:
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules) if modules else True
    if architecture == "decoder" and pooling != "last":
        # A causal model's earlier positions have not seen the rest of the input: mean or CLS pooling of them is
        # not what any decoder embedding model was trained with.
        raise EmbeddingSourceError(f"a decoder LM ({model_type}) embeds with last-token pooling, not {pooling!r}")
    sbert = _read_json(source / "sentence_bert_config.json") or {}
    positions = int(config.get("max_position_embeddings", 512))
    max_tokens = min(int(sbert.get("max_seq_length", positions)), positions)
    return {"architecture": architecture, "model_type": model_type, "pooling": pooling, "normalize": bool(normalize),
            "dimensions": int(config["hidden_size"]), "max_tokens": max_tokens}


def _sentence_transformers_pooling(source: Path, modules: list[dict[str, Any]]) -> str | None:
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = _read_json(source / module.get("path", "") / "config.json") or {}
            asked = sorted(flag for flag, on in config.items() if flag.startswith("pooling_mode_") and on)
            if len(asked) != 1 or asked[0] not in POOLING_FLAGS:
                raise EmbeddingSourceError(f"{source}: the sentence-transformers pooling config sets "
                                           f"{', '.join(asked) or 'no pooling mode'}; supported: exactly one of "
                                           f"{', '.join(POOLING_FLAGS)}")
            return POOLING_FLAGS[asked[0]]
    return None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def write_settings(directory: Path, settings: dict[str, Any]) -> None:
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def read_settings(directory: Path) -> dict[str, Any]:
    """An artifact's embedding settings (`directory` may also be a file inside the artifact)."""
    directory = Path(directory)
    path = (directory if directory.is_dir() else directory.parent) / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not an embedding artifact: it has no {SETTINGS_FILE}")
    return json.loads(path.read_text())
