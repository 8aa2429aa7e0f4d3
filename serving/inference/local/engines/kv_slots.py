"""Which KV-cache sequence ("slot") of a llama.cpp context holds which tokens: the prefix cache across requests.

A llama.cpp context here has `n_seq_max` sequences, each with its own stream of `context_length` cells. A slot's
cells stay after its request ends, and `SlotCache` remembers their tokens, so a later prompt starts from the longest
prefix already computed, as llama-server reuses its slots:

- a new sequence continues a free slot whose whole content starts its prompt (a conversation's next turn), else
  takes the least recently used free slot, whose own cells are dropped (least recently used first);
- the longest prefix any other slot holds, even one still generating, is copied over with `seq_cp` (a memory copy
  of that slot's stream before the next decode: milliseconds, where computing a long prompt again takes seconds),
  and the holder keeps its own continuation;
- what follows the prefix is removed (`seq_rm`), so a slot's cells are always exactly its recorded tokens.

The memory bound is the cache itself: each slot's stream holds one context's worth of positions and exists anyway,
so cached prefixes cost no memory and never crowd out a running sequence. `SlotCache` is pure bookkeeping over a
`KvMemory` (tested without a model); `LlamaMemory` and `new_context` are the llama.cpp side.
"""
from __future__ import annotations

import os
from typing import Protocol


class KvMemory(Protocol):
    def seq_rm(self, slot: int, start: int) -> None:
        """Drop the slot's positions from `start` on."""

    def seq_cp(self, source: int, target: int, end: int) -> None:
        """Give `target` the cells of `source`'s positions [0, end)."""


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix: a binary search over slice comparisons, which run in C (a 2,000-token
    prompt against 16 slots costs microseconds, not a Python loop per token)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class SlotCache:
    def __init__(self, memory: KvMemory, slots: int, enabled: bool = True):
        self.memory, self.enabled = memory, enabled
        self.tokens: list[list[int]] = [[] for _ in range(slots)]  # per slot: the tokens its cells hold, in order
        self.last_used = [0] * slots
        self.free = set(range(slots))
        self.clock = 0

    def acquire(self, prompt: list[int]) -> tuple[int, int]:
        """A free slot for `prompt` (the caller checks `free`), prepared with the longest cached prefix of it:
        (slot, prompt tokens already in its cells). A free slot whose whole content starts the prompt (the
        conversation goes on) is continued; otherwise the least recently used free slot is cleared for it, and the
        prefix is shared from whichever slot holds it, so that slot keeps its own continuation for later prompts."""
        continued = [s for s in self.free
                     if self.tokens[s] and common_prefix(self.tokens[s], prompt) == len(self.tokens[s])]
        if continued:
            slot = max(continued, key=lambda s: len(self.tokens[s]))
        else:
            slot = min(self.free, key=lambda s: (self.last_used[s], s))
        self.free.discard(slot)
        return slot, self.prepare(slot, prompt)

    def prepare(self, slot: int, tokens: list[int]) -> int:
        """Make `slot` hold the longest computed prefix of `tokens` it can get, never the last token (its logits are
        what the caller decodes it for); returns that prefix's length."""
        limit = len(tokens) - 1
        # A slot always continues from its own cells (a draft model's slot, step after step); only sharing with
        # other slots is the prefix cache (without it, a released slot holds nothing)
        own = min(common_prefix(self.tokens[slot], tokens), limit)
        donor, shared = slot, own
        if self.enabled:
            for other, held in enumerate(self.tokens):
                if other != slot and len(held) > shared:
                    length = min(common_prefix(held, tokens), limit)
                    if length > shared:
                        donor, shared = other, length
        if donor == slot:
            self.truncate(slot, own)
        else:
            self.truncate(slot, 0)
            self.memory.seq_cp(donor, slot, shared)
            self.tokens[slot] = tokens[:shared]
        return shared

    def record(self, slot: int, token: int) -> None:
        """A token was put in the batch for this slot's next position (its cells exist once the batch decodes)."""
        self.tokens[slot].append(token)

    def truncate(self, slot: int, length: int) -> None:
        if length < len(self.tokens[slot]):
            self.memory.seq_rm(slot, length)
            del self.tokens[slot][length:]

    def release(self, slot: int) -> None:
        """The slot's sequence left: its cells stay for later prompts (or go, without the prefix cache)."""
        self.clock += 1
        self.last_used[slot] = self.clock
        if not self.enabled:
            self.truncate(slot, 0)
        self.free.add(slot)

    def forget_all(self) -> None:
        """After a failed decode nothing recorded can be trusted: drop every slot's cells."""
        for slot in range(len(self.tokens)):
            self.memory.seq_rm(slot, 0)
            self.tokens[slot] = []


class LlamaMemory:
    """`KvMemory` over a llama.cpp context."""

    def __init__(self, ctx):
        self.ctx = ctx

    def seq_rm(self, slot: int, start: int) -> None:
        self.ctx.kv_cache_seq_rm(slot, start, -1)

    def seq_cp(self, source: int, target: int, end: int) -> None:
        # Each sequence has its own stream of cells, and llama.cpp copies between streams only whole (the buffer
        # copy happens before the next decode): copy, then cut what follows the shared prefix
        self.ctx.kv_cache_seq_cp(source, target, -1, -1)
        self.ctx.kv_cache_seq_rm(target, end, -1)


def new_context(model, lc, max_batch: int, context_length: int, batch_tokens: int, prefill_chunk: int):
    """A context with one KV sequence per batch place, each in its own stream of `context_length` cells."""
    from llama_cpp import _internals

    params = lc.llama_context_default_params()
    params.n_seq_max = max_batch
    # Not one unified cache: there every token attends over every used cell (masked), so the cells that the prefix
    # cache keeps would slow every sequence down (measured: 99 -> 44 tok/s with 15 long prompts kept). Per-sequence
    # streams, as llama-server's parallel slots use, bound each sequence's attention by its own cells.
    params.kv_unified = False
    # llama.cpp's default (auto) turns flash attention on; on these CPUs it made every token after a long prompt
    # slow: 20 new tokens after a 1,578-token system prompt took 466-756 ms with it, 86 ms without, for the same
    # cold prefill and short-context decode (llama-cpp-python's own Llama also leaves it off)
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.n_ctx = context_length * max_batch
    params.n_batch = batch_tokens  # one decode call takes every row we build ...
    params.n_ubatch = prefill_chunk  # ... and llama.cpp computes it in pieces of this size
    params.n_threads = params.n_threads_batch = os.cpu_count() or 1
    return _internals.LlamaContext(model=model, params=params, verbose=False)
