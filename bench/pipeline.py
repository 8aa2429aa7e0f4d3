"""Pipeline benchmark: what Prefect costs on top of the steps themselves, and what an unchanged rebuild costs.

    .venv/bin/python bench/pipeline.py [--hidden-size 512 --layers 8]

Peer: the same task functions called as plain Python (`task.fn`, no Prefect engine, no cache), in the same run.
Prints, for the tiny model and for a larger "real-size step" model:
  cold build through Prefect vs the plain calls (ratio = Prefect's overhead),
  the no-op rebuild (every step cached, nothing published; goal <= 3 s).
Starts its own Prefect server (SQLite) under a temporary FACTORY_ROOT; never touches the network.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory.services import apply_prefect_environment, start_prefect_server  # noqa: E402
from factory.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    os.environ["FACTORY_ROOT"] = str(root)
    settings = Settings.from_env()
    apply_prefect_environment(settings)
    server = start_prefect_server(settings)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        rows = [measure("tiny (64 x 2)", root, 64, 2), measure(f"larger ({args.hidden_size} x {args.layers})", root,
                                                              args.hidden_size, args.layers)]
    finally:
        server.stop()
    print()
    print(f"{'model':<20}{'plain s':>9}{'flow s':>8}{'vs plain':>10}{'steps s':>9}{'vs steps':>10}{'no-op s':>9}")
    for name, plain, cold, steps, noop in rows:
        print(f"{name:<20}{plain:>9.2f}{cold:>8.2f}{cold / plain:>9.2f}x{steps:>9.2f}{(cold - steps) / cold:>9.1%} "
              f"{noop:>8.2f}")
    print("\nflow s: cold build_model through Prefect; plain s: the same task functions called directly (the peer)")
    print("vs steps: share of the flow's wall time not spent inside its steps (goal <= 5 % on the larger model)")
    print("no-op s: unchanged rebuild, every step cached, nothing published (goal <= 3 s)")


def measure(label: str, root: Path, hidden: int, layers: int) -> tuple[str, float, float, float, float]:
    import yaml

    from tests.fixtures.tiny_model import make_tiny_model

    model = make_tiny_model(root / f"model-{hidden}x{layers}", hidden_size=hidden, layers=layers,
                            intermediate_size=hidden * 4)
    spec_path = root / f"bench-{hidden}x{layers}.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": f"bench-{hidden}x{layers}", "source": {"local": str(model)},
        "formats": [{"mlx": {"dtype": "float16"}}, {"mlx": {"quantize": {"bits": 4, "group_size": 64}}}],
        "validate": {"prompts": [{"prompt": "def ", "max_tokens": 8, "expect": {"max_length": 1000}}]},
    }))
    import mlx_lm  # noqa: F401  (both contenders start with MLX imported)

    plain = run_plain(spec_path, root / f"plain-{hidden}x{layers}")
    from flows.build import build_model

    started = time.perf_counter()
    state = build_model(spec=str(spec_path), return_state=True)
    cold = time.perf_counter() - started
    assert state.result()["status"] == "published"
    steps = sum_of_step_times(state.state_details.flow_run_id)
    started = time.perf_counter()
    assert build_model(spec=str(spec_path))["status"] == "up to date"
    noop = time.perf_counter() - started
    return label, plain, cold, steps, noop


def sum_of_step_times(flow_run_id) -> float:
    """Seconds the flow's task runs spent running, as Prefect recorded them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sum(run.total_run_time.total_seconds() for run in runs)


def run_plain(spec_path: Path, runs: Path) -> float:
    """The build's steps as plain function calls, in their flow order."""
    from prefect.logging import disable_run_logger

    from factory.registry import Registry
    from factory.spec import load_spec
    from tasks.convert import convert_format
    from tasks.download import download_source
    from tasks.normalize import normalise_checkpoint
    from tasks.publish import publish_version
    from tasks.validate import validate_artifact

    loaded = load_spec(spec_path)
    spec = loaded.spec
    started = time.perf_counter()
    with disable_run_logger():
        source = download_source.fn(spec.source, str(spec_path.parent), str(runs / "hub"))
        source = normalise_checkpoint.fn(source, str(runs))
        artifacts = [convert_format.fn(source, entry, str(runs)) for entry in spec.formats]
        reports = [validate_artifact.fn(artifact, spec.validate_, str(spec_path.parent)) for artifact in artifacts]
        Registry(runs / "registry")
        publish_version.fn(spec.name, artifacts, source, spec.content_hash(), reports, str(runs / "registry"))
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
