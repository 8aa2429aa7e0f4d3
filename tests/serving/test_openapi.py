"""Schemathesis against a real gunicorn server with the tiny model: every operation in /openapi.json is fuzzed
(boundary values, generated and mutated bodies, and stateful chains such as upload -> retrieve -> delete) and every
response must be no server error, a documented status and content type, and a body that holds to its schema (for
streams, each server-sent event). Reproducible: a fixed seed, no example database, deterministic steering hooks
(tests/serving/openapi_hooks.py: most requests name the served model, so fuzzed parameters reach the engine).

Nothing is excluded. Fine-tuning and builds need Prefect; here PREFECT_API_URL points at a stand-in that fails every
call with a 500, so the fine-tuning and build operations must answer their documented 503 (or a 4xx): the one 5xx
they may give. The hub search has no hub to reach here: its 503 `hub_unreachable` is the answer.
(A Prefect that cannot be reached at all answers the same 503, only after the Prefect client's connection retries,
1.5 s each: tests/serving/api/test_openapi.py checks that.)
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.serving.conftest import ROOT, SERVE, start_server, stop_server

# Small, so the generations fuzzing asks for (up to n=8 sequences; a max_tokens beyond the context is capped at the
# room the prompt leaves) stay fast on a busy CPU.
FAST = {**SERVE, "context_length": 96, "defaults": {"temperature": 0.7, "max_tokens": 16}}
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
CONFIG = """\
hooks = "tests.serving.openapi_hooks"

[[operations]]
include-tag = "fine-tuning"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

[[operations]]
include-tag = "builds"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

[[operations]]
include-tag = "hub"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""


class FailingPrefect(http.server.BaseHTTPRequestHandler):
    """A Prefect API that answers every call with a 500."""

    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"detail": "stand-in Prefect: every call fails"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_mlx):
    prefect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingPrefect)
    threading.Thread(target=prefect.serve_forever, daemon=True).start()
    server = start_server(tmp_path_factory.mktemp("openapi"), tiny_mlx, serve=FAST,
                          PREFECT_API_URL=f"http://127.0.0.1:{prefect.server_port}/api",
                          FACTORY_SERVE_MODELS_QUEUE_SIZE="64")
    yield server
    stop_server(server.process)
    prefect.shutdown()


@pytest.mark.timeout(300)
def test_schemathesis_finds_no_failures(live, tmp_path, record_property):
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    report = tmp_path / "report.json"
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(tmp_path / "schemathesis.toml"), "run",
         f"{live.url}/openapi.json", "--checks", CHECKS, "--max-examples", "6", "--seed", "20240613",
         "--generation-database", "none", "--workers", "1", "--request-timeout", "60", "--no-color",
         "--report", "json", "--report-json-path", str(report)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},  # its crash cache lands in tmp_path
        capture_output=True, text=True, timeout=280)
    elapsed = time.monotonic() - started
    assert report.exists(), run.stdout[-5000:] + run.stderr[-5000:]
    summary = json.loads(report.read_text())
    operations, cases = summary["operations"], summary["test_cases"]
    counts = {"operations": operations["tested"], "cases": cases["generated"], "failures": cases["with_failures"],
              "errors": len(summary["errors"]), "seconds": round(elapsed)}
    record_property("schemathesis", counts)  # in the JUnit XML, with --junitxml
    print(f"\nschemathesis: {counts}")
    assert run.returncode == 0, run.stdout[-20000:]
    assert operations["tested"] == operations["total"] >= 19 and operations["errored"] == 0
    assert cases["generated"] > 1000
    assert live.process.poll() is None  # still serving
