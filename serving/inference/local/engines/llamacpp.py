"""The llama.cpp engine (llama-cpp-python's low-level API) for GGUF artifacts: the fast path on x86 CPUs.

Continuous batching as llama-server does it: one context with one KV-cache sequence per active request
(`n_seq_max`, unified cache); each step decodes one batch holding the next token of every generating sequence and
the (chunked) prompts of sequences joining, then samples each sequence from its own logits. Sampling is done here
in numpy so temperature, top-p, seed, penalties, logit bias and logprobs mean the same as on the MLX engine.
"""
from __future__ import annotations

import codecs
import ctypes
import os
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from formats.gguf.files import gguf_file
from serving.inference.local.engines.base import Detokenizer, Engine, StepOutput
from serving.inference.types import SamplingParams

PREFILL_CHUNK = 512  # tokens per decode call (llama.cpp's n_batch)


def _quiet_llama_cpp() -> None:
    """llama.cpp logs every load to stderr; the server writes its own JSON log lines instead."""
    from llama_cpp import llama_cpp as lc

    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = lc.llama_log_callback(lambda level, text, data: None)
        lc.llama_log_set(_LOG_CALLBACK, None)


_LOG_CALLBACK = None


class Utf8Detokenizer(Detokenizer):
    """Token pieces are bytes; a character may span tokens, so text is released only once complete."""

    def __init__(self, piece):
        self.piece = piece
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add_token(self, token: int) -> str:
        return self.decoder.decode(self.piece(token))

    def finalize(self) -> str:
        return self.decoder.decode(b"", final=True)


@dataclass
class Sequence:
    uid: int
    slot: int
    pending: list[int]  # prompt tokens not yet decoded
    params: SamplingParams
    rng: np.random.Generator
    position: int = 0
    generated: list[int] = field(default_factory=list)
    batch_index: int = -1  # where this sequence's logits are in the current batch (-1: none this step)


