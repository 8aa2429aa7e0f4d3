"""The MLX embedding runtime: an encoder artifact runs `formats.embeddings.mlx_bert`, a decoder artifact runs
mlx-lm's model body (the hidden states under the output head). Tokenized with the artifact's own `tokenizer.json`
(the `tokenizers` library: the same ids transformers gives, special tokens included)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from formats.embeddings.runtime import Embedder, pool


class MlxEmbedder(Embedder):
    name = "mlx"

    def __init__(self, path: Path, settings: dict[str, Any], max_batch: int):
        from tokenizers import Tokenizer

        self.settings, self.max_batch = settings, max_batch
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.forward = _encoder(path) if settings["architecture"] == "encoder" else _decoder(path)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def pooled(self, batch: list[list[int]]) -> np.ndarray:
        import mlx.core as mx

        lengths = [len(tokens) for tokens in batch]
        rows = np.zeros((len(batch), max(lengths)), dtype=np.int32)  # right-padded with id 0
        for row, tokens in zip(rows, batch):
            row[:len(tokens)] = tokens
        hidden = self.forward(mx.array(rows), mx.array(lengths))
        return pool(np.array(hidden.astype(mx.float32)), lengths, self.settings["pooling"])

    def close(self) -> None:
        import mlx.core as mx

        self.forward = None
        mx.clear_cache()


def _encoder(path: Path):
    import mlx.core as mx

    from formats.embeddings.mlx_bert import Bert, mlx_names

    config = json.loads((path / "config.json").read_text())
    model = Bert(config)
    weights = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(mx.load(str(file)))
    model.load_weights(list(mlx_names(weights).items()), strict=True)
    mx.eval(model.parameters())
    return model


def _decoder(path: Path):
    """mlx-lm's model without its output head: the final (normed) hidden states. Right padding is harmless under
    causal attention: no real token attends to a later pad."""
    from mlx_lm import load

    model, _ = load(str(path))
    return lambda tokens, lengths: model.model(tokens)
