"""Helpers for flow tests: write a spec file, read a flow run's task states."""
from __future__ import annotations

from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId


def write_spec(directory: Path, body: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def task_states(flow_run_id) -> dict[str, str]:
    """{task run name: final state name} for one flow run (and its subflows' tasks are not included)."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state.name for run in runs}
