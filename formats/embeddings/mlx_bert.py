"""A BERT encoder in MLX, small enough to own: embeddings (word + position + token type, LayerNorm), then
post-norm layers of bidirectional attention and a GELU feed-forward. It reads Hugging Face BERT weights by their
own names (`encoder.layer.N.attention.self.query.weight`, ...), so an MLX artifact is the source's tensors in
another dtype. Chosen over mlx-embeddings, which needs mlx-vlm and its dependencies for the same ~100 lines.
"""
from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

# Hugging Face name pieces -> this module's shorter attribute names, applied in order (attention.output.* first).
RENAMES = [("encoder.layer.", "layers."), ("attention.self.", "attention."),
           ("attention.output.dense", "attention.out"), ("attention.output.LayerNorm", "attention_norm"),
           ("intermediate.dense", "up"), ("output.dense", "down"), ("output.LayerNorm", "output_norm"),
           ("embeddings.LayerNorm", "embeddings.norm")]
UNUSED = ("pooler.", "cls.", "embeddings.position_ids")  # the pretraining heads and a buffer


class Embeddings(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        hidden = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config.get("type_vocab_size", 2), hidden)
        self.norm = nn.LayerNorm(hidden, eps=config.get("layer_norm_eps", 1e-12))

    def __call__(self, tokens: mx.array) -> mx.array:
        positions = mx.arange(tokens.shape[1])[None]
        # Every input is one segment (type 0), as sentence-transformers encodes a sentence.
        return self.norm(self.word_embeddings(tokens) + self.position_embeddings(positions)
                         + self.token_type_embeddings.weight[0])


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, hidden = x.shape

        def split(y: mx.array) -> mx.array:
            return y.reshape(batch, length, self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scale = (hidden // self.heads) ** -0.5
        attended = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return self.out(attended.transpose(0, 2, 1, 3).reshape(batch, length, hidden))


class Layer(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.attention = Attention(hidden, config["num_attention_heads"])
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.up = nn.Linear(hidden, config["intermediate_size"])
        self.down = nn.Linear(config["intermediate_size"], hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.attention_norm(x + self.attention(x, mask))
        return self.output_norm(x + self.down(nn.gelu(self.up(x))))


class Bert(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type",
                                                                     "absolute") != "absolute":
            raise ValueError("this BERT supports hidden_act gelu and absolute position embeddings")
        self.embeddings = Embeddings(config)
        self.layers = [Layer(config) for _ in range(config["num_hidden_layers"])]

    def __call__(self, tokens: mx.array, lengths: mx.array) -> mx.array:
        """Hidden states (batch, tokens, hidden) of right-padded token rows; padding is never attended to."""
        keep = mx.arange(tokens.shape[1])[None, :] < lengths[:, None]
        mask = keep[:, None, None, :]  # (batch, heads, queries, keys), broadcast
        x = self.embeddings(tokens)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def mlx_names(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Hugging Face BERT tensors under this module's names (a `bert.` prefix and the unused heads dropped)."""
    renamed = {}
    for name, value in weights.items():
        name = name.removeprefix("bert.")
        if name.startswith(UNUSED):
            continue
        for old, new in RENAMES:
            name = name.replace(old, new)
        renamed[name] = value
    return renamed
