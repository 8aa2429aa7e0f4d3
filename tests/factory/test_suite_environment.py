"""The suite sets the environment it needs: the user's HF_* and PREFECT_* variables do not reach it.

HF_HUB_OFFLINE=1 is common on offline machines; huggingface_hub reads it when it is imported, and then refuses to
reach even the suite's local hub. A small pytest run (the cheapest hub test) with such variables set must pass.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HUB_TEST = "tests/test_fixtures.py::test_local_hub_serves_snapshot_download"
HOSTILE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",  # huggingface_hub reads it as HF_HUB_OFFLINE
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "PREFECT_API_URL": "http://127.0.0.1:9/api",
    "PREFECT_API_KEY": "not-a-key",
}


def test_a_hub_test_passes_whatever_hf_and_prefect_variables_the_user_has_set(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", HUB_TEST],
                         cwd=ROOT, env={**os.environ, **HOSTILE}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "1 passed" in run.stdout, run.stdout[-4000:]
