"""The MLX engine: mlx-lm's model loading, chat templates and `BatchGenerator` (continuous batching).

Prefix cache: mlx-lm's own `LRUPromptCache`, as `mlx_lm.server` uses it. A sequence that ends (finished, cancelled or
cut by a stop string) leaves its KV cache under its tokens; a new prompt starts from the nearest entry (a prefix of
it, or a longer entry trimmed to the common part) and the batch generator prefills only the rest. The cache is
bounded in entries and bytes, least recently used first.
"""
from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

from serving.inference.local.constraints import Constraint, Vocabulary, hf_tokenizer
from serving.inference.local.engines.base import Detokenizer, Engine, EngineOptions, StepOutput
from serving.inference.local.engines.constrained import mlx_processor, settle
from serving.inference.types import SamplingParams

CACHE_ENTRIES = 16  # sequences' KV caches kept for reuse (mlx_lm.server keeps 10)
CACHE_BYTES = 1 << 30  # and at most this many bytes of them


class MlxDetokenizer(Detokenizer):
    def __init__(self, streaming):
        self.streaming = streaming

    def add_token(self, token: int) -> str:
        self.streaming.add_token(token)
        return self.streaming.last_segment

    def finalize(self) -> str:
        self.streaming.finalize()
        return self.streaming.last_segment


