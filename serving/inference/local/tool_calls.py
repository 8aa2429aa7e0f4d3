"""Tool calls read out of a sequence's generated text as it streams: the call markup is withheld from the text and
each whole call becomes a `ToolCallEvent` (id `call_<random>`); a sequence that made calls ends with finish_reason
"tool_calls".

- `TagParser` (hermes and fallback families): text outside `<tool_call>...</tool_call>` streams as it comes (only
  what might be the start of the tag is held back); each tag's JSON (an object, or a list of them) is calls.
  Whitespace between calls is dropped. A tag whose content is not a call is released as the text it was.
- `WholeMessageParser` (llama3, mistral): those families write a call as the whole message, so a message that starts
  like a call (`{`, `<|python_tag|>`, `[TOOL_CALLS]`, `[{`) is held until the sequence ends and then read; a message
  that starts otherwise streams at once, and one that looked like a call but is not is released whole at the end.
"""
from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from serving.inference.types import DoneEvent, Event, TokenEvent, ToolCall, ToolCallEvent

OPEN, CLOSE = "<tool_call>", "</tool_call>"
Item = str | ToolCall  # what a parser yields: text to stream, or a whole call


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def calls_in(value: Any, arguments_keys: tuple[str, ...] = ("arguments", "parameters")) -> list[ToolCall] | None:
    """The calls a decoded JSON value holds ({"name", "arguments"} or a list of them), None if it holds none."""
    entries = value if isinstance(value, list) else [value]
    calls = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            return None
        arguments = next((entry[key] for key in arguments_keys if key in entry), {})
        if isinstance(arguments, str):  # some models write the arguments' JSON as a string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(ToolCall(new_call_id(), entry["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


class TagParser:
    def __init__(self) -> None:
        self.pending = ""  # text not yet released: a possible tag start, or whitespace that may precede a call
        self.inside: str | None = None  # the content of an open tag
        self.gap = ""  # whitespace before the open tag
        self.made_calls = False

    def feed(self, text: str) -> list[Item]:
        items: list[Item] = []
        self.pending += text
        while True:
            if self.inside is None:
                start = self.pending.find(OPEN)
                if start < 0:
                    # hold back what may start a tag, and whitespace that may only separate calls
                    cut = len(self.pending) - held_back(self.pending, OPEN)
                    if cut:
                        items.append(self.pending[:cut])
                    self.pending = self.pending[cut:]
                    return items
                before = self.pending[:start]
                self.gap = before[len(before.rstrip()):]  # dropped if a call follows, else text again
                if before.strip():
                    items.append(before.rstrip())
                self.inside, self.pending = "", self.pending[start + len(OPEN):]
            end = self.pending.find(CLOSE)
            if end < 0:
                return items
            content, self.pending, self.inside = self.pending[:end], self.pending[end + len(CLOSE):], None
            calls = calls_in(decoded(content.strip()))
            if calls is None:
                items.append(self.gap + OPEN + content + CLOSE)
            else:
                self.made_calls = True
                items.extend(calls)

    def finish(self) -> list[Item]:
        rest, self.pending = self.pending, ""
        if self.inside is not None:  # an unclosed tag: a call if its content is one (a model that stopped early)
            self.inside = None
            calls = calls_in(decoded(rest.strip()))
            if calls is not None:
                self.made_calls = True
                return list(calls)
            return [self.gap + OPEN + rest]
        return [rest] if rest.strip() or (rest and not self.made_calls) else []


def held_back(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `marker`, plus any whitespace before it."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size + len(text[:-size]) - len(text[:-size].rstrip())
    return len(text) - len(text.rstrip())


CALL_STARTS = ("{", "<|python_tag|>", "[TOOL_CALLS]", "[{")


class WholeMessageParser:
    def __init__(self, family: str):
        self.family = family
        self.text = ""
        self.holding: bool | None = None  # None until the message's first non-blank characters decide
        self.made_calls = False

    def feed(self, text: str) -> list[Item]:
        self.text += text
        if self.holding is None:
            start = self.text.lstrip()
            if not start:
                return []
            if any(start.startswith(marker) for marker in CALL_STARTS):
                self.holding = True
            elif any(marker.startswith(start) for marker in CALL_STARTS):
                return []  # still undecided: it may become a marker
            else:
                self.holding = False
        if self.holding:
            return []
        out, self.text = self.text, ""
        return [out]

    def finish(self) -> list[Item]:
        text, self.text = self.text, ""
        if not self.holding and self.holding is not None:
            return [text] if text else []
        body = text.strip()
        for marker in ("<|python_tag|>", "[TOOL_CALLS]"):
            body = body.removeprefix(marker).strip()
        calls = calls_in(decoded(body))
        if calls is None and self.family == "llama3":  # several calls, one per line or separated by ";"
            parts = [decoded(part) for part in body.replace(";", "\n").splitlines() if part.strip()]
            found = [calls_in(part) for part in parts]
            calls = [call for group in found for call in group] if parts and all(found) else None
        if calls is None:
            return [text] if text else []
        self.made_calls = True
        return list(calls)


def parser_for(family: str) -> TagParser | WholeMessageParser:
    return WholeMessageParser(family) if family in ("llama3", "mistral") else TagParser()


async def with_tool_calls(events: AsyncIterator[Event | None], family: str,
                          max_calls: int | None = None) -> AsyncIterator[Event | None]:
    """A request's events with each sequence's tool calls read out of its text; past `max_calls` a sequence's
    further calls are dropped (parallel_tool_calls false: at most one)."""
    parsers: dict[int, TagParser | WholeMessageParser] = {}
    calls_made: dict[int, int] = {}
    async for event in events:
        if event is None or isinstance(event, ToolCallEvent):
            yield event
            continue
        parser = parsers.setdefault(event.index, parser_for(family))
        items = parser.feed(event.text) if isinstance(event, TokenEvent) else parser.finish()
        text = "".join(item for item in items if isinstance(item, str))
        if isinstance(event, TokenEvent):
            if text or event.logprob is not None or event.cached_tokens is not None:
                yield replace(event, text=text)  # logprobs and counts stay on their token
        elif text:
            yield TokenEvent(event.index, text, completion_tokens=event.completion_tokens)
        for call in (item for item in items if isinstance(item, ToolCall)):
            number = calls_made.get(event.index, 0)
            if max_calls is not None and number >= max_calls:
                continue
            calls_made[event.index] = number + 1
            yield ToolCallEvent(event.index, number, call, completion_tokens=event.completion_tokens,
                                cached_tokens=event.cached_tokens)
        if isinstance(event, DoneEvent):
            made = calls_made.get(event.index, 0) > 0
            yield replace(event, finish_reason="tool_calls") if made and event.finish_reason == "stop" else event
