"""The rooms keep their arrows: the API layer sees only the inference layer's types and protocols, the inference
layer never sees Falcon, and every module in tasks/ is a Prefect task (format libraries live in formats/)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names, as written)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_api_layer_imports_only_types_and_the_handle_protocol_from_inference():
    allowed = {"serving.inference.types", "serving.inference.handle"}
    reaching = {str(p.relative_to(ROOT)): sorted(m for m in imports(p) if m.startswith("serving.inference")
                                                 and m not in allowed)
                for p in (ROOT / "serving" / "api").rglob("*.py")}
    assert {path: modules for path, modules in reaching.items() if modules} == {}


def test_the_inference_layer_never_imports_falcon():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "serving" / "inference").rglob("*.py")
                 if any(m == "falcon" or m.startswith("falcon.") for m in imports(p))]
    assert offenders == []


def test_every_module_in_tasks_defines_a_prefect_task():
    modules = [p for p in (ROOT / "tasks").glob("*.py") if p.name != "__init__.py"]
    assert modules and [str(p.relative_to(ROOT)) for p in modules if "@task" not in p.read_text()] == []
