"""One value, one place: the fine-tune methods, the default context length and the server's command line are each
defined once and used from there (they were copied into four, six and four modules)."""
from __future__ import annotations

import re
from pathlib import Path

from factory.cli import build_parser
from factory.services import SERVER_COMMAND
from factory.spec import FINE_TUNE_METHODS, Serve
from serving.api.schemas.fine_tuning import Hyperparameters

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("factory", "flows", "tasks", "formats", "serving", "bench", "tests")
           for p in (ROOT / folder).rglob("*.py") if p != Path(__file__)]


def defining(pattern: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in SOURCES if re.search(pattern, p.read_text()))


def test_each_value_is_written_once():
    assert defining(r'"lora",\s*"dora"') == ["factory/spec.py"]
    assert defining(r"gunicorn_conf\.py") == ["factory/services.py"]
    # the serving default context length lives in the spec's Serve model; serving reads it from there
    assert defining(r"or 4096\b|context_length: [^\n]*= 4096\b") == ["factory/spec.py"]


def test_every_consumer_offers_exactly_the_spec_methods():
    assert Hyperparameters.model_json_schema()["properties"]["method"]["anyOf"][0]["enum"] == list(FINE_TUNE_METHODS)
    finetune = build_parser()._subparsers._group_actions[0].choices["finetune"]
    method = next(action for action in finetune._actions if action.dest == "method")
    assert tuple(method.choices) == FINE_TUNE_METHODS
    assert SERVER_COMMAND[-1] == "serving.asgi:app" and Serve().context_length > 0
