"""The llama.cpp engine (llama-cpp-python's low-level API) for GGUF artifacts: the fast path on x86 CPUs.

Continuous batching as llama-server does it: one context with one KV-cache sequence ("slot") per active request
(`n_seq_max`, each with its own cells); each step decodes one batch holding the next token of every generating sequence and
the (chunked) prompts of sequences joining, then samples each sequence from its own logits (`sampling.py`, numpy, so
parameters mean the same as on the MLX engine).

Prefix cache: a slot's cells outlive its request, and a new prompt starts from the longest prefix any slot holds
(`kv_slots.py`); what it reused is reported as `cached_tokens`. Speculative decoding (`drafting.py`): a generating
sequence may also put drafted tokens in the batch, one logits row each; the rows are checked in order and every
accepted draft is a token gained, the first mismatch is replaced by the model's own token, and the rejected drafts'
cells are removed.
"""
from __future__ import annotations

import codecs
import ctypes
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from formats.gguf.files import gguf_file
from serving.inference.local.constraints import Constraint, Vocabulary, llamacpp_tokenizer
from serving.inference.local.engines.base import Detokenizer, Engine, EngineOptions, StepOutput
from serving.inference.local.engines.compute import on_compute_thread
from serving.inference.local.engines.constrained import failed, masked, settle
from serving.inference.local.engines.drafting import DraftModel, NgramProposer
from serving.inference.local.engines.kv_slots import LlamaMemory, SlotCache, new_context
from serving.inference.local.engines.sampling import adjusted, choose, logprobs
from serving.inference.types import SamplingParams

PREFILL_CHUNK = 512  # prompt tokens per decode call (llama.cpp's n_ubatch)
# Drafted rows per step, shared by the generating sequences: a batch of a few rows costs about one row on a CPU
# that is bound by reading the weights, but at 8+ streams the batch is already wide and drafts would only add work.
SPECULATIVE_ROWS = 16


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
    prompt: list[int]
    params: SamplingParams
    rng: np.random.Generator
    slot: int = -1
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    position: int = 0  # the next position to write in its slot
    generated: list[int] = field(default_factory=list)
    cached: int | None = None  # prompt tokens reused from the prefix cache; None once reported
    drafts: list[int] = field(default_factory=list)  # drafted tokens in this step's batch
    method: str | None = None  # who drafted them
    budget: int = 0  # most drafts next step: grows while drafts are accepted, shrinks when rejected
    batch_index: int = -1  # where this sequence's first logits row is in the current batch (-1: none this step)
    constraint: Constraint | None = None  # its grammar's matcher (constrained decoding)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.generated


