"""The original model's sentence vectors, computed on the source weights with transformers on torch: what
sentence-transformers computes (a Transformer module, then Pooling, then Normalize) without depending on it. Each
text runs alone, so no padding can differ from the artifact's runtime. Validation compares every artifact with this.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from formats.embeddings.runtime import normalised, pool


def reference_tokens(source: Path, texts: list[str], max_tokens: int) -> list[list[int]]:
    """The source tokenizer's ids for each text (special tokens included), as transformers would feed them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    return [tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"] for text in texts]


def reference_embeddings(source: Path, settings: dict[str, Any], texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), dtype=torch.float32).eval()
    vectors = []
    with torch.inference_mode():
        for tokens in reference_tokens(source, texts, settings["max_tokens"]):
            hidden = model(input_ids=torch.tensor([tokens])).last_hidden_state.float().numpy()
            vectors.append(pool(hidden, [len(tokens)], settings["pooling"])[0])
    vectors = np.stack(vectors).astype(np.float32)
    return normalised(vectors) if settings["normalize"] else vectors
