"""What every embedding runtime offers, so validation and the server drive MLX and llama.cpp the same way: tokenize
a text, and embed token lists in batches into the model's own sentence vectors (pooled as the artifact's
`embedding.json` says, then normalised when it says so). `load_embedder` picks the runtime from the artifact."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from formats.embeddings.settings import read_settings


class Embedder(ABC):
    name: str  # the runtime: mlx, llamacpp
    settings: dict[str, Any]  # the artifact's embedding.json
    max_batch: int  # sequences per forward pass

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as the model sees it, with the special tokens it wants around an input."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        ...

    @abstractmethod
    def pooled(self, batch: list[list[int]]) -> np.ndarray:
        """One pooled (not yet normalised) float32 vector per token list; at most `max_batch` lists."""

    @abstractmethod
    def close(self) -> None:
        ...

    @property
    def dimensions(self) -> int:
        return int(self.settings["dimensions"])

    @property
    def max_tokens(self) -> int:
        """The longest input (in tokens, special ones included) the model was made for."""
        return int(self.settings["max_tokens"])

    def embed(self, inputs: list[list[int]]) -> np.ndarray:
        """The sentence vectors of token lists, in order: shorter lists batched together (less padding)."""
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        vectors = np.zeros((len(inputs), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), self.max_batch):
            chosen = order[start:start + self.max_batch]
            vectors[chosen] = self.pooled([inputs[i] for i in chosen])
        return normalised(vectors) if self.settings["normalize"] else vectors

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.embed([self.tokenize(text) for text in texts])


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Unit length per row (a zero row stays zero rather than becoming NaN)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def pool(hidden: np.ndarray, lengths: list[int], how: str) -> np.ndarray:
    """(batch, tokens, dim) states of right-padded sequences -> (batch, dim) by mean, first (CLS) or last token."""
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        return hidden[np.arange(len(lengths)), np.asarray(lengths) - 1]
    mask = (np.arange(hidden.shape[1])[None, :] < np.asarray(lengths)[:, None]).astype(hidden.dtype)
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)


def load_embedder(path: Path, max_batch: int = 32) -> Embedder:
    """The runtime for an embedding artifact: llama.cpp for a GGUF file, MLX for an MLX folder."""
    path = Path(path)
    settings = read_settings(path)
    if path.is_file() or any(path.glob("*.gguf")):
        from formats.embeddings.llamacpp_runtime import LlamaCppEmbedder

        return LlamaCppEmbedder(path, settings, max_batch)
    from formats.embeddings.mlx_runtime import MlxEmbedder

    return MlxEmbedder(path, settings, max_batch)
