"""formats/ keeps its arrow: it imports factory/ and libraries, never the steps, the flows, the server or Prefect;
and the GGUF file helper the server may use stays stdlib only."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from formats.gguf.files import gguf_file
from tests.test_layers import imports

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("tasks", "flows", "serving", "prefect")


def test_formats_never_import_tasks_flows_serving_or_prefect():
    reaching = {str(p.relative_to(ROOT)): sorted(m for m in imports(p) if m.split(".")[0] in FORBIDDEN)
                for p in (ROOT / "formats").rglob("*.py")}
    assert {path: modules for path, modules in reaching.items() if modules} == {}


def test_the_gguf_file_helper_loads_no_heavy_module(tmp_path):
    (tmp_path / "model-q4_0.gguf").write_bytes(b"GGUF")
    code = ("import sys; from formats.gguf.files import gguf_file; "
            f"print(gguf_file({str(tmp_path)!r}).name); "
            "print(sorted(m for m in ('numpy', 'gguf', 'mlx', 'torch', 'prefect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["model-q4_0.gguf", "[]"]


def test_gguf_file_wants_exactly_one_file_in_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="found 0"):
        gguf_file(tmp_path)
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert gguf_file(tmp_path) == gguf_file(tmp_path / "a.gguf") == tmp_path / "a.gguf"
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match="found 2"):
        gguf_file(tmp_path)