class LlamaCppEngine(Engine):
    family = "gguf"
    name = "llamacpp"
    supports_penalties = True
    supports_logprobs = True

    def __init__(self, path: Path, max_batch: int, context_length: int):
        from llama_cpp import _internals
        from llama_cpp import llama_cpp as lc
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        _quiet_llama_cpp()
        self.lc = lc
        self.model = _internals.LlamaModel(path_model=str(path), params=lc.llama_model_default_params(),
                                           verbose=False)
        params = lc.llama_context_default_params()
        params.n_seq_max = max_batch
        params.kv_unified = True  # sequences share one cache of n_ctx cells
        params.n_ctx = context_length * max_batch
        params.n_batch = params.n_ubatch = PREFILL_CHUNK
        params.n_threads = params.n_threads_batch = os.cpu_count() or 1
        self.ctx = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=PREFILL_CHUNK + max_batch, embd=0, n_seq_max=1, verbose=False)
        self.vocab = lc.llama_model_get_vocab(self.model.model)
        self.n_vocab = self.model.n_vocab()
        metadata = self.model.metadata()
        eos, bos = self.model.token_eos(), self.model.token_bos()
        self.formatter = Jinja2ChatFormatter(
            template=metadata.get("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"),
            eos_token=self.token_text(eos) if eos >= 0 else "", bos_token=self.token_text(bos) if bos >= 0 else "")
        self.free_slots = deque(range(max_batch))
        self.waiting: deque[Sequence] = deque()
        self.active: dict[int, Sequence] = {}
        self.next_uid = 0

    @classmethod
    def load(cls, path: Path, max_batch: int, context_length: int) -> "LlamaCppEngine":
        return cls(gguf_file(path), max_batch, context_length)

    # ------------------------------------------------------------ text

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.formatter(messages=messages).prompt

    def encode(self, text: str, *, special: bool = True, at_start: bool = True) -> list[int]:
        return self.model.tokenize(text.encode(), add_bos=self.model.add_bos_token() and at_start, special=special)

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    @cached_property
    def special_texts(self) -> frozenset[str]:
        control = self.lc.LLAMA_TOKEN_ATTR_CONTROL | self.lc.LLAMA_TOKEN_ATTR_USER_DEFINED
        return frozenset(self.token_text(token) for token in range(self.n_vocab)
                         if self.lc.llama_vocab_get_attr(self.vocab, token) & control)

    @cached_property
    def max_token_chars(self) -> int:
        return max(len(self.piece(token, special=True).decode("utf-8", errors="replace"))
                   for token in range(self.n_vocab))

    def detokenizer(self) -> Detokenizer:
        return Utf8Detokenizer(lambda token: self.piece(token, special=False))

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def piece(self, token: int, special: bool) -> bytes:
        """The bytes of one token (llama-cpp-python's own wrapper returns its whole zero-padded buffer)."""
        buffer = ctypes.create_string_buffer(64)
        size = self.lc.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        if size < 0:  # the piece is longer than the buffer: llama.cpp says how long
            buffer = ctypes.create_string_buffer(-size)
            size = self.lc.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:size]

    # ------------------------------------------------------------ batch

    def insert(self, prompt: list[int], params: SamplingParams) -> int:
        uid, self.next_uid = self.next_uid, self.next_uid + 1
        rng = np.random.default_rng(params.seed)
        self.waiting.append(Sequence(uid=uid, slot=-1, pending=list(prompt), params=params, rng=rng))
        return uid

    def step(self) -> list[StepOutput]:
        self._admit()
        outputs: list[StepOutput] = []
        while self.active:
            if not self._fill_batch():
                break
            self.ctx.decode(self.batch)
            ready = [s for s in self.active.values() if s.batch_index >= 0]
            for sequence in ready:
                outputs.append(self._sample(sequence))
            if ready:  # at least one sequence produced a token: that is one step
                break
        return outputs

    def remove(self, uids: list[int]) -> None:
        for uid in uids:
            sequence = self.active.pop(uid, None)
            if sequence is not None:
                self._release(sequence)
        self.waiting = deque(s for s in self.waiting if s.uid not in uids)

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.model.close()

    # ------------------------------------------------------------ internals

    def _admit(self) -> None:
        while self.waiting and self.free_slots:
            sequence = self.waiting.popleft()
            sequence.slot = self.free_slots.popleft()
            self.active[sequence.uid] = sequence

    def _fill_batch(self) -> bool:
        """One decode's worth: each generating sequence's last token, then prompt chunks in the room left."""
        batch = self.batch.batch
        batch.n_tokens = 0

        def add(token: int, sequence: Sequence, wants_logits: bool) -> None:
            i = batch.n_tokens
            batch.token[i], batch.pos[i] = token, sequence.position
            batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, sequence.slot, wants_logits
            sequence.position += 1
            batch.n_tokens += 1

        for sequence in self.active.values():
            sequence.batch_index = -1
            if not sequence.pending and sequence.generated:
                sequence.batch_index = batch.n_tokens
                add(sequence.generated[-1], sequence, True)
        room = PREFILL_CHUNK
        for sequence in self.active.values():
            if sequence.pending and room > 0:
                chunk, sequence.pending = sequence.pending[:room], sequence.pending[room:]
                room -= len(chunk)
                for index, token in enumerate(chunk):
                    last = not sequence.pending and index == len(chunk) - 1
                    if last:
                        sequence.batch_index = batch.n_tokens
                    add(token, sequence, last)
        return batch.n_tokens > 0

    def _sample(self, sequence: Sequence) -> StepOutput:
        pointer = self.lc.llama_get_logits_ith(self.ctx.ctx, sequence.batch_index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        params = sequence.params
        if params.logit_bias or (sequence.generated and (params.presence_penalty or params.frequency_penalty)):
            logits = logits.copy()  # never write into llama.cpp's buffer
            for token, bias in (params.logit_bias or {}).items():
                if 0 <= token < self.n_vocab:
                    logits[token] += bias
            if sequence.generated and (params.presence_penalty or params.frequency_penalty):
                seen, counts = np.unique(sequence.generated, return_counts=True)
                logits[seen] -= (params.presence_penalty or 0) + (params.frequency_penalty or 0) * counts
        # Work per token matters at ~50 tok/s with a 150k vocabulary: greedy is one argmax, and the softmax is
        # computed only when sampling or logprobs need it.
        if params.temperature == 0:
            token = int(np.argmax(logits))
        else:
            scaled = logits.astype(np.float64) / params.temperature
            probs = np.exp(scaled - scaled.max())
            probs /= probs.sum()
            if params.top_p < 1:
                order = np.argsort(-probs)
                keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p)) + 1]
                mask = np.zeros_like(probs)
                mask[keep] = probs[keep]
                probs = mask / mask.sum()
            token = int(sequence.rng.choice(self.n_vocab, p=probs))
        sequence.generated.append(token)
        finish = None
        if self.lc.llama_vocab_is_eog(self.vocab, token):
            finish = "stop"
        elif len(sequence.generated) >= params.max_tokens:
            finish = "length"
        output = StepOutput(uid=sequence.uid, token=token, finish_reason=finish)
        if params.logprobs:
            shifted = logits.astype(np.float64) - logits.max()
            logprobs = shifted - np.log(np.exp(shifted).sum())
            output.logprob = float(logprobs[token])
            top = np.argpartition(-logprobs, params.top_logprobs)[: params.top_logprobs] if params.top_logprobs else []
            output.top_logprobs = sorted(((int(t), float(logprobs[t])) for t in top), key=lambda pair: -pair[1])
        if finish is not None:
            self.active.pop(sequence.uid, None)
            self._release(sequence)
        return output

    def _release(self, sequence: Sequence) -> None:
        if sequence.slot >= 0:
            self.ctx.kv_cache_seq_rm(sequence.slot, -1, -1)
            self.free_slots.append(sequence.slot)
            sequence.slot = -1


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True

