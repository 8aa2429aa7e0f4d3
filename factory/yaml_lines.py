"""Load YAML while remembering the line of every key, so errors can point at `file:line`.

PyYAML's composer keeps source marks on nodes; we walk the node tree ourselves, build plain Python data and a map
from field path (e.g. ("formats", 1, "mlx", "bits")) to the 1-based line where that field is written.
Duplicate keys are an error here, where PyYAML would silently keep the last one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


class YamlError(Exception):
    """A YAML document that cannot be read; carries the 1-based line of the problem."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass
class LocatedYaml:
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int:
        """Line of the deepest written ancestor of `path` (a missing field points at its parent)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1


def load_located(text: str) -> LocatedYaml:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlError(mark.line + 1 if mark else 1, f"YAML syntax error: {exc.problem or exc}") from None
    if root is None:
        return LocatedYaml(data=None, lines={(): 1})
    located = LocatedYaml(data=None, lines={(): root.start_mark.line + 1})
    located.data = _build(root, (), located.lines, yaml.constructor.SafeConstructor())
    return located


def _build(node: yaml.Node, path: Path_, lines: dict[Path_, int], scalars: yaml.constructor.SafeConstructor) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError(key_node.start_mark.line + 1, "a key must be a plain value")
            key = scalars.construct_object(key_node)
            if key in out:
                raise YamlError(key_node.start_mark.line + 1, f"duplicate key {key!r}")
            child = (*path, key)
            lines[child] = key_node.start_mark.line + 1
            out[key] = _build(value_node, child, lines, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item_node in enumerate(node.value):
            child = (*path, index)
            lines[child] = item_node.start_mark.line + 1
            items.append(_build(item_node, child, lines, scalars))
        return items
    # PyYAML's own constructor turns resolved scalars into ints, floats, bools and nulls.
    return scalars.construct_object(node)
