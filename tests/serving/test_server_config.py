"""`factory serve --config server.yaml` through the real command: the file's port, worker count, CORS origins,
default model and log file reach gunicorn and every worker, and a flag overrides the file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from factory.registry import Registry
from factory.services import free_port
from tests.fixtures.processes import stop_process_group
from tests.serving.conftest import ROOT, SERVE


def test_serve_runs_as_the_config_file_says(tmp_path, tiny_mlx):
    registry = Registry(tmp_path / "registry")
    registry.publish("tiny", {"mlx-float16": tiny_mlx}, serve=SERVE)
    registry.publish("other", {"mlx-float16": tiny_mlx}, serve={})
    port, unused = free_port(), free_port()
    config = tmp_path / "server.yaml"
    config.write_text(f"port: {unused}\nworkers: 2\nmodels: {{default: other, poll_s: 0.2}}\n"
                      f"cors: {{origins: ['http://localhost:5173']}}\nlogs: {{file: logs/server.jsonl}}\n")
    env = {**os.environ, "FACTORY_ROOT": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "factory.cli", "serve", "--config", str(config),
                                "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/ready", timeout=30).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        answer = httpx.get(f"{url}/v1/models/default", headers={"Origin": "http://localhost:5173"}, timeout=30)
        assert answer.status_code == 200
        assert answer.json()["id"] == "default" and answer.json()["ref"] == "other@1"  # the file's default
        assert answer.headers["access-control-allow-origin"] == "http://localhost:5173"
        log_lines = [json.loads(line) for line in (tmp_path / "logs" / "server.jsonl").read_text().splitlines()]
        assert any(line.get("path") == "/v1/models/default" for line in log_lines)  # the file's log file
    finally:
        stop_process_group(process)
    output = process.stdout.read().decode()
    assert output.count("Booting worker") == 2, output  # workers: 2 from the file
    assert f"serving on http://127.0.0.1:{port}/v1" in output  # the flag's port, not the file's
