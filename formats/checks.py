"""The vocabulary of validation reports: a named check with its verdict, a gate (a measured value against a
threshold), and what an expectation asks of a text."""
from __future__ import annotations

import re
from typing import Any, Literal

from factory.spec import Expect


def check(name: str, passed: bool, value: Any = None, detail: str = "") -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "value": value, "detail": detail}


def gate(name: str, value: float, bound: Literal["min", "max"], threshold: float | None,
         detail: str = "") -> dict[str, Any]:
    """A check of a measured value against a threshold, recorded with both and the direction (`bound`), so a
    failure can say `argmax_agreement 0.42 < min 0.6` (`tasks.validate.failures`). No threshold: the value is
    recorded and passes."""
    if threshold is None:
        return check(name, True, value, detail)
    # Written so that a NaN measurement fails either way.
    passed = value >= threshold if bound == "min" else value <= threshold
    return {**check(name, passed, value, detail), "bound": bound, "threshold": threshold}


def expectation_failure(text: str, expect: Expect | None) -> str | None:
    """Why `text` does not meet `expect`, or None when it does."""
    if expect is None:
        return None
    if expect.contains is not None and expect.contains not in text:
        return f"expected the answer to contain {expect.contains!r}"
    if expect.regex is not None and not re.search(expect.regex, text):
        return f"expected the answer to match /{expect.regex}/"
    if expect.max_length is not None and len(text) > expect.max_length:
        return f"expected at most {expect.max_length} characters, got {len(text)}"
    return None
