"""Constrained decoding with llguidance: grammars that every generated token must keep a sequence inside.

- Grammar builders (`json_object_grammar`, `json_schema_grammar`, `lark_grammar`) turn a request's output format
  or a forced tool call into the llguidance grammar text `SamplingParams.grammar` carries. They compile and check
  the grammar without a model, so a grammar llguidance refuses is an `InvalidRequest` (a 400) before anything is
  queued.
- `Vocabulary`: a model's tokens as llguidance sees them (an `LLTokenizer`, built once per loaded model, lazily on
  its first constrained request: up to ~1 s, so unconstrained loading costs nothing).
- `Constraint`: one sequence's matcher. Before sampling, `allowed(width)` is the token mask (a boolean row as wide
  as the logits: padded rows past the tokenizer's vocabulary are never allowed); after sampling, `consume(token)` advances it; `done` says the grammar is complete, so the engine
  ends the sequence ("stop") instead of letting it run to max_tokens. A matcher that errs (no token can continue,
  a token it refuses) raises `ConstraintError`, and the engine ends that sequence alone with an error.

JSON is generated compactly (`", "` and `": "` separators, no free whitespace): with free whitespace a weak model
can emit blanks until max_tokens and never close the object.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from serving.inference.types import InvalidRequest

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ConstraintError(Exception):
    """A sequence's grammar cannot continue (the matcher is in an error state): the sequence ends with an error."""


# ------------------------------------------------------------ grammars


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
    return json_schema_grammar({"type": "object"}, strict=True)


def json_schema_grammar(schema: dict[str, Any], strict: bool, param: str = "response_format") -> str:
    """Output that validates against `schema`. `strict`: a keyword llguidance does not implement is an error
    (the output could otherwise break it); not strict: such keywords are ignored and the rest is enforced."""
    from llguidance import LLMatcher

    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=param, code="invalid_schema")
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides={**JSON_STYLE, "lenient": not strict})
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"the JSON schema cannot be used: {exc}", param=param, code="invalid_schema") from None
    return _checked(grammar, "the JSON schema cannot be used for constrained decoding", param)


def lark_grammar(text: str, param: str = "grammar") -> str:
    """Output in the language of a Lark grammar (llguidance's dialect: `start` is the top rule)."""
    from llguidance import LLMatcher

    return _checked(LLMatcher.grammar_from_lark(text), "the grammar cannot be used", param)


def _checked(grammar: str, what: str, param: str) -> str:
    from llguidance import LLMatcher

    failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise InvalidRequest(f"{what}: {messages[0].strip()}", param=param, code="invalid_schema")
    return grammar


# ------------------------------------------------------------ per model


class Vocabulary:
    """A loaded model's llguidance tokenizer, made on first use by `build` (which can take about a second)."""

    def __init__(self, build: Callable[[], Any]):
        self.build = build
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.build()
        return self._tokenizer

    def constraint(self, grammar: str) -> "Constraint":
        return Constraint(self, grammar)


def llamacpp_tokenizer(vocab, n_vocab: int, end_tokens: Iterable[int]):
    """llguidance's tokenizer for a llama.cpp vocabulary (`llama_model_get_vocab`); every end-of-generation
    token ends a grammar (not only the vocabulary's EOS: chat models end turns with their own token)."""
    from llguidance.llamacpp import lltokenizer_from_vocab

    with warnings.catch_warnings():  # it calls llama_token_get_attr, which llama-cpp-python now calls deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(vocab, n_vocab=n_vocab, eos_token=sorted(end_tokens))


def hf_tokenizer(tokenizer, end_tokens: Iterable[int]):
    """llguidance's tokenizer for a Hugging Face fast tokenizer (what mlx-lm's wrapper holds)."""
    from llguidance.hf import from_tokenizer

    return from_tokenizer(tokenizer, eos_token=sorted(end_tokens))


# ------------------------------------------------------------ per sequence


class Constraint:
    """One sequence's place in its grammar."""

    def __init__(self, vocabulary: Vocabulary, grammar: str):
        from llguidance import LLMatcher

        tokenizer = vocabulary.tokenizer
        self.matcher = LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise InvalidRequest(f"the grammar cannot be used: {self.matcher.get_error()}", param="response_format",
                                 code="invalid_schema")
        self.tokens = tokenizer.vocab_size  # tokens the matcher knows: ids from 0
        self.bits = np.zeros((self.tokens + 31) // 32, dtype=np.int32)
        self.error: str | None = None

    @property
    def done(self) -> bool:
        """The grammar is complete: no token but the end of the sequence could follow."""
        return self.matcher.is_stopped()

    def allowed(self, width: int) -> np.ndarray:
        """The tokens that keep the sequence in its grammar, as a boolean row `width` wide (the logits')."""
        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        self._check()
        allowed = np.unpackbits(self.bits.view(np.uint8), bitorder="little", count=min(self.tokens, width))
        if width > allowed.shape[0]:
            allowed = np.concatenate([allowed, np.zeros(width - allowed.shape[0], dtype=np.uint8)])
        if not allowed.any():
            self._fail("no token of this vocabulary can continue the grammar")
        return allowed.view(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of a logits row with every token outside the grammar at -inf."""
        return np.where(self.allowed(logits.shape[-1]), logits, -np.inf).astype(logits.dtype, copy=False)

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            self._check()
            self._fail(f"token {token} does not continue the grammar")

    def _check(self) -> None:
        if self.matcher.is_error():
            self._fail(self.matcher.get_error())

    def _fail(self, message: str) -> None:
        self.error = self.error or f"constrained decoding failed: {message}"
        raise ConstraintError(self.error)
