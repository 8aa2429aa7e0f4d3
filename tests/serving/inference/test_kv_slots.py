"""The llama.cpp prefix cache's bookkeeping (`SlotCache`) against a fake KV memory that tracks which positions each
sequence holds, so every removal and share it asks of llama.cpp is checked against what it records."""
from __future__ import annotations

from serving.inference.local.engines.kv_slots import SlotCache, common_prefix


class FakeMemory:
    """Per slot, the set of positions whose cells it holds; seq_cp adds the source's positions to the target."""

    def __init__(self, slots: int):
        self.cells = [set() for _ in range(slots)]
        self.copies: list[tuple[int, int, int]] = []

    def seq_rm(self, slot: int, start: int) -> None:
        self.cells[slot] = {p for p in self.cells[slot] if p < start}

    def seq_cp(self, source: int, target: int, end: int) -> None:
        assert {p for p in self.cells[source] if p < end} == set(range(end)), "sharing cells the source lacks"
        self.cells[target] |= set(range(end))
        self.copies.append((source, target, end))


def decode(cache: SlotCache, memory: FakeMemory, slot: int, tokens: list[int]) -> None:
    """What the engine does: record each token put in the batch; the decode then creates the cells."""
    for token in tokens:
        memory.cells[slot].add(len(cache.tokens[slot]))
        cache.record(slot, token)


def consistent(cache: SlotCache, memory: FakeMemory) -> bool:
    return all(memory.cells[slot] == set(range(len(tokens))) for slot, tokens in enumerate(cache.tokens))


def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5] * 1000, [5] * 700 + [6]) == 700
    assert common_prefix([1, 2], [1, 2]) == 2


def test_a_repeated_prompt_reuses_all_but_its_last_token():
    memory = FakeMemory(2)
    cache = SlotCache(memory, 2)
    system = list(range(100, 150))
    slot, reused = cache.acquire(system + [1, 2, 3])
    assert reused == 0
    decode(cache, memory, slot, system + [1, 2, 3] + [7, 8])  # the prompt, then two generated tokens
    cache.release(slot)
    again, reused = cache.acquire(system + [1, 2, 3])
    assert reused == 52  # the last prompt token is decoded again: its logits are needed
    assert cache.tokens[again] == system + [1, 2] and memory.copies == [(slot, again, 52)]
    assert cache.tokens[slot] == system + [1, 2, 3, 7, 8] and consistent(cache, memory)  # kept for later prompts


def test_a_conversation_continues_its_slot_else_the_least_recently_used_slot_is_taken():
    memory = FakeMemory(3)
    cache = SlotCache(memory, 3)
    prompts = {0: [1, 1, 1, 1], 1: [2, 2, 2, 2], 2: [3, 3, 3, 3]}
    for slot, prompt in prompts.items():
        assert cache.acquire(prompt)[0] == slot
        decode(cache, memory, slot, prompt)
    for slot in (1, 0, 2):  # slot 1 is now the least recently used
        cache.release(slot)
    assert cache.acquire([3, 3, 3, 3, 5, 6]) == (2, 4)  # its whole content starts the prompt: continued
    assert cache.acquire([1, 1, 1, 9]) == (1, 3)  # the least recently used, with slot 0's prefix shared
    assert memory.copies == [(0, 1, 3)] and cache.tokens[0] == [1, 1, 1, 1]
    cache.release(1)
    assert cache.acquire([8, 8]) == (0, 0)  # nothing shared: its cells are dropped
    assert cache.tokens[0] == [] and memory.cells[0] == set() and consistent(cache, memory)


def test_a_prefix_held_by_another_slot_even_a_busy_one_is_shared_not_recomputed():
    memory = FakeMemory(2)
    cache = SlotCache(memory, 2)
    system = list(range(10, 40))
    busy, _ = cache.acquire(system + [1])
    decode(cache, memory, busy, system + [1, 5, 6])  # still generating: it is never released
    slot, reused = cache.acquire(system + [2, 3])
    assert slot != busy and reused == 30 and memory.copies == [(busy, slot, 30)]
    assert cache.tokens[slot] == system and consistent(cache, memory)
    decode(cache, memory, slot, [2, 3])
    assert cache.tokens[busy] == system + [1, 5, 6] and consistent(cache, memory)  # the donor is untouched


def test_without_the_prefix_cache_nothing_is_kept_or_shared_but_a_slot_continues_its_own_sequence():
    memory = FakeMemory(2)
    cache = SlotCache(memory, 2, enabled=False)
    slot, _ = cache.acquire([1, 2, 3])
    decode(cache, memory, slot, [1, 2, 3, 4])
    assert cache.acquire([1, 2, 3, 4, 5])[1] == 0 and memory.copies == []  # no sharing with the busy slot
    assert cache.prepare(slot, [1, 2, 3, 4, 9]) == 4  # a draft model's slot, step after step
    cache.release(slot)
    assert cache.tokens[slot] == [] and memory.cells[slot] == set()


def test_rejected_drafts_are_truncated_and_a_failed_decode_forgets_everything():
    memory = FakeMemory(1)
    cache = SlotCache(memory, 1)
    slot, _ = cache.acquire([1, 2, 3])
    decode(cache, memory, slot, [1, 2, 3, 40, 41, 42])
    cache.truncate(slot, 4)
    assert cache.tokens[slot] == [1, 2, 3, 40] and consistent(cache, memory)
    cache.forget_all()
    assert cache.tokens == [[]] and memory.cells == [set()]
