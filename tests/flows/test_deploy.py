"""`factory deploy` registers prefect.yaml's deployments; a worker runs one and the version is published."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from factory.registry import NotFound, Registry
from tests.fixtures.processes import stop_process_group
from tests.flows.helpers import write_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_deploy_then_run_build_model_on_a_worker_publishes(tmp_path, factory_root, tiny_model, prefect_server):
    deployed = subprocess.run([sys.executable, "-m", "factory.cli", "deploy"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with get_client(sync_client=True) as client:
        names = {d.name for d in client.read_deployments()}
        nightly = client.read_deployment_by_name("build-all/nightly")
    assert {"nightly", "on-demand"} <= names
    assert nightly.schedules and nightly.schedules[0].schedule.cron == "0 2 * * *"

    spec = write_spec(tmp_path / "specs", {"name": "deployed", "source": {"local": str(tiny_model)},
                                           "formats": [{"mlx": {"dtype": "float16"}}]})
    worker = subprocess.Popen([sys.executable, "-m", "factory.cli", "worker"], cwd=ROOT, start_new_session=True,
                              stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT)
    try:
        run = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "build-model/on-demand",
                              "--param", f"spec={spec}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        registry = Registry(factory_root / "registry")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                version = registry.resolve("deployed")
                break
            except NotFound:
                time.sleep(1)
        else:
            pytest.fail("the deployment run published nothing; worker log:\n" + (tmp_path / "worker.log").read_text())
    finally:
        stop_process_group(worker)
    assert version.ref == "deployed@1" and version.flow_run_id
    assert registry.verify("deployed@1") == []
