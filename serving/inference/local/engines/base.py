"""The engine interface: a loaded model on one runtime, driven by the scheduler's thread.

`insert`, `step` and `remove` form a continuous batch: sequences join and leave between decode steps. They are only
ever called from the model's scheduler thread, so engines need no locking of their own.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from serving.inference.types import SamplingParams


@dataclass
class StepOutput:
    uid: int
    token: int
    # "stop" (an end-of-sequence token, or a grammar completed), "length", or "error" (the sequence alone failed:
    # `error` says why, and `token` is not part of its text); None while generating
    finish_reason: str | None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    # On a sequence's first output: how many of its prompt tokens came from the prefix cache (KV state reused)
    cached_tokens: int | None = None
    # On the first output of a step that verified draft tokens: the proposer ("ngram" or "draft"), how many tokens
    # it proposed and how many the model accepted (the acceptance rate is accepted / drafted)
    speculation: str | None = None
    drafted: int = 0
    accepted: int = 0
    error: str | None = None


@dataclass(frozen=True)
class EngineOptions:
    """What a spec's `serve` section asks of an engine beyond the model itself (engines ignore what they lack)."""

    prefix_cache: bool = True  # keep finished sequences' KV state and reuse it for prompts that share a prefix
    draft: Path | None = None  # a draft model's artifact (same vocabulary) for speculative decoding
    prompt_lookup: bool = False  # speculative decoding from n-grams of the sequence itself (no draft model)
    draft_tokens: int = 8  # most tokens proposed per sequence and step


class Detokenizer(ABC):
    @abstractmethod
    def add_token(self, token: int) -> str:
        """Feed one token; returns the text it completes (may be empty mid-character)."""

    @abstractmethod
    def finalize(self) -> str:
        """Text still held back at the end."""


class Engine(ABC):
    family: str  # the registry format family it serves: mlx, gguf, ...
    name: str  # what /v1/models calls it: mlx, llamacpp
    supports_penalties: bool = False
    supports_logprobs: bool = False

    @classmethod
    @abstractmethod
    def load(cls, path: Path, max_batch: int, context_length: int,
             options: EngineOptions = EngineOptions()) -> "Engine":
        ...

    # The chat template's source text (what `tools.py` reads to pick the tool-call family); "" when unknown
    chat_template: str = ""

    @abstractmethod
    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The prompt of `messages` through the model's chat template; `tools` (OpenAI's function tool shape) are
        given to the template only by callers that know the template renders them (`tools.py`)."""

    @abstractmethod
    def encode(self, text: str, *, special: bool = True, at_start: bool = True) -> list[int]:
        """Token ids of `text`. `special`: the text of a control token (`<|im_end|>`) becomes that token (for the
        template's own markup); otherwise it is ordinary text (for anything a client wrote in a message).
        `at_start`: the text begins the sequence (a BOS token is added where the model wants one)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Token ids run from 0 to vocab_size - 1."""

    @property
    @abstractmethod
    def special_texts(self) -> frozenset[str]:
        """The texts of the vocabulary's control tokens."""

    @property
    @abstractmethod
    def max_token_chars(self) -> int:
        """No token decodes to more characters than this: a cheap lower bound on a text's token count."""

    @abstractmethod
    def detokenizer(self) -> Detokenizer:
        ...

    @abstractmethod
    def token_text(self, token: int) -> str:
        ...

    @abstractmethod
    def insert(self, prompt: list[int], params: SamplingParams) -> int:
        """Add a sequence to the batch; returns its uid."""

    @abstractmethod
    def step(self) -> list[StepOutput]:
        """One decode step for every sequence in the batch (prompt processing happens inside). A sequence may
        yield several tokens in one step when speculative decoding accepted drafted ones."""

    @abstractmethod
    def remove(self, uids: list[int]) -> None:
        ...

    @abstractmethod
    def close(self) -> None:
        ...
