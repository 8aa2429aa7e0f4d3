"""Fine-tuning data: JSONL in one of mlx-lm's three shapes, checked line by line before anything trains on it.

    chat         {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
    completions  {"prompt": "...", "completion": "..."}
    text         {"text": "..."}

Every line of a file must have the same shape. Problems are reported with their 1-based line number, so both the
pipeline and the server's `/v1/files` upload can say exactly what is wrong.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

ROLES = {"system", "developer", "user", "assistant", "tool"}


class TrainingDataError(Exception):
    def __init__(self, name: str, problems: list[tuple[int, str]]):
        self.name = name
        self.problems = problems
        super().__init__("\n".join(f"{name}:{line}: {message}" for line, message in problems))


@dataclass
class TrainingData:
    shape: str  # chat | completions | text
    examples: list[dict] = field(default_factory=list)

    def to_jsonl(self) -> str:
        return "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in self.examples)


def parse_training_jsonl(text: str, name: str = "data.jsonl", max_problems: int = 20) -> TrainingData:
    """Parse and check a JSONL training file; raises TrainingDataError listing (line, problem) pairs."""
    problems: list[tuple[int, str]] = []
    examples: list[dict] = []
    shape = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((number, f"not valid JSON: {exc.msg} (column {exc.colno})"))
        except RecursionError:
            problems.append((number, "not valid training data: JSON nested too deeply"))
        else:
            row_shape, problem = _shape_of(row)
            shape = shape or (row_shape if not problem else None)
            if problem:
                problems.append((number, problem))
            elif row_shape != shape:
                problems.append((number, f"a {row_shape} example in a file of {shape} examples"))
            else:
                examples.append(row)
        if len(problems) >= max_problems:
            break
    if not problems and not examples:
        problems.append((1, "the file holds no examples"))
    if problems:
        raise TrainingDataError(name, problems)
    return TrainingData(shape=shape, examples=examples)


def _shape_of(row) -> tuple[str | None, str | None]:
    if not isinstance(row, dict):
        return None, "each line must be a JSON object"
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return "chat", "'messages' must be a non-empty list"
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return "chat", f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}"
            if not isinstance(message.get("content"), str):
                return "chat", f"messages[{index}].content must be a string"
        if not any(m["role"] == "assistant" for m in messages):
            return "chat", "a chat example needs at least one assistant message to learn from"
        return "chat", None
    if "prompt" in row or "completion" in row:
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            return "completions", "'prompt' and 'completion' must both be strings"
        return "completions", None
    if "text" in row:
        return ("text", None) if isinstance(row["text"], str) else ("text", "'text' must be a string")
    return None, "expected 'messages', 'prompt' + 'completion', or 'text'"


def split_train_valid(data: TrainingData, valid_fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """Hold out a deterministic share (at least one example) for validation; needs two or more examples."""
    if len(data.examples) < 2:
        raise TrainingDataError("training data", [(1, "need at least 2 examples to hold some out for validation")])
    order = list(range(len(data.examples)))
    random.Random(seed).shuffle(order)
    held = max(1, round(len(order) * valid_fraction))
    valid = sorted(order[:held])
    return [data.examples[i] for i in sorted(order[held:])], [data.examples[i] for i in valid]
