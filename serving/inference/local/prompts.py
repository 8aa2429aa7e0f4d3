"""A request's prompt as tokens: refuse what cannot fit before any work, and keep a client's text out of the
model's control tokens.

Rendering a chat template and tokenizing cost time in the size of the request (llama.cpp's tokenizer is quadratic in
the number of special tokens), so a request that cannot fit the context is refused from cheap counts first: every
message adds at least one token, and no token covers more than `max_token_chars` characters.

Only the chat template's own markup may produce control tokens. When a message's text contains a control token's
text (`<|im_end|>`), the template is rendered with placeholders, its markup tokenized with control tokens and each
message's text as plain text. Requests without such text are tokenized whole, exactly as the template renders.
"""
from __future__ import annotations

from collections.abc import Callable

from serving.inference.local.engines.base import Engine
from serving.inference.local.fim import fim_prompt
from serving.inference.types import GenerateRequest, InvalidRequest

PLACEHOLDER = "\ue000{}\ue001"  # private-use characters: no template or client text holds them by accident


def prompt_tokens(engine: Engine, request: GenerateRequest, context_length: int,
                  render: Callable[[list[dict]], str] | None = None) -> list[int]:
    """`render`: how messages become the prompt's text (default: the chat template alone; `tools.py` passes one
    that gives the template the request's tools)."""
    refuse_what_cannot_fit(engine, request, context_length)
    infill = None if request.suffix is None else fim_prompt(engine, request.prompt or "", request.suffix)
    if infill is not None:
        tokens = infill  # fill-in-the-middle (fim.py): the client's prefix and suffix as plain text
    elif request.messages is None:
        # A raw prompt is the client's own template: its control tokens are meant (as llama-server and vLLM read it)
        tokens = engine.encode(request.prompt or "")
    else:
        tokens = chat_tokens(engine, request.messages, render or engine.render_chat)
    if not tokens:
        raise InvalidRequest(f"{request.input_param} must not be empty", param=request.input_param)
    return tokens


def refuse_what_cannot_fit(engine: Engine, request: GenerateRequest, context_length: int) -> None:
    texts = ([m["content"] for m in request.messages] if request.messages is not None
             else [request.prompt or "", request.suffix or ""])
    least = max(len(texts) if request.messages is not None else 0,
                sum(len(text) for text in texts) // max(engine.max_token_chars, 1))
    if least >= context_length:
        raise InvalidRequest(f"the {request.input_param} cannot fit: at least {least} tokens, and this model's context "
                             f"length is {context_length}", param=request.input_param, code="context_length_exceeded")


def chat_tokens(engine: Engine, messages: list[dict], render: Callable[[list[dict]], str]) -> list[int]:
    specials = engine.special_texts
    if not any(special in message["content"] for message in messages for special in specials):
        return engine.encode(render(messages))
    placeholders = [PLACEHOLDER.format(index) for index in range(len(messages))]
    rest = render([{**message, "content": p} for message, p in zip(messages, placeholders)])
    tokens: list[int] = []
    for index, (message, placeholder) in enumerate(zip(messages, placeholders)):
        markup, found, rest = rest.partition(placeholder)
        if not found:
            raise InvalidRequest(f"messages[{index}] contains the text of a control token, and this model's chat "
                                 "template does not keep message text as written, so it cannot be sent safely",
                                 param=f"messages[{index}].content")
        tokens += engine.encode(markup, at_start=not tokens)
        tokens += engine.encode(message["content"], special=False, at_start=not tokens)
    return tokens + engine.encode(rest, at_start=not tokens)
