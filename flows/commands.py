"""What the `factory` CLI runs for the pipeline: builds with a summary row per spec, deploy, worker, up.

Long-lived processes (Prefect server, worker, gunicorn) are started as child processes; this module only wires them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import yaml

from factory.services import (PrefectServer, ServeOptions, child_pids, exit_on_signals, serve,
                              start_prefect_server, start_server, stop_processes)
from factory.settings import Settings
from factory.spec import SpecError, discover_specs, find_spec, load_spec

PROJECT_DIR = Path(__file__).resolve().parents[1]
# What `factory up` (and `make up`) builds and serves: the chat model, served as `default`, and the embedding model.
DEMO_SPECS = ("specs/smollm2-135m-instruct.yaml", "specs/all-minilm-l6-v2.yaml")


def build_one_row(spec: str, specs_dir: str) -> dict[str, Any]:
    from flows.build import build_row, invalid_row

    try:
        name = load_spec(find_spec(spec, specs_dir)).spec.name
    except SpecError as exc:
        return invalid_row(spec, exc)
    return build_row(name, spec, specs_dir)


def build_all_rows(specs_dir: str) -> list[dict[str, Any]]:
    from flows.build import build_all

    state = build_all(specs_dir=specs_dir, return_state=True)
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        return [{"spec": "(build-all)", "formats": "", "gates": "", "version": "", "status": "failed",
                 "detail": str(error)}]
    return state.result()


def finetune(spec_or_model: str, specs_dir: str, train: str | None, valid: str | None,
             hyperparameters: dict[str, Any], suffix: str | None) -> int:
    """Fine-tune a spec's published model as its `fine_tune:` says, or any registry model given --train."""
    from flows.build import spec_finetune_parameters
    from flows.finetune import finetune_model

    if train is None:
        loaded = load_spec(find_spec(spec_or_model, specs_dir))
        if loaded.spec.fine_tune is None:
            print(f"{loaded.path} has no fine_tune: section; give --train FILE to fine-tune anyway", file=sys.stderr)
            return 2
        state = finetune_model(**spec_finetune_parameters(loaded, loaded.spec.name), return_state=True)
    else:
        state = finetune_model(base=spec_or_model, training_file=str(Path(train).absolute()),
                               validation_file=str(Path(valid).absolute()) if valid else None,
                               hyperparameters=hyperparameters, suffix=suffix, return_state=True)
    if state.is_failed():
        print(state.result(raise_on_failure=False), file=sys.stderr)
        return 1
    result = state.result()
    print(f"{result['version']}: validation loss {result['valid_loss_before']:.4f} -> {result['valid_loss_after']:.4f}, "
          f"exact match {result['exact_match_before']} -> {result['exact_match_after']}")
    return 0


def deployments_file(settings: Settings) -> Path:
    """prefect.yaml plus one scheduled `build-model/<name>` deployment per spec that declares `schedule:`."""
    config = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())
    for path in discover_specs([PROJECT_DIR / "specs"]):
        spec = load_spec(path).spec
        if spec.schedule:
            config["deployments"].append({
                "name": spec.name, "entrypoint": "flows/build.py:build_model",
                "parameters": {"spec": str(path.relative_to(PROJECT_DIR))}, "work_pool": {"name": "factory"},
                "schedules": [{"cron": spec.schedule}], "description": f"scheduled build of {path.name}",
            })
    out = settings.prefect_home / "deployments.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def deploy() -> int:
    from flows.setup import ensure_heavy_limit, ensure_work_pool

    settings = Settings.from_env()
    ensure_work_pool()
    ensure_heavy_limit()
    env = {**os.environ, "FACTORY_PROJECT_DIR": str(PROJECT_DIR)}
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
               "--prefect-file", str(deployments_file(settings))]
    return subprocess.run(command, cwd=PROJECT_DIR, env=env).returncode


def worker() -> int:
    from flows.setup import WORK_POOL

    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"]
    os.chdir(PROJECT_DIR)
    # Prefect's worker stops on SIGTERM by sending itself SIGINT: were SIGINT left ignored, as for a shell script's
    # background job (`factory up &`), nothing but SIGKILL would stop it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(sys.executable, command)  # become the worker, so signals (Ctrl-C, SIGTERM) reach it directly


def ensure_prefect_server(settings: Settings) -> PrefectServer | None:
    """Start a Prefect server under the factory root unless PREFECT_API_URL points at one already."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    server = start_prefect_server(settings, port=int(os.environ.get("FACTORY_PREFECT_PORT", "4200")))
    os.environ["PREFECT_API_URL"] = server.api_url
    print(f"Prefect server: {server.api_url} (log: {server.log})", flush=True)
    return server


def serve_model_file(path: Path, name: str | None, serve_settings: dict[str, Any], options: ServeOptions) -> int:
    """`factory serve PATH`: write an implicit spec for a model file or folder, build it through the same flow as any
    spec (validated, published), then serve the registry with it as `default`."""
    from factory.implicit_spec import write_implicit_spec

    try:
        spec_file = write_implicit_spec(path, Settings.from_env().implicit_specs, name, serve_settings)
        loaded = load_spec(spec_file)
    except (OSError, ValueError, SpecError) as exc:
        print(exc, file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    row = build_one_row(str(spec_file), str(spec_file.parent))
    print(f"{row['spec']}: {row['status']} {row['version']}", flush=True)
    if row["status"] in ("failed", "invalid"):
        print(row["detail"], file=sys.stderr)
        return 1
    return serve(options.serving_default(loaded.spec.name))


def up(specs: Sequence[str], options: ServeOptions) -> int:
    """Prefect server (unless one is configured), build and publish `specs` (the first one is served as `default`
    unless the server config names another), register the deployments and start a worker (so the server's
    fine-tuning API has something to run on), then serve the registry.

    However it ends (the server exits, Ctrl-C, SIGTERM from a service manager, a container runtime or `kill`, or a
    failed step), every process it started stops with it: first the worker and gunicorn with what they started, then
    the Prefect server they report to (SIGKILL for whatever outlives `STOP_GRACE_S`)."""
    settings = Settings.from_env()
    server: PrefectServer | None = None
    children: list[subprocess.Popen] = []
    with exit_on_signals():  # SIGTERM and SIGHUP raise SystemExit here, as Ctrl-C raises KeyboardInterrupt
        try:
            server = ensure_prefect_server(settings)
            rows = []
            for spec in specs:
                rows.append(row := build_one_row(spec, "specs"))
                print(f"{row['spec']}: {row['status']} {row['version']}", flush=True)
                if row["status"] in ("failed", "invalid"):
                    print(row["detail"], file=sys.stderr)
                    return 1
            if options.effective().config.models.default is None:
                options = options.serving_default(rows[0]["spec"])
            if deploy() != 0:
                return 1
            children.append(subprocess.Popen([sys.executable, "-m", "factory.cli", "worker"], cwd=PROJECT_DIR,
                                             stdout=open(settings.prefect_home / "worker.log", "ab"),
                                             stderr=subprocess.STDOUT, start_new_session=True))
            children.append(start_server(options))
            return children[-1].wait()
        finally:
            server_pids = {server.process.pid} if server is not None else set()
            # child_pids() also finds a child started the instant the signal came, before `children` held it
            stop_processes(children, pids=set(child_pids()) - server_pids)
            if server is not None:
                server.stop()
