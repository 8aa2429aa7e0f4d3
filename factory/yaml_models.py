"""Read a YAML file into a pydantic model, every problem reported as `file:line: field.path: message`.

The one way the factory's YAML contracts (model specs, the server config) are read: unknown keys are errors with a
"did you mean" hint, a missing field points at its parent's line, and all problems of a file are reported at once.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from factory.yaml_lines import LocatedYaml, YamlError, load_located

Model = TypeVar("Model", bound=BaseModel)


class LocatedError(Exception):
    """Every problem in one file, each as `file:line: field.path: message`."""

    def __init__(self, path: Path, problems: list[tuple[int, str, str]]):
        self.path = path
        self.problems = problems  # (line, field path, message)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [located_message(self.path, line, field, message) for line, field, message in self.problems]


def located_message(path: Path, line: int, field: str, message: str) -> str:
    """`file:line: field.path: message`, the one shape of every contract error and warning."""
    return f"{path}:{line}: {field + ': ' if field else ''}{message}"


def read_model(model: type[Model], path: Path, error: type[LocatedError],
               shape: str) -> tuple[Model, LocatedYaml]:
    """`path` validated as `model`; `shape` tells a file that is not a mapping what it should look like."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(path, [(1, "", f"cannot read file: {exc.strerror}")]) from None
    return parse_model(model, text, path, error, shape)


def parse_model(model: type[Model], text: str, path: Path, error: type[LocatedError],
                shape: str) -> tuple[Model, LocatedYaml]:
    try:
        located = load_located(text)
    except YamlError as exc:
        raise error(path, [(exc.line, "", exc.message)]) from None
    if not isinstance(located.data, dict):
        raise error(path, [(1, "", shape)])
    try:
        return model.model_validate(located.data), located
    except ValidationError as exc:
        raise error(path, sorted(describe(problem, located, model) for problem in exc.errors())) from None


def field_path(loc: tuple) -> str:
    """("formats", 1, "mlx") -> "formats[1].mlx"."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def describe(error: dict[str, Any], located: LocatedYaml, model: type[BaseModel]) -> tuple[int, str, str]:
    loc = tuple(error["loc"])
    return located.line_of(loc), field_path(loc), message(error, model)


def message(error: dict[str, Any], model: type[BaseModel]) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        allowed = allowed_keys(model, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})")
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        # pydantic writes "Input should be 2, 3 or 4"; keep the choices, say it plainly.
        return "must be one of " + ctx.get("expected", "").replace(" or ", ", ").replace("'", "")
    if kind == "string_pattern_mismatch":
        return f"{error['input']!r} does not match {ctx.get('pattern')}"
    text = error["msg"].removeprefix("Value error, ")
    return text[0].lower() + text[1:] if text else kind


def allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a mapping at `loc` accepts, found by walking the models' field annotations."""
    found: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for name, f in found.model_fields.items() if (f.alias or name) == part), None)
        if field is None:
            return []
        found = model_in(field.annotation)
        if found is None:
            return []
    return [f.alias or name for name, f in found.model_fields.items()]


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside `X | None`, `list[X]` or `Annotated[X, ...]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = model_in(argument)
        if found is not None:
            return found
    return None


def json_schema_of(model: type[BaseModel], title: str) -> dict[str, Any]:
    """The JSON Schema editors use (yaml-language-server), for the file `model` reads."""
    schema = model.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return schema
