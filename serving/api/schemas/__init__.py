"""Request bodies (and query strings) per wire API, validated by pydantic; a violation becomes a 400 whose `param`
names the field as the client wrote it (`messages[0].role`, `stream_options.include_usage`). Response bodies are
described in `responses.py`. The OpenAPI document is generated from both (serving/api/openapi.py)."""
from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from serving.api.errors import APIError, invalid


class Lenient(BaseModel):
    """Unknown fields are accepted and ignored, as OpenAI-compatible servers commonly do (clients such as Continue
    send their own extras); known features this server does not implement are refused with a 400, never ignored."""

    model_config = ConfigDict(extra="ignore")


Body = TypeVar("Body", bound=BaseModel)


async def read_json(req, model: type[Body]) -> Body:
    """The request body decoded and validated off the event loop: a body of megabytes or of thousands of messages
    takes its time in a worker thread while the loop keeps serving other clients."""
    raw = await req.stream.read()
    return await asyncio.to_thread(decode_and_parse, model, raw)


def decode_and_parse(model: type[Body], raw: bytes) -> Body:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8 and nesting deeper than 1024
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    return parse(model, body)


def parse_query(req, model: type[Body]) -> Body:
    """The query string's parameters that `model` declares, validated like a body (others are ignored)."""
    return parse(model, {name: req.params[name] for name in model.model_fields if name in req.params})


def parse(model: type[Body], body: Any) -> Body:
    """Validate a request body; the first problem becomes a 400 whose `param` names the field."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = _most_telling(exc.errors(include_url=False))
        message = error["msg"].removeprefix("Value error, ")
        path = param_path(body, error["loc"])
        field, colon, rest = message.partition(": ")
        if path is None and colon and " " not in field:  # model-level checks phrase themselves as "field: reason"
            raise APIError(400, rest, param=field) from None
        raise APIError(400, f"{path}: {message}" if path else message, param=path) from None


def _most_telling(errors: list[dict]) -> dict:
    """The first error, unless it only says a union member's type is not the one sent (`["a", ""]` for `str |
    list[str]` is not a string): then the first that says what is wrong with what was sent (an empty stop string)."""
    return next((e for e in errors if not (e["type"].endswith("_type") or e["type"] == "none_required")), errors[0])


def param_path(body: Any, loc: tuple) -> str | None:
    """The error location as a client path. Pydantic's `loc` also names the union member it tried (`str`,
    `list[str]`, `function-after[...]`); only steps that exist in the body are the client's."""
    path, node = "", body
    for step in loc:
        if isinstance(node, dict) and isinstance(step, str) and step in node:
            path, node = f"{path}.{step}", node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            path, node = f"{path}[{step}]", node[step]
        elif isinstance(node, dict) and isinstance(step, str) and not _is_union_tag(step):
            path, node = f"{path}.{step}", None  # a missing required field
    return path.lstrip(".") or None


def _is_union_tag(step: str) -> bool:
    return step in {"str", "int", "float", "bool", "list", "dict", "none", "literal"} or any(
        step.startswith(prefix) for prefix in ("list[", "dict[", "function-", "constrained-", "literal[",
                                               "json-or-python", "lax-", "nullable[", "tagged-union["))
