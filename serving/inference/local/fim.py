"""Fill-in-the-middle: a text completion with a `suffix`, served by the model's own FIM control tokens.

Code models are trained on documents cut into prefix, suffix and middle and joined by three control tokens; asked
with the prefix and suffix in that form, they write the middle. The spellings differ by family, so they are found in
the vocabulary's control tokens (`find_fim`), from the loaded engine or, for /v1/models, from the artifact's files.

The prompt is built as llama-server's infill builds it (prefix-suffix-middle order): `[BOS] PRE prefix SUF suffix
MID`. The client's prefix and suffix are tokenized as plain text, so a `<fim_middle>` written in a file is text,
never the marker (the rule `prompts.py` keeps for chat messages). A model without FIM tokens refuses a suffix with a
400 (`fim_not_supported`); an empty suffix there is an ordinary completion, since nothing follows the cursor.

The middle ends at the end-of-text token, or at the family's file separator or padding token (where a model trained
on repositories goes on with the next file); the scheduler stops a sequence on those (`SamplingParams.stop_tokens`).
"""
from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serving.inference.local.engines.base import Engine
from serving.inference.types import InvalidRequest

# (prefix, suffix, middle) per family; the order of a family's end tokens does not matter
FAMILIES = [
    (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder, StarCoder2
     ("<|endoftext|>", "<file_sep>", "<fim_pad>")),
    (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, CodeGemma
     ("<|endoftext|>", "<|file_sep|>", "<|fim_pad|>", "<|file_separator|>", "<|repo_name|>")),
    (("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),  # Granite code models
     ("<|endoftext|>", "<fim-pad>")),
    (("<PRE>", "<SUF>", "<MID>"),  # CodeLlama (its tokens are spelled "▁<PRE>" in the vocabulary)
     ("<EOT>", "</s>")),
    (("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
     ("<｜end▁of▁sentence｜>", "<|EOT|>")),
]


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    suffix: int
    middle: int
    stops: tuple[int, ...]  # the family's end tokens this vocabulary has, and the three markers themselves


def find_fim(control_tokens: Mapping[str, int]) -> FimTokens | None:
    """The FIM tokens of a vocabulary, given its control tokens' texts and ids; None when it has none."""
    spelled = {_plain(text): token for text, token in control_tokens.items()}
    for markers, ends in FAMILIES:
        if all(marker in spelled for marker in markers):
            prefix, suffix, middle = (spelled[marker] for marker in markers)
            stops = {spelled[end] for end in ends if end in spelled} | {prefix, suffix, middle}
            return FimTokens(prefix, suffix, middle, tuple(sorted(stops)))
    return None


def _plain(text: str) -> str:
    # SentencePiece vocabularies (CodeLlama) spell the markers after a word-boundary mark: "▁<PRE>", " <PRE>"
    return text.lstrip("▁ ") if text.lstrip("▁ ").startswith("<") else text


_found: weakref.WeakKeyDictionary[Engine, FimTokens | None] = weakref.WeakKeyDictionary()


def engine_fim(engine: Engine) -> FimTokens | None:
    """The loaded model's FIM tokens (looked up once per engine: a few encodes per control token)."""
    if engine not in _found:
        _found[engine] = find_fim(dict(_control_tokens(engine, engine.special_texts)))
    return _found[engine]


def _control_tokens(engine: Engine, texts: Iterable[str]) -> Iterable[tuple[str, int]]:
    for text in texts:
        if not _plain(text).startswith("<"):
            continue  # every FIM and end marker is spelled in angle brackets: skip the rest of a large vocabulary
        tokens = engine.encode(text, special=True, at_start=False)
        if len(tokens) == 1:
            yield text, tokens[0]


def fim_prompt(engine: Engine, prefix: str, suffix: str) -> list[int] | None:
    """The prompt tokens that ask for the middle between `prefix` and `suffix`; None when the model has no FIM tokens
    and the suffix is empty (an ordinary completion); InvalidRequest when it has none and the suffix is not empty."""
    fim = engine_fim(engine)
    if fim is None:
        if not suffix:
            return None
        raise InvalidRequest("this model has no fill-in-the-middle tokens in its vocabulary, so it cannot complete "
                             "between a prompt and a suffix (code models such as StarCoder, Qwen2.5-Coder, CodeLlama "
                             "or DeepSeek-Coder have them; GET /v1/models lists `fim` in their capabilities)",
                             param="suffix", code="fim_not_supported")
    start = engine.encode("", special=True, at_start=True)  # the BOS token where the model wants one
    return (start + [fim.prefix] + engine.encode(prefix, special=False, at_start=False)
            + [fim.suffix] + engine.encode(suffix, special=False, at_start=False) + [fim.middle])


def fim_stop_tokens(engine: Engine) -> tuple[int, ...]:
    fim = engine_fim(engine)
    return fim.stops if fim is not None else ()
