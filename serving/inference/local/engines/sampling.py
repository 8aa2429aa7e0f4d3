"""Sampling one token from a row of logits in numpy, as the llama.cpp engine does it (so temperature, top-p, seed,
penalties, logit bias and logprobs mean the same as on the MLX engine), and the speculative-decoding rule that
accepts or rejects a drafted token.

Both proposers (n-grams of the sequence, a greedy draft model) draft deterministically, so the draft distribution
is one-hot and speculative sampling reduces to: accept the drafted token d with probability p(d); on rejection,
sample from p with d removed, renormalised. That samples exactly from p, so speculation changes speed, never the
distribution; at temperature 0 it is "accept when d is the argmax", which keeps greedy output identical.
"""
from __future__ import annotations

import numpy as np

from serving.inference.types import SamplingParams


def adjusted(logits: np.ndarray, params: SamplingParams, generated: list[int]) -> np.ndarray:
    """The logits after logit bias and presence/frequency penalties (a copy only when something changes them:
    `logits` may be llama.cpp's own buffer)."""
    penalised = generated and (params.presence_penalty or params.frequency_penalty)
    if not params.logit_bias and not penalised:
        return logits
    logits = logits.copy()
    for token, bias in (params.logit_bias or {}).items():
        if 0 <= token < logits.shape[0]:
            logits[token] += bias
    if penalised:
        seen, counts = np.unique(generated, return_counts=True)
        logits[seen] -= (params.presence_penalty or 0) + (params.frequency_penalty or 0) * counts
    return logits


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution sampled from: softmax at the temperature, then the top-p nucleus."""
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1:
        order = np.argsort(-probs)
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return probs


def choose(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           draft: int | None = None) -> tuple[int, bool]:
    """The next token, and whether it is the drafted one (accepted). Greedy is one argmax: work per token matters at
    ~80 tok/s with a 50-150k vocabulary, so the softmax is computed only when sampling needs it."""
    if params.temperature == 0:
        token = int(np.argmax(logits))
        return token, token == draft
    probs = probabilities(logits, params)
    if draft is not None:
        if rng.random() < probs[draft]:
            return draft, True
        probs[draft] = 0.0  # rejected: the residual distribution (p - one-hot draft)+, renormalised
        probs /= probs.sum()
    return int(rng.choice(probs.shape[0], p=probs)), False


def logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The token's log-probability under the model (before temperature, as OpenAI reports it) and the `top` best."""
    shifted = logits.astype(np.float64) - logits.max()
    values = shifted - np.log(np.exp(shifted).sum())
    best = np.argpartition(-values, top)[:top] if top else []
    # a grammar's mask leaves fewer than `top` tokens possible: the impossible ones are not alternatives
    return float(values[token]), sorted(((int(t), float(values[t])) for t in best if np.isfinite(values[t])),
                                        key=lambda pair: -pair[1])
