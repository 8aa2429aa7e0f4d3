"""Serving benchmark: this server vs `mlx_lm.server` on the same MLX model, same machine, same run, on loopback.

    .venv/bin/python bench/serve.py [--hidden-size 512 --layers 8 --max-tokens 128 --concurrency 1 4 8 16]

For each server and each concurrency level, N streaming chat requests run at once (temperature 0, fixed prompt).
Reported: TTFT (time to the first content chunk), per-stream decode tok/s, aggregate tok/s over the wall time,
and p50/p99 inter-token latency. Ratios are this server / mlx_lm.server. Goals: single-stream >= 1.0x;
aggregate at 8 streams >= 3x mlx_lm.server's single-stream throughput.
The model is generated locally (random weights, Llama architecture); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import itertools

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory.registry import Registry  # noqa: E402
from factory.services import SERVER_COMMAND, free_port  # noqa: E402

COUNTER = itertools.count()
PROMPT = "Story {}: write a long story about a lighthouse keeper and the sea."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = make_model(work, args.hidden_size, args.layers, args.dtype)
    results = {}
    for name, start in (("llm-factory", start_factory), ("mlx_lm.server", start_mlx_lm)):
        process, url, model_id = start(work, model)
        try:
            wait_ready(url, process)
            print(f"{name}: warming up", file=sys.stderr, flush=True)
            asyncio.run(run_level(url, model_id, 1, 8))  # warm-up: first-request costs are not steady state
            results[name] = {}
            for n in args.concurrency:
                print(f"{name}: {n} concurrent streams", file=sys.stderr, flush=True)
                results[name][n] = asyncio.run(run_level(url, model_id, n, args.max_tokens))
        finally:
            process.terminate()
            process.wait(timeout=30)
    report(results, args)


def make_model(work: Path, hidden: int, layers: int, dtype: str) -> Path:
    from mlx_lm import convert

    from tests.fixtures.tiny_model import make_tiny_model

    hf = make_tiny_model(work / "hf", hidden_size=hidden, layers=layers, intermediate_size=hidden * 4,
                         heads=max(4, hidden // 64), kv_heads=max(2, hidden // 256))
    convert(hf_path=str(hf), mlx_path=str(work / "mlx"), dtype=dtype)
    return work / "mlx"


def start_factory(work: Path, model: Path) -> tuple[subprocess.Popen, str, str]:
    registry = Registry(work / "registry")
    registry.publish("bench", {"mlx-float32": model}, serve={"context_length": 4096})
    port = free_port()
    env = {**os.environ, "FACTORY_REGISTRY": str(registry.root), "FACTORY_SERVE_PORT": str(port),
           "FACTORY_SERVE_LOGS_LEVEL": "warning"}
    process = subprocess.Popen(SERVER_COMMAND, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}", "bench"


def start_mlx_lm(work: Path, model: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(model), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}", str(model)  # mlx_lm.server would fetch any other model id


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server at {url} exited with {process.returncode}")
        try:
            httpx.get(f"{url}/v1/models", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(f"server at {url} did not start")


async def one_stream(client: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> dict:
    # A distinct opening per request: mlx_lm.server caches prompt prefixes, and an identical prompt every time would
    # measure that cache instead of prompt processing (see the note in README's benchmark section).
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT.format(next(COUNTER))}],
            "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    started = time.perf_counter()
    arrivals = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            choices = chunk.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                arrivals.append(time.perf_counter())
    if not arrivals:
        return {"ttft": float("nan"), "tokens": 0, "gaps": [], "decode_tps": 0.0, "end": time.perf_counter()}
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    decode_time = arrivals[-1] - arrivals[0]
    return {"ttft": arrivals[0] - started, "tokens": len(arrivals), "gaps": gaps,
            "decode_tps": (len(arrivals) - 1) / decode_time if decode_time > 0 else 0.0, "end": arrivals[-1]}


async def run_level(url: str, model: str, concurrency: int, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        streams = await asyncio.gather(*(one_stream(client, url, model, max_tokens) for _ in range(concurrency)))
        wall = max(s["end"] for s in streams) - started
    gaps = sorted(g for s in streams for g in s["gaps"])
    return {
        "ttft": statistics.median(s["ttft"] for s in streams),
        "decode_tps": statistics.median(s["decode_tps"] for s in streams),
        "aggregate_tps": sum(s["tokens"] for s in streams) / wall,
        "itl_p50": gaps[len(gaps) // 2] if gaps else float("nan"),
        "itl_p99": gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] if gaps else float("nan"),
    }


def report(results: dict, args: argparse.Namespace) -> None:
    ours, peer = results["llm-factory"], results["mlx_lm.server"]
    print(f"\nmodel: Llama, hidden {args.hidden_size}, {args.layers} layers, {args.dtype}; "
          f"{args.max_tokens} tokens per stream; ratio = llm-factory / mlx_lm.server")
    header = f"{'streams':>7} {'metric':<16}{'llm-factory':>13}{'mlx_lm.server':>15}{'ratio':>8}"
    print(header + "\n" + "-" * len(header))
    for n in args.concurrency:
        for metric, unit, better_high in (("ttft", "s", False), ("decode_tps", "tok/s", True),
                                          ("aggregate_tps", "tok/s", True), ("itl_p50", "s", False),
                                          ("itl_p99", "s", False)):
            a, b = ours[n][metric], peer[n][metric]
            ratio = a / b if b else float("nan")
            print(f"{n:>7} {metric + ' (' + unit + ')':<16}{a:>13.4f}{b:>15.4f}{ratio:>7.2f}x")
    single = peer[1]["aggregate_tps"]
    print(f"\nsingle-stream decode vs mlx_lm.server: {ours[1]['decode_tps'] / peer[1]['decode_tps']:.2f}x (goal >= 1.0)")
    if 8 in ours:
        print(f"aggregate at 8 streams vs mlx_lm.server single-stream: {ours[8]['aggregate_tps'] / single:.2f}x "
              f"(goal >= 3)")


if __name__ == "__main__":
    main()
