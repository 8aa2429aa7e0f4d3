"""The client side of the serving benchmarks: concurrent streaming chat requests against any OpenAI-compatible server,
timed per token (TTFT, per-stream decode tok/s, aggregate tok/s, inter-token latency percentiles), and the time to
first token with a long system prompt, cold and repeated. Used by bench/serve.py, bench/engines.py and bench/soak.py.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import subprocess
import time

import httpx

COUNTER = itertools.count()
PROMPT = "Story {}: write a long story about a lighthouse keeper and the sea."
WORDS = ("harbour lantern keeper tide storm gull rope anchor beacon shore cliff wave salt ship night dawn light "
         "wind rock island boat sailor fog bell chart compass reef current horizon keel mast sail deck").split()


def wait_ready(url: str, process: subprocess.Popen, path: str = "/v1/models") -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server at {url} exited with {process.returncode}")
        try:
            httpx.get(f"{url}{path}", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(f"server at {url} did not start")


def system_prompt(words: int, seed: int) -> str:
    """About `words` tokens of plain text; each seed opens differently, so two seeds share no prefix."""
    rng = random.Random(seed)
    return f"Brief {seed}. " + " ".join(rng.choice(WORDS) for _ in range(words))


async def one_stream(client: httpx.AsyncClient, url: str, model: str, max_tokens: int,
                     messages: list[dict] | None = None) -> dict:
    # A distinct opening per request by default: both peers cache prompt prefixes, and an identical prompt every
    # time would measure that cache instead of prompt processing.
    messages = messages or [{"role": "user", "content": PROMPT.format(next(COUNTER))}]
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
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


def percentile(values: list[float], share: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * share))] if values else float("nan")


async def run_level(url: str, model: str, concurrency: int, max_tokens: int,
                    messages: list[dict] | None = None) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        streams = await asyncio.gather(*(one_stream(client, url, model, max_tokens, messages)
                                         for _ in range(concurrency)))
        wall = max(s["end"] for s in streams) - started
    gaps = [g for s in streams for g in s["gaps"]]
    return {
        "ttft": statistics.median(s["ttft"] for s in streams),
        "decode_tps": statistics.median(s["decode_tps"] for s in streams),
        "aggregate_tps": sum(s["tokens"] for s in streams) / wall,
        "itl_p50": percentile(gaps, 0.5),
        "itl_p99": percentile(gaps, 0.99),
    }


async def prefix_ttft(url: str, model: str, system_words: int, repeats: int) -> dict:
    """Median TTFT of `repeats` requests whose ~system_words-token system prompts are all different (cold), then of
    `repeats` requests that share one (after one request that primes it), each with its own question."""
    async with httpx.AsyncClient(timeout=600) as client:
        async def ttft(system: str) -> float:
            question = PROMPT.format(next(COUNTER))
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            return (await one_stream(client, url, model, 4, messages))["ttft"]

        base = 10_000 + next(COUNTER) * 100
        cold = [await ttft(system_prompt(system_words, base + i)) for i in range(repeats)]
        shared = system_prompt(system_words, base + 99)
        await ttft(shared)
        repeated = [await ttft(shared) for _ in range(repeats)]
    return {"cold": statistics.median(cold), "repeated": statistics.median(repeated)}
