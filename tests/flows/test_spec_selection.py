"""Which specs a command sees (one rule, `discover_specs`) and which of them build_all counts as up to date (only
build input counts). No Prefect server: the commands' own functions run with the flow bodies called directly."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from types import SimpleNamespace

import yaml

from factory import cli
from factory.registry import Registry
from factory.spec import discover_specs, load_spec
from flows import build, commands
from tasks.download import source_revision
from tasks.publish import latest_matching
from tests.flows.helpers import write_spec

ROOT = Path(__file__).resolve().parents[2]


def spy_on_discovery(module, monkeypatch, calls: list[str]) -> None:
    """Record that `module` asked discover_specs (each command must, rather than globbing on its own)."""
    real = module.discover_specs

    def recorded(paths):
        calls.append(module.__name__)
        return real(paths)

    monkeypatch.setattr(module, "discover_specs", recorded)


def test_spec_check_build_all_and_deploy_see_the_same_specs(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "prefect.yaml", project / "prefect.yaml")  # deploy starts from the project's deployments
    specs = project / "specs"
    for place in ("top", "sub/nested", "examples/hub", "sub/examples/deep"):
        write_spec(specs / Path(place).parent, {"name": Path(place).name, "source": {"local": "model"},
                                                "formats": [{"mlx": {"dtype": "float16"}}], "schedule": "0 3 * * *"})
    expected = [specs / "sub" / "nested.yaml", specs / "top.yaml"]
    assert discover_specs([specs]) == expected
    calls: list[str] = []

    spy_on_discovery(cli, monkeypatch, calls)  # factory spec check
    assert cli.spec_check(argparse.Namespace(paths=[str(specs)])) == 0
    checked = [Path(line.rsplit(": ok", 1)[0]) for line in capsys.readouterr().out.splitlines()]

    spy_on_discovery(build, monkeypatch, calls)  # factory build --all
    built: list[Path] = []
    monkeypatch.setattr(build, "Registry", lambda root: None)
    monkeypatch.setattr(build, "create_table_artifact", lambda *args, **kwargs: None)
    monkeypatch.setattr(build, "_build_if_changed",
                        lambda path, registry, specs_dir: built.append(path) or {"status": "up to date"})
    build.build_all.fn(specs_dir=str(specs))

    spy_on_discovery(commands, monkeypatch, calls)  # factory deploy
    monkeypatch.setattr(commands, "PROJECT_DIR", project)
    deployments = yaml.safe_load(commands.deployments_file(SimpleNamespace(prefect_home=tmp_path)).read_text())
    deployed = [project / d["parameters"]["spec"] for d in deployments["deployments"]
                if d["entrypoint"] == "flows/build.py:build_model" and "parameters" in d]

    assert checked == built == deployed == expected
    assert calls == ["factory.cli", "flows.build", "flows.commands"]


def test_build_all_counts_a_spec_up_to_date_when_only_its_schedule_or_fine_tune_changed(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    spec = write_spec(tmp_path / "specs", {"name": "steady", "source": {"local": "../model"},
                                           "formats": [{"mlx": {"dtype": "float16"}}]})
    loaded = load_spec(spec)
    revision = source_revision(loaded.spec.source, str(spec.parent))
    registry = Registry(tmp_path / "registry")
    registry.publish("steady", {"mlx-float16": model}, spec_hash=loaded.spec.content_hash(), source_revision=revision)

    spec.write_text(spec.read_text() + 'schedule: "0 3 * * *"\nfine_tune: {data: {train: train.jsonl}, iters: 5}\n')
    edited = load_spec(spec)
    assert build._current_version(edited, registry).ref == "steady@1"  # build_all: "up to date", nothing built
    # publish_version asks the same question: it would publish nothing
    assert latest_matching(registry, "steady", edited.spec.content_hash(), revision, ["mlx-float16"]) is not None

    spec.write_text(spec.read_text().replace("dtype: float16", "dtype: bfloat16"))
    assert build._current_version(load_spec(spec), registry) is None
