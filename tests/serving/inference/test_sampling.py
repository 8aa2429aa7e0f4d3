"""The speculative acceptance rule: tokens chosen with a drafted token must follow the model's distribution exactly
(speculation changes speed, never what is sampled), and at temperature 0 a draft is accepted only as the argmax."""
from __future__ import annotations

import numpy as np

from serving.inference.local.engines.sampling import choose, probabilities
from serving.inference.types import SamplingParams

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))


def frequencies(draft: int | None, params: SamplingParams, draws: int = 20_000) -> np.ndarray:
    rng = np.random.default_rng(7)
    counts = np.zeros(LOGITS.shape[0])
    for _ in range(draws):
        counts[choose(LOGITS, params, rng, draft)[0]] += 1
    return counts / draws


def test_drafted_tokens_leave_the_sampled_distribution_unchanged():
    params = SamplingParams(temperature=1.0, top_p=1.0)
    expected = probabilities(LOGITS, params)
    for draft in (None, 0, 3):  # a likely draft, an unlikely one
        assert np.abs(frequencies(draft, params) - expected).max() < 0.015, draft
    nucleus = SamplingParams(temperature=0.7, top_p=0.8)  # the draft outside the nucleus is never taken
    assert np.abs(frequencies(3, nucleus) - probabilities(LOGITS, nucleus)).max() < 0.015
    assert frequencies(3, nucleus)[3] == 0


def test_a_draft_is_accepted_exactly_when_it_is_the_greedy_choice():
    rng = np.random.default_rng(0)
    greedy = SamplingParams(temperature=0, top_p=1.0)
    assert choose(LOGITS, greedy, rng, 0) == (0, True)
    assert choose(LOGITS, greedy, rng, 1) == (0, False)
    assert choose(LOGITS, greedy, rng) == (0, False)