class MlxEngine(Engine):
    family = "mlx"
    name = "mlx"
    supports_penalties = True
    supports_logprobs = True

    def __init__(self, model, tokenizer, max_batch: int, options: EngineOptions = EngineOptions()):
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.models.cache import LRUPromptCache

        self.model, self.tokenizer = model, tokenizer
        self.batch = BatchGenerator(model, stop_tokens=[[t] for t in tokenizer.eos_token_ids],
                                    completion_batch_size=max_batch, prefill_batch_size=min(8, max_batch))
        self.wants_logprobs: dict[int, int] = {}  # uid -> how many top logprobs (0 = just the token's)
        self.prompt_cache = LRUPromptCache(CACHE_ENTRIES, CACHE_BYTES) if options.prefix_cache else None
        self.cached: dict[int, int] = {}  # uid -> prompt tokens reused, until its first output reports it
        self.vocabulary = Vocabulary(lambda: hf_tokenizer(tokenizer._tokenizer, tokenizer.eos_token_ids))
        self.constraints: dict[int, Constraint] = {}  # uid -> its grammar's matcher (constrained decoding)

    @classmethod
    def load(cls, path: Path, max_batch: int, context_length: int,
             options: EngineOptions = EngineOptions()) -> "MlxEngine":
        from mlx_lm import load

        model, tokenizer = load(str(path))
        return cls(model, tokenizer, max_batch, options)

    @cached_property
    def chat_template(self) -> str:
        template = self.tokenizer.chat_template
        return template if isinstance(template, str) else ""

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                  **({"tools": tools} if tools else {}))

    def encode(self, text: str, *, special: bool = True, at_start: bool = True) -> list[int]:
        # Chat templates already contain their special tokens; never add a second BOS.
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=not special)

    @cached_property
    def vocab_size(self) -> int:
        return len(self.tokenizer.get_vocab())

    @cached_property
    def special_texts(self) -> frozenset[str]:
        return frozenset(t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special)

    @cached_property
    def max_token_chars(self) -> int:
        return max(len(token) for token in self.tokenizer.get_vocab())

    def detokenizer(self) -> Detokenizer:
        return MlxDetokenizer(self.tokenizer.detokenizer)

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    @cached_property
    def end_token(self) -> int:
        return min(self.tokenizer.eos_token_ids)

    def insert(self, prompt: list[int], params: SamplingParams) -> int:
        from mlx_lm.sample_utils import make_logits_processors

        processors = make_logits_processors(logit_bias=params.logit_bias,
                                            presence_penalty=params.presence_penalty,
                                            frequency_penalty=params.frequency_penalty)
        constraint = self.vocabulary.constraint(params.grammar) if params.grammar else None
        if constraint is not None:  # the grammar's mask last: after bias and penalties, before sampling
            processors.append(mlx_processor(constraint))
        cache, reused = self._nearest_cache(prompt)
        [uid] = self.batch.insert([prompt[reused:]], max_tokens=[params.max_tokens], caches=[cache],
                                  all_tokens=[prompt[:reused]], samplers=[_sampler(params)],
                                  logits_processors=[processors])
        if params.logprobs:
            self.wants_logprobs[uid] = params.top_logprobs
        if constraint is not None:
            self.constraints[uid] = constraint
        self.cached[uid] = reused
        return uid

    def step(self) -> list[StepOutput]:
        outputs = []
        for response in self.batch.next_generated():
            output = StepOutput(uid=response.uid, token=response.token, finish_reason=response.finish_reason,
                                cached_tokens=self.cached.pop(response.uid, None))
            top = self.wants_logprobs.get(response.uid)
            if top is not None:
                output.logprob, output.top_logprobs = _logprobs(response.logprobs, response.token, top)
            produced = [output]
            if response.uid in self.constraints:  # its processor already consumed the token (constrained.py)
                produced = settle(self.constraints[response.uid], output, self.end_token, consumed=True)
            if response.finish_reason is not None:
                self.wants_logprobs.pop(response.uid, None)
                self.constraints.pop(response.uid, None)
                self._keep(response.all_tokens, response.prompt_cache)
            elif produced[-1].finish_reason is not None:  # its grammar ended it: out of the batch now
                self.remove([response.uid])
            outputs += produced
        return outputs

    def remove(self, uids: list[int]) -> None:
        kept = self.batch.remove(uids, return_prompt_caches=self.prompt_cache is not None)
        for cache, tokens in kept.values():
            self._keep(tokens, cache)
        for uid in uids:
            self.wants_logprobs.pop(uid, None)
            self.cached.pop(uid, None)
            self.constraints.pop(uid, None)

    def _nearest_cache(self, prompt: list[int]) -> tuple[list | None, int]:
        """The cached KV state that covers most of `prompt` (a copy: entries stay for other prompts) and how many
        tokens it covers; at least the last prompt token is always left to compute, since its logits are needed."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        if self.prompt_cache is None:
            return None, 0
        cache, rest = self.prompt_cache.fetch_nearest_cache(MODEL_KEY, prompt)
        if cache is not None and not rest:  # an exact match: step back one token
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return cache, len(prompt) - len(rest)

    def _keep(self, tokens: list[int] | None, cache: list | None) -> None:
        """A sequence's KV state, for later prompts that share a prefix of its tokens."""
        if self.prompt_cache is not None and tokens and cache:
            self.prompt_cache.insert_cache(MODEL_KEY, list(tokens), cache)

    def close(self) -> None:
        import mlx.core as mx

        self.batch.close()
        self.model = self.tokenizer = self.batch = self.prompt_cache = None
        mx.clear_cache()


MODEL_KEY = "model"  # LRUPromptCache keys entries by model too; each engine has its own cache and one model


def _sampler(params: SamplingParams):
    """Greedy at temperature 0; otherwise top-p sampling, from a private key when the request gives a seed."""
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_top_p, make_sampler

    if params.seed is None or params.temperature == 0:
        return make_sampler(temp=params.temperature, top_p=params.top_p if params.top_p < 1 else 0.0)
    key = [mx.random.key(params.seed)]

    def sample(logprobs):
        if params.top_p < 1:
            logprobs = apply_top_p(logprobs, params.top_p)
        key[0], subkey = mx.random.split(key[0])
        return mx.random.categorical(logprobs * (1 / params.temperature), key=subkey)

    return sample


def _logprobs(logprobs, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    import mlx.core as mx

    chosen = logprobs[token].item()
    if top <= 0:
        return chosen, []
    best = mx.argpartition(-logprobs, kth=top - 1)[:top]
    values = logprobs[best].tolist()
    # a grammar's mask leaves fewer than `top` tokens possible: the impossible ones are not alternatives
    return chosen, sorted(((t, v) for t, v in zip(best.tolist(), values) if v > -math.inf), key=lambda pair: -pair[1])
