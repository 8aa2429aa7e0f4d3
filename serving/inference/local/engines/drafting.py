"""Proposers for speculative decoding on the llama.cpp engine: guesses of a sequence's next tokens that the served
model then checks in one batch (each accepted guess is a token gained for the cost of a batched row).

- `NgramProposer` (prompt lookup): the continuation of the sequence's last n-gram where it occurred earlier, found
  as llama-cpp-python's `LlamaPromptLookupDecoding` finds it. Costs nothing to run; it pays off when the answer
  repeats its input (edits, code, quoting).
- `DraftModel`: a smaller or more quantized model with the same vocabulary (a q4_0 of the same model counts),
  decoding greedily in its own llama.cpp context whose KV slots mirror the served model's: each sequence's slot
  keeps what the draft already computed (and shares prefixes across slots as the prefix cache does), so a step costs
  catching up on the tokens accepted since, plus one small decode per drafted token. Drafting stops early where the
  draft is unsure (its top probability below `P_MIN`, as llama.cpp's speculative example does), since a likely
  rejection only costs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.inference.local.engines.compute import on_compute_thread
from serving.inference.local.engines.kv_slots import LlamaMemory, SlotCache, new_context

P_MIN = 0.75  # llama.cpp's default draft p-min
NGRAM_MAX, NGRAM_MIN = 3, 2  # n-grams looked up, longest first


class NgramProposer:
    """llama-cpp-python's `LlamaPromptLookupDecoding` search (the first earlier occurrence of the sequence's last
    n-gram, longest n first), with one change: no 1-gram matches. A single common token ("the", a newline) recurs
    everywhere, and its continuation was accepted about one time in seven on prose, so every such draft only cost a
    batch row."""

    method = "ngram"

    def propose(self, tokens: list[int], most: int) -> list[int]:
        ids = np.asarray(tokens, dtype=np.intc)
        for size in range(min(NGRAM_MAX, len(ids) - 1), NGRAM_MIN - 1, -1):
            # windows that end before the last token, so a match always has a continuation
            windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], size)
            matches = np.flatnonzero((windows == ids[-size:]).all(axis=1))
            if matches.size:
                start = int(matches[0]) + size
                return ids[start:start + most].tolist()
        return []


class DraftModel:
    method = "draft"

    def __init__(self, path: Path, target, max_batch: int, context_length: int, prefix_cache: bool,
                 prefill_chunk: int):
        from llama_cpp import _internals
        from llama_cpp import llama_cpp as lc

        self.lc, self.chunk = lc, prefill_chunk
        self.model = _internals.LlamaModel(path_model=str(path), params=lc.llama_model_default_params(),
                                           verbose=False)
        self.n_vocab = self.model.n_vocab()
        self._check_vocabulary(target)
        self.ctx = new_context(self.model, lc, max_batch, context_length, prefill_chunk + max_batch, prefill_chunk)
        self.batch = _internals.LlamaBatch(n_tokens=prefill_chunk + max_batch, embd=0, n_seq_max=1, verbose=False)
        self.slots = SlotCache(LlamaMemory(self.ctx), max_batch, enabled=prefix_cache)

    def _check_vocabulary(self, target) -> None:
        """Drafted ids are the served model's ids: the vocabularies must be the same, token for token."""
        if self.n_vocab != target.n_vocab:
            raise ValueError(f"the draft model has {self.n_vocab} tokens and the served model {target.n_vocab}: "
                             "speculative decoding needs the same vocabulary")
        vocab = self.lc.llama_model_get_vocab(self.model.model)
        for token in range(self.n_vocab):
            if target.piece(token, special=True) != _piece(self.lc, vocab, token):
                raise ValueError(f"the draft model's token {token} differs from the served model's: speculative "
                                 "decoding needs the same vocabulary")

    def propose(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        """For each slot, (its sequence's tokens so far, most tokens to draft) → the drafted tokens."""
        rows: list[tuple[int, int, int, bool]] = []  # (slot, token, position, logits wanted)
        for slot, (tokens, _) in wanted.items():
            start = self.slots.prepare(slot, tokens)  # drops whatever the served model rejected last step
            rows += [(slot, token, position, position == len(tokens) - 1)
                     for position, token in enumerate(tokens[start:], start)]
        drafts: dict[int, list[int]] = {slot: [] for slot in wanted}
        drafting = set(wanted)
        for begin in range(0, len(rows), self.chunk):  # catching up can be a whole prompt: in pieces
            self._decode(rows[begin:begin + self.chunk], drafts, drafting, wanted)
        while drafting:  # one more token for every slot still sure of itself
            self._decode([(slot, drafts[slot][-1], len(self.slots.tokens[slot]), True) for slot in sorted(drafting)],
                         drafts, drafting, wanted)
        return drafts

    def _decode(self, rows, drafts: dict[int, list[int]], drafting: set[int], wanted) -> None:
        batch = self.batch.batch
        batch.n_tokens = 0
        wants_logits = []
        for slot, token, position, logits in rows:
            i = batch.n_tokens
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = token, position, 1, slot
            batch.logits[i] = logits
            self.slots.record(slot, token)
            if logits:
                wants_logits.append((slot, i))
            batch.n_tokens += 1
        try:
            on_compute_thread(self.ctx.decode, self.batch)
        except Exception:
            self.slots.forget_all()
            raise
        for slot, i in wants_logits:
            logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx.ctx, i), shape=(self.n_vocab,))
            token = int(np.argmax(logits))
            sure = 1.0 / np.exp(logits.astype(np.float64) - logits[token]).sum() >= P_MIN
            if sure:
                drafts[slot].append(token)
            if not sure or len(drafts[slot]) >= wanted[slot][1]:
                drafting.discard(slot)

    def release(self, slot: int) -> None:
        self.slots.release(slot)

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.model.close()


def _piece(lc, vocab, token: int) -> bytes:
    import ctypes

    buffer = ctypes.create_string_buffer(64)
    size = lc.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
    if size < 0:  # longer than the buffer: llama.cpp says how long
        buffer = ctypes.create_string_buffer(-size)
        size = lc.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
    return buffer.raw[:size]
