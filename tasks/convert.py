"""Convert step: one declared format of a source model into a directory: MLX through mlx-lm's own conversion API,
GGUF through `formats/gguf/export.py`, Core ML through `formats/coreml/export.py`. An embedding model's artifacts
(`convert_embedding`) are written the same way for decoder LMs and by `formats.gguf.bert` / `formats.embeddings`
for encoders, and carry their embedding settings (`embedding.json`).

Outputs are content-addressed (`runs/convert/<digest>-<format key>/`): the digest covers the source's identity, the
format's options and the converter's version, so an unchanged rebuild finds the output instead of converting.
Heavy work holds the `factory-heavy` global concurrency slot so one machine is not asked to convert twice at once.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from prefect import task
from prefect.concurrency.sync import concurrency
from prefect.logging import get_run_logger

from factory.content_keys import content_key
from factory.spec import FormatEntry, MlxFormat
from formats.coreml.export import export_coreml
from formats.embeddings.export_mlx import export_mlx_encoder
from formats.embeddings.settings import write_settings
from formats.gguf.bert import export_bert_gguf
from formats.gguf.export import export_gguf
from tasks.download import SourceSnapshot

HEAVY = "factory-heavy"
CONVERTER_VERSION = 3  # bump when this module's output changes for the same inputs


class ConversionFailed(Exception):
    """One or more formats failed to convert; nothing may be published."""


@dataclass(frozen=True)
class BuiltArtifact:
    key: str  # format key, e.g. mlx-q4-g64: the artifact's directory name in the registry
    family: str  # mlx, gguf, coreml
    path: str
    identity: str  # digest of (source identity, format options, converter version)
    source: str = ""  # the model directory it was converted from (validation compares against it)
    embedding: dict | None = None  # an embedding model's settings (formats.embeddings.settings); None: a chat model


def artifact_identity(source: SourceSnapshot, entry: FormatEntry, embedding: dict | None = None) -> str:
    # An embedding artifact's settings are part of what it is; a chat artifact's key stays as it always was.
    extra = () if embedding is None else (embedding,)
    return content_key(source.identity, entry, CONVERTER_VERSION, version("mlx-lm"), *extra)


def artifact_dir(source: SourceSnapshot, entry: FormatEntry, runs_dir: str | Path,
                 embedding: dict | None = None) -> Path:
    return Path(runs_dir) / "convert" / f"{artifact_identity(source, entry, embedding)[:24]}-{entry.key}"


def _convert_key(context, parameters) -> str:
    return artifact_identity(parameters["source"], parameters["entry"], parameters.get("embedding"))


@task(cache_key_fn=_convert_key, persist_result=True, task_run_name="convert {entry.key}")
def convert_format(source: SourceSnapshot, entry: FormatEntry, runs_dir: str,
                   embedding: dict | None = None) -> BuiltArtifact:
    out = artifact_dir(source, entry, runs_dir, embedding)
    artifact = BuiltArtifact(key=entry.key, family=entry.family, path=str(out),
                             identity=artifact_identity(source, entry, embedding), source=source.path,
                             embedding=embedding)
    if out.exists():
        return artifact
    staging = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    with concurrency(HEAVY, occupy=1):
        try:
            if embedding is not None:
                convert_embedding(Path(source.path), entry, staging, embedding)
            elif entry.mlx is not None:
                convert_mlx(Path(source.path), entry.mlx, staging)
            elif entry.gguf is not None:
                staging.mkdir(parents=True)
                export_gguf(Path(source.path), staging / f"model-{entry.gguf.type}.gguf", entry.gguf.type)
            else:
                export_coreml(Path(source.path), staging, entry.coreml)
            os.rename(staging, out)  # whole outputs only: a killed conversion never looks finished
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    get_run_logger().info("converted %s to %s", source.origin, out)
    return artifact


def convert_mlx(source: Path, options: MlxFormat, out: Path) -> None:
    from mlx_lm import convert

    out.parent.mkdir(parents=True, exist_ok=True)
    quantize = options.quantize
    convert(
        hf_path=str(source),
        mlx_path=str(out),
        quantize=quantize is not None,
        q_bits=quantize.bits if quantize else None,
        q_group_size=quantize.group_size if quantize else None,
        q_mode=quantize.mode if quantize else "affine",
        dtype=options.dtype or ("float16" if quantize is None else None),
    )


def convert_embedding(source: Path, entry: FormatEntry, out: Path, settings: dict) -> None:
    """An embedding model's artifact: a decoder LM converts like any LM (its runtime pools the hidden states); an
    encoder through the BERT exports. Either way it carries its settings."""
    encoder = settings["architecture"] == "encoder"
    if entry.gguf is not None:
        out.mkdir(parents=True)
        file = out / f"model-{entry.gguf.type}.gguf"
        if encoder:
            export_bert_gguf(source, file, entry.gguf.type, settings["pooling"])
        else:
            export_gguf(source, file, entry.gguf.type)
    elif encoder:
        export_mlx_encoder(source, out, entry.mlx.dtype or "float16", settings)
    else:
        convert_mlx(source, entry.mlx, out)
    write_settings(out, settings)


def wait_for_conversions(futures) -> list[BuiltArtifact]:
    """Wait for every submitted conversion; if any failed, raise with each failing format's reason."""
    for future in futures:
        future.wait()
    errors = [str(f.state.result(raise_on_failure=False)) for f in futures if f.state.is_failed()]
    if errors:
        raise ConversionFailed("conversion failed, nothing published:\n" + "\n".join(errors))
    return [future.result() for future in futures]
