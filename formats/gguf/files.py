"""Where a GGUF artifact's file is. Stdlib only, so the server can import it without pulling in `gguf` or numpy."""
from __future__ import annotations

from pathlib import Path


def gguf_file(path: Path | str) -> Path:
    """The model file of a GGUF artifact: `path` itself when it is a file, else the one `*.gguf` in the directory."""
    path = Path(path)
    if path.is_file():
        return path
    files = sorted(path.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"{path} should hold exactly one .gguf file, found {len(files)}")
    return files[0]
