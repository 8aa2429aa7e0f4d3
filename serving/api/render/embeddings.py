"""The embedding APIs' wire shapes, drawn from the inference layer's `Embeddings`: OpenAI's embedding list (floats,
or base64 of little-endian float32 as OpenAI's SDKs decode it) and a rerank result list, best first."""
from __future__ import annotations

import base64
from typing import Any

import numpy as np

from serving.inference.types import Embeddings


def usage(prompt_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}


def embedding_list(model_id: str, result: Embeddings, encoding_format: str) -> dict[str, Any]:
    vectors = np.asarray(result.vectors, dtype="<f4")
    encode = (lambda v: base64.b64encode(v.tobytes()).decode()) if encoding_format == "base64" else \
        (lambda v: v.tolist())
    return {"object": "list", "model": model_id, "usage": usage(result.prompt_tokens),
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]}


def rerank_list(model_id: str, result: Embeddings, documents: list[str], top_n: int | None,
                return_documents: bool) -> dict[str, Any]:
    """`result`: the query's vector first, then one per document."""
    vectors = np.asarray(result.vectors, dtype=np.float32)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    scores = unit[1:] @ unit[0]
    order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_n]
    results = [{"index": i, "relevance_score": float(scores[i]),
                **({"document": {"text": documents[i]}} if return_documents else {})} for i in order]
    return {"object": "list", "model": model_id, "results": results, "usage": usage(result.prompt_tokens)}
