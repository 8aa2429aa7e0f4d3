"""The llama.cpp embedding runtime (llama-cpp-python's low-level API): one context in embedding mode with the
artifact's pooling, several sequences per batch (each its own sequence id), and llama.cpp's own tokenizer (for a
BERT GGUF, its WordPiece implementation: validation compares its ids with the source tokenizer's)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from formats.embeddings.runtime import Embedder
from formats.gguf.files import gguf_file

BATCH_TOKENS = 4096  # tokens per decode call: several inputs of the longest allowed length


class LlamaCppEmbedder(Embedder):
    name = "llamacpp"

    def __init__(self, path: Path, settings: dict[str, Any], max_batch: int):
        from llama_cpp import _internals
        from llama_cpp import llama_cpp as lc

        _quiet(lc)
        self.lc, self.settings, self.max_batch = lc, settings, max_batch
        self.model = _internals.LlamaModel(path_model=str(gguf_file(path)), params=lc.llama_model_default_params(),
                                           verbose=False)
        params = lc.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = {"mean": lc.LLAMA_POOLING_TYPE_MEAN, "cls": lc.LLAMA_POOLING_TYPE_CLS,
                               "last": lc.LLAMA_POOLING_TYPE_LAST}[settings["pooling"]]
        # A bidirectional encoder sees a whole input in one micro-batch, so a batch holds at least the longest one.
        self.batch_tokens = max(BATCH_TOKENS, self.max_tokens)
        params.n_ctx = params.n_batch = params.n_ubatch = self.batch_tokens
        params.n_seq_max = max_batch
        params.n_threads = params.n_threads_batch = os.cpu_count() or 1
        self.ctx = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.batch_tokens, embd=0, n_seq_max=max_batch, verbose=False)

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text.encode(), add_bos=True, special=False)

    @property
    def vocab_size(self) -> int:
        return self.model.n_vocab()

    def pooled(self, batch: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(batch), self.dimensions), dtype=np.float32)
        start = 0
        while start < len(batch):  # as many inputs per decode call as its token budget holds
            end, used = start, 0
            while end < len(batch) and (end == start or used + len(batch[end]) <= self.batch_tokens):
                used += len(batch[end])
                end += 1
            out[start:end] = self._decode(batch[start:end])
            start = end
        return out

    def _decode(self, inputs: list[list[int]]) -> np.ndarray:
        self.batch.reset()
        for seq_id, tokens in enumerate(inputs):
            self.batch.add_sequence(tokens, seq_id, True)  # every token an output, as llama.cpp expects here
        self.ctx.kv_cache_clear()  # a decoder keeps a cache; each batch starts from nothing
        self.ctx.decode(self.batch)
        rows = []
        for seq_id in range(len(inputs)):
            pointer = self.lc.llama_get_embeddings_seq(self.ctx.ctx, seq_id)
            rows.append(np.ctypeslib.as_array(pointer, shape=(self.dimensions,)).copy())
        return np.stack(rows)

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.model.close()


_LOG_CALLBACK = None


def _quiet(lc) -> None:
    """llama.cpp logs every load to stderr; validation reports and the server's log say what matters."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = lc.llama_log_callback(lambda level, text, data: None)
        lc.llama_log_set(_LOG_CALLBACK, None)
