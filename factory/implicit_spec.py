"""The spec `factory serve PATH` writes for a model file or folder it is given, like `ollama run`: named from the
file, built by the same flow as any spec (imported, converted, validated, published), then served as `default`.

The spec is written to `$FACTORY_ROOT/specs/<name>.yaml`, where a person can read it, edit it and rebuild it.
"""
from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

import yaml

from factory.spec import NAME_PATTERN

# The format this host serves fastest: MLX on Apple silicon, llama.cpp's GGUF elsewhere. q8_0 keeps a 4-bit source's
# quality (re-quantizing one to 4 bits fails validation) at a quarter of float32's size.
SERVED_FORMAT = ({"mlx": {"dtype": "float16"}} if platform.system() == "Darwin" and platform.machine() == "arm64"
                 else {"gguf": {"type": "q8_0"}})
# Nothing is known of an unseen model's answers: the smoke check is that it generates text at all.
SMOKE = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "expect": {"max_length": 2000}}


def model_name(path: Path) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `smollm2-135m-instruct.q4_1`."""
    stem = path.name.removesuffix(".gguf") if path.is_file() else path.name
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:64]
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"cannot name a model after {path.name!r}; give --name")
    return name


def implicit_spec(path: Path, name: str, serve: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "source": {"local": str(path.resolve())}, "formats": [SERVED_FORMAT],
            "validate": {"prompts": [SMOKE]}, "serve": serve}


def write_implicit_spec(path: Path, specs_dir: Path, name: str | None, serve: dict[str, Any]) -> Path:
    """Write the spec for `path` (replacing an earlier one of the same name) and return where it is."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    name = name or model_name(path)
    specs_dir.mkdir(parents=True, exist_ok=True)
    spec_file = specs_dir / f"{name}.yaml"
    header = f"# Written by `factory serve {path}`: edit and rebuild with `factory build {spec_file}`.\n"
    spec_file.write_text(header + yaml.safe_dump(implicit_spec(path, name, serve), sort_keys=False))
    return spec_file