class LlamaCppEngine(Engine):
    family = "gguf"
    name = "llamacpp"
    supports_penalties = True
    supports_logprobs = True

    def __init__(self, path: Path, max_batch: int, context_length: int, options: EngineOptions = EngineOptions()):
        from llama_cpp import _internals
        from llama_cpp import llama_cpp as lc
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        _quiet_llama_cpp()
        self.lc, self.options = lc, options
        self.model = _internals.LlamaModel(path_model=str(path), params=lc.llama_model_default_params(),
                                           verbose=False)
        speculating = options.prompt_lookup or options.draft is not None
        # Rows per decode: every sequence's next token, the drafts (SPECULATIVE_ROWS in all) and a prompt chunk
        rows = PREFILL_CHUNK + (max(max_batch, SPECULATIVE_ROWS) if speculating else max_batch)
        self.ctx = new_context(self.model, lc, max_batch, context_length, rows, PREFILL_CHUNK)
        self.batch = _internals.LlamaBatch(n_tokens=rows, embd=0, n_seq_max=1, verbose=False)
        self.vocab = lc.llama_model_get_vocab(self.model.model)
        self.n_vocab = self.model.n_vocab()
        metadata = self.model.metadata()
        eos, bos = self.model.token_eos(), self.model.token_bos()
        self.chat_template = metadata.get("tokenizer.chat_template", "")
        self.formatter = Jinja2ChatFormatter(
            template=self.chat_template or "{% for m in messages %}{{ m['content'] }}\n{% endfor %}",
            eos_token=self.token_text(eos) if eos >= 0 else "", bos_token=self.token_text(bos) if bos >= 0 else "")
        self.slots = SlotCache(LlamaMemory(self.ctx), max_batch, enabled=options.prefix_cache)
        self.vocabulary = Vocabulary(lambda: llamacpp_tokenizer(self.vocab, self.n_vocab, self.end_tokens))
        self.ngram = NgramProposer() if options.prompt_lookup else None
        self.draft = None
        if options.draft is not None:
            self.draft = DraftModel(gguf_file(options.draft), self, max_batch, context_length, options.prefix_cache,
                                    PREFILL_CHUNK)
        self.waiting: list[Sequence] = []
        self.active: dict[int, Sequence] = {}
        self.next_uid = 0

    @classmethod
    def load(cls, path: Path, max_batch: int, context_length: int,
             options: EngineOptions = EngineOptions()) -> "LlamaCppEngine":
        # loading repacks weights with OpenMP too: on the one compute thread (compute.py)
        return on_compute_thread(cls, gguf_file(path), max_batch, context_length, options)

    # ------------------------------------------------------------ text

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        return self.formatter(messages=messages, **({"tools": tools} if tools else {})).prompt

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

    @cached_property
    def end_tokens(self) -> list[int]:
        return [token for token in range(self.n_vocab) if self.lc.llama_vocab_is_eog(self.vocab, token)]

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
        constraint = self.vocabulary.constraint(params.grammar) if params.grammar else None
        self.waiting.append(Sequence(uid=uid, prompt=list(prompt), params=params, constraint=constraint,
                                     rng=np.random.default_rng(params.seed), budget=self.options.draft_tokens))
        return uid

    def step(self) -> list[StepOutput]:
        self._admit()
        outputs: list[StepOutput] = []
        while self.active:
            self._propose()
            if not self._fill_batch():
                break
            try:
                on_compute_thread(self.ctx.decode, self.batch)
            except Exception:
                self.slots.forget_all()  # the scheduler fails these sequences; their cells cannot be trusted
                raise
            ready = [s for s in self.active.values() if s.batch_index >= 0]
            for sequence in ready:
                outputs += self._verify(sequence)
            if ready:  # at least one sequence produced a token: that is one step
                break
        return outputs

    def remove(self, uids: list[int]) -> None:
        for uid in uids:
            sequence = self.active.pop(uid, None)
            if sequence is not None:
                self._release(sequence)
        self.waiting = [s for s in self.waiting if s.uid not in uids]

    def close(self) -> None:
        if self.draft is not None:
            self.draft.close()
        self.batch.close()
        self.ctx.close()
        self.model.close()

    # ------------------------------------------------------------ internals

    def _admit(self) -> None:
        while self.waiting and self.slots.free:
            sequence = self.waiting.pop(0)
            sequence.slot, sequence.cached = self.slots.acquire(sequence.prompt)
            sequence.position = sequence.cached
            sequence.pending = sequence.prompt[sequence.cached:]
            self.active[sequence.uid] = sequence

    def _propose(self) -> None:
        """Drafts for the generating sequences, within SPECULATIVE_ROWS in all: n-grams first (free), then the
        draft model for the sequences they found nothing for."""
        generating = [s for s in self.active.values() if not s.pending and s.generated]
        for sequence in generating:
            sequence.drafts, sequence.method = [], None
        if not (self.ngram or self.draft) or not generating:
            return
        most = min(self.options.draft_tokens, SPECULATIVE_ROWS // len(generating) - 1)
        wanted: dict[int, tuple[list[int], int]] = {}
        for sequence in generating:
            # every accepted draft is a token, and the model adds one of its own: stay within max_tokens (and so
            # within the context)
            room = min(most, sequence.budget, sequence.params.max_tokens - len(sequence.generated) - 1)
            if room <= 0 or sequence.constraint is not None:  # constrained sequences never draft (constrained.py)
                continue
            if self.ngram is not None and (found := self.ngram.propose(sequence.tokens, room)):
                sequence.drafts, sequence.method = found, self.ngram.method
            elif self.draft is not None:
                wanted[sequence.slot] = (sequence.tokens, room)
        if wanted:
            drafted = self.draft.propose(wanted)
            for sequence in generating:
                if drafted.get(sequence.slot):
                    sequence.drafts, sequence.method = drafted[sequence.slot], self.draft.method

    def _fill_batch(self) -> bool:
        """One decode's worth: each generating sequence's last token and its drafts, then prompt chunks."""
        batch = self.batch.batch
        batch.n_tokens = 0

        def add(token: int, sequence: Sequence, wants_logits: bool) -> None:
            i = batch.n_tokens
            batch.token[i], batch.pos[i] = token, sequence.position
            batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, sequence.slot, wants_logits
            self.slots.record(sequence.slot, token)
            sequence.position += 1
            batch.n_tokens += 1

        for sequence in self.active.values():
            sequence.batch_index = -1
            if not sequence.pending and sequence.generated:
                sequence.batch_index = batch.n_tokens
                for token in [sequence.generated[-1], *sequence.drafts]:
                    add(token, sequence, True)
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

    def _verify(self, sequence: Sequence) -> list[StepOutput]:
        """The sequence's tokens from this step's rows: one per accepted draft, then the model's own."""
        outputs: list[StepOutput] = []
        drafts, accepted = sequence.drafts, 0
        for row in range(len(drafts) + 1):
            draft = drafts[row] if row < len(drafts) else None
            pointer = self.lc.llama_get_logits_ith(self.ctx.ctx, sequence.batch_index + row)
            logits = adjusted(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)), sequence.params,
                              sequence.generated)
            if sequence.constraint is not None and (logits := masked(sequence.constraint, logits)) is None:
                outputs.append(failed(sequence.uid, sequence.constraint))
                break
            token, taken = choose(logits, sequence.params, sequence.rng, draft)
            outputs += self._emit(sequence, token, logits)
            if outputs[-1].finish_reason is not None or not taken:
                break
            accepted += 1
        # Cells hold the last token and every draft; keep the last token's and the accepted drafts' only.
        keep = sequence.position - len(drafts) + accepted
        self.slots.truncate(sequence.slot, keep)
        sequence.position = keep
        if drafts:
            outputs[0].speculation, outputs[0].drafted, outputs[0].accepted = sequence.method, len(drafts), accepted
            # transformers' assisted-generation schedule: +2 after a step that took every draft, else -1; a sequence
            # whose drafts keep failing (text that does not repeat) costs one extra row a step, not a dozen
            if accepted == len(drafts):
                sequence.budget = min(self.options.draft_tokens, sequence.budget + 2)
            else:
                sequence.budget = max(1, sequence.budget - 1)
        if sequence.cached is not None:
            outputs[0].cached_tokens, sequence.cached = sequence.cached, None
        if outputs[-1].finish_reason is not None:
            self.active.pop(sequence.uid, None)
            self._release(sequence)
        return outputs

    def _emit(self, sequence: Sequence, token: int, logits: np.ndarray) -> list[StepOutput]:
        sequence.generated.append(token)
        finish = None
        if self.lc.llama_vocab_is_eog(self.vocab, token):
            finish = "stop"
        elif len(sequence.generated) >= sequence.params.max_tokens:
            finish = "length"
        output = StepOutput(uid=sequence.uid, token=token, finish_reason=finish)
        if sequence.params.logprobs:
            output.logprob, output.top_logprobs = logprobs(logits, token, sequence.params.top_logprobs)
        if sequence.constraint is not None:
            return settle(sequence.constraint, output, self.end_tokens[0])
        return [output]

    def _release(self, sequence: Sequence) -> None:
        if sequence.slot >= 0:
            self.slots.release(sequence.slot)
            if self.draft is not None:
                self.draft.release(sequence.slot)
            sequence.slot = -1


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True
