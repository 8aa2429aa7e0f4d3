"""The front door's cost: requests/s this server holds with API keys and per-key rate limits on, against the same
server with them off (the peer), same machine, same run, on loopback.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python bench/front_door.py [--workers 2] [--concurrency 16] [--seconds 5] [--rounds 3]

Three servers, each gunicorn with --workers workers on the tiny random model (MLX float16):
  off        no keys: every route is open;
  sqlite     one admin key (rpm and tpm far above what the run sends, so nothing is refused but every request is
             authenticated, counted and answered with the rate-limit headers), counters in SQLite (the default);
  redis      the same with `limits: {store: redis}` against a local redis-server.
All three run at once; in each of --rounds rounds every setup takes its turn (so drift in the machine's load falls
on all of them) with two loads of --seconds, --concurrency connections each: GET /v1/models (the front door and
little else) and POST /v1/chat/completions with max_tokens 1 (a whole request through a model). Medians over the
rounds; ratios are keyed / off.
The load generator shares the 2 CPU cores with the server, so absolute figures are low; the ratios are the point.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory.keys import KeyStore  # noqa: E402
from factory.registry import Registry  # noqa: E402
from factory.services import SERVER_COMMAND, free_port  # noqa: E402
from tests.fixtures.redis_server import redis_server  # noqa: E402

SETUPS = ("off", "sqlite", "redis")
LOADS = {
    "GET /v1/models": ("GET", "/v1/models", None),
    "POST chat, 1 token": ("POST", "/v1/chat/completions",
                           {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-front-door-"))
    model = make_model(work)
    runs: dict[str, dict[str, list[float]]] = {setup: {name: [] for name in LOADS} for setup in SETUPS}
    (work / "redis").mkdir()
    servers: dict[str, tuple[subprocess.Popen, str, dict[str, str]]] = {}
    with redis_server(work / "redis") as redis_url:
        try:
            for setup in SETUPS:
                servers[setup] = start_setup(work / setup, model, setup, redis_url, args.workers)
            # Rounds, each setup in turn: the machine's drift (other work on the 2 cores) falls on every setup.
            for round_ in range(args.rounds):
                for setup, (_, url, headers) in servers.items():
                    for name, (method, path, body) in LOADS.items():
                        if round_ == 0:
                            asyncio.run(load(url + path, method, body, headers, args.concurrency, 1.0))  # warm-up
                        rate = asyncio.run(load(url + path, method, body, headers, args.concurrency, args.seconds))
                        runs[setup][name].append(rate)
                        print(f"round {round_ + 1} {setup:<7} {name:<20} {rate:8.1f} req/s", file=sys.stderr,
                              flush=True)
        finally:
            for process, _, _ in servers.values():
                process.terminate()
                process.wait(timeout=60)
    report({setup: {name: statistics.median(rates) for name, rates in loads.items()}
            for setup, loads in runs.items()}, args)


def start_setup(root: Path, model: Path, setup: str, redis_url: str,
                workers: int) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """A server for one setup, and the headers its clients send."""
    Registry(root / "registry").publish("tiny", {"mlx-float16": model}, serve={"context_length": 512})
    env, headers = {"FACTORY_SERVE_WORKERS": str(workers), "FACTORY_SERVE_LOGS_LEVEL": "warning"}, {}
    if setup != "off":
        secret = KeyStore(root).create("bench", "admin", rpm=10**9, tpm=10**12)
        headers = {"Authorization": f"Bearer {secret}"}
    if setup == "redis":
        env |= {"FACTORY_SERVE_LIMITS_STORE": "redis", "FACTORY_SERVE_LIMITS_URL": redis_url}
    process, url = start(root, env)
    return process, url, headers


def make_model(work: Path) -> Path:
    from mlx_lm import convert

    from tests.fixtures.tiny_model import make_tiny_model

    convert(hf_path=str(make_tiny_model(work / "hf", seed=0)), mlx_path=str(work / "mlx"), dtype="float16")
    return work / "mlx"


def start(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environment = {**os.environ, "FACTORY_ROOT": str(root), "FACTORY_SERVE_PORT": str(port), **env}
    process = subprocess.Popen(SERVER_COMMAND, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=30).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not start")


async def load(url: str, method: str, body: dict | None, headers: dict[str, str], concurrency: int,
               seconds: float) -> float:
    """Successful requests per second from `concurrency` clients sending back to back for `seconds`."""
    done = failed = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done, failed
        async with httpx.AsyncClient(timeout=60, headers=headers) as http:
            while time.monotonic() < deadline:
                response = await http.request(method, url, json=body)
                if response.status_code == 200:
                    done += 1
                else:
                    failed += 1
    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    if failed:
        raise RuntimeError(f"{failed} requests failed: the benchmark must not hit a limit")
    return done / (time.monotonic() - started)


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(f"\nrequests/s (median of {args.rounds} rounds of {args.seconds:g} s), {args.workers} gunicorn workers, "
          f"{args.concurrency} connections ({os.cpu_count()} CPU cores shared with the load generator)")
    print(f"{'load':<20} {'off':>8} {'keys+sqlite':>12} {'ratio':>6} {'keys+redis':>11} {'ratio':>6}")
    for name in LOADS:
        off, sqlite, redis = (results[setup][name] for setup in ("off", "sqlite", "redis"))
        print(f"{name:<20} {off:8.1f} {sqlite:12.1f} {sqlite / off:6.2f} {redis:11.1f} {redis / off:6.2f}")


if __name__ == "__main__":
    main()
