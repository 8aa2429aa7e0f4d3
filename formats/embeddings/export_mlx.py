"""The MLX artifact of an embedding model: for an encoder, the source's BERT tensors in the chosen dtype (read by
`formats.embeddings.mlx_bert`) with its config and tokenizer files; for a decoder LM, mlx-lm's own conversion. Both
get the resolved `embedding.json`."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from formats.embeddings.mlx_bert import UNUSED
from formats.embeddings.settings import write_settings

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def export_mlx_encoder(source: Path, out: Path, dtype: str, settings: dict[str, Any]) -> Path:
    import mlx.core as mx

    out.mkdir(parents=True)
    weights = {}
    for file in sorted(source.glob("*.safetensors")):
        for name, value in mx.load(str(file)).items():
            if not name.removeprefix("bert.").startswith(UNUSED):
                weights[name] = value.astype(getattr(mx, dtype))
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    for name in ("config.json", *TOKENIZER_FILES):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    write_settings(out, settings)
    return out
