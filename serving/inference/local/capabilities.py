"""What a registry version can do, read from its artifact's files without loading the model: the `capabilities`
/v1/models lists, so a client (an editor's autocomplete, an agent that needs tools) can pick a model before using it.

A chat model answers chat and text completions, takes tools and structured outputs (the server constrains and
parses them for any model: `tool_template` says whether its chat template renders tools itself, `native`, or the
server's fallback prompt describes them, `fallback`), and fill-in-the-middle where its vocabulary has FIM tokens
(`fim.py`). An embedding model embeds and reranks.

The template and the control tokens come from the artifact the engine would load: a GGUF file's header
(`formats.gguf.metadata`, ~40 ms for a 49k vocabulary), or an MLX folder's tokenizer files. Versions are immutable,
so each artifact is read once per process.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from formats.gguf.files import gguf_file
from formats.gguf.metadata import GgufFormatError, read_metadata
from serving.inference.local.fim import find_fim

log = logging.getLogger("factory.serving")

CHAT = ["chat", "completions", "tools", "structured_outputs"]
EMBEDDING = ["embeddings", "rerank"]
GGUF_CONTROL_TYPES = (3, 4)  # llama.cpp's CONTROL and USER_DEFINED token types: what its tokenizer treats as markup
TOOLS_IN_TEMPLATE = re.compile(r"\btools\b")  # a template that reads the `tools` variable renders them itself


@dataclass(frozen=True)
class Traits:
    """What an artifact's tokenizer files say: the chat template (None: the engine's plain fallback) and the
    control tokens by text."""

    template: str | None = None
    control_tokens: dict[str, int] = field(default_factory=dict)


def chat_capabilities(artifact: Path | None, family: str | None) -> tuple[list[str], str]:
    """(capabilities, tool_template) of a chat model served from `artifact` (a format family's folder)."""
    traits = artifact_traits(str(artifact), family) if artifact is not None else Traits()
    fim = ["fim"] if find_fim(traits.control_tokens) else []
    native = traits.template is not None and TOOLS_IN_TEMPLATE.search(traits.template) is not None
    return CHAT + fim, "native" if native else "fallback"


@lru_cache(maxsize=256)
def artifact_traits(path: str, family: str | None) -> Traits:
    try:
        if family == "gguf":
            return gguf_traits(Path(path))
        if family == "mlx":
            return mlx_traits(Path(path))
    except (OSError, ValueError, KeyError, TypeError, GgufFormatError) as exc:  # never a failed /v1/models
        log.warning("could not read the tokenizer of %s: %s", path, exc)
    return Traits()


def gguf_traits(path: Path) -> Traits:
    meta = read_metadata(gguf_file(path), {"tokenizer.chat_template", "tokenizer.ggml.tokens",
                                           "tokenizer.ggml.token_type"})
    tokens, types = meta.get("tokenizer.ggml.tokens", []), meta.get("tokenizer.ggml.token_type", [])
    control = {tokens[i]: i for i, kind in enumerate(types) if kind in GGUF_CONTROL_TYPES and i < len(tokens)}
    return Traits(meta.get("tokenizer.chat_template"), control)


def mlx_traits(path: Path) -> Traits:
    config = _json(path / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one is the chat template
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if (path / "chat_template.jinja").is_file():  # transformers 5 writes the template beside the config
        template = (path / "chat_template.jinja").read_text()
    control = {entry["content"]: int(token) for token, entry in config.get("added_tokens_decoder", {}).items()
               if entry.get("special")}
    for entry in _json(path / "tokenizer.json").get("added_tokens", []):
        if entry.get("special"):
            control.setdefault(entry["content"], int(entry["id"]))
    return Traits(template if isinstance(template, str) else None, control)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
