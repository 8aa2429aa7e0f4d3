"""Engine benchmark: prompt and decode tokens/s of each engine x format on one model shape (MLX with its bundled
BLAS and with OpenBLAS preloaded), as a share of the memory-bandwidth bound; then this server on the llama.cpp
engine against `llama_cpp.server` (llama-cpp-python's own OpenAI server) on the same GGUF, in the same run.

    .venv/bin/python bench/engines.py [--shape qwen2.5-0.5b|tiny] [--prompt-tokens 32] [--decode-tokens 16]

Default shape: Qwen2.5-0.5B (hidden 896, 24 layers, 14 heads, 2 KV heads, FFN 4864, vocab 151936) with random
weights, generated locally. Bound: decode must read every weight once per token, so tok/s <= bandwidth / bytes of
weights; bandwidth is measured here by streaming a 1 GiB array with numpy on all threads.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory.registry import Registry  # noqa: E402
from factory.services import SERVER_COMMAND, free_port, with_openblas  # noqa: E402

SHAPES = {
    "qwen2.5-0.5b": dict(architecture="qwen2", hidden_size=896, layers=24, heads=14, kv_heads=2,
                         intermediate_size=4864, vocab_size=151936),
    "tiny": dict(architecture="qwen2", hidden_size=256, layers=4, heads=4, kv_heads=2, intermediate_size=1024,
                 vocab_size=1024),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="qwen2.5-0.5b")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--decode-tokens", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    bandwidth = read_bandwidth()
    print(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s", file=sys.stderr, flush=True)
    source = make_source(work, args.shape)

    rows = []
    for dtype in ("float32", "float16", "q4"):
        path = mlx_artifact(work, source, dtype)
        for blas, env in (("", without_openblas()), ("+OpenBLAS", with_openblas(without_openblas()))):
            if blas and env == without_openblas():
                continue  # OpenBLAS is not installed (make blas)
            rows.append((f"MLX{blas}", dtype, weight_bytes(path),
                         *measure_mlx(path, args.prompt_tokens, args.decode_tokens, env)))
    for qtype in ("f16", "q8_0", "q4_0"):
        path = gguf_artifact(work, source, qtype)
        rows.append(("llama.cpp", qtype, path.stat().st_size,
                     *measure_llamacpp(path, args.prompt_tokens, args.decode_tokens)))

    print(f"\nshape {args.shape}; prompt {args.prompt_tokens} tokens, decode {args.decode_tokens} tokens; "
          f"bound = {bandwidth / 1e9:.1f} GB/s / weight bytes")
    print(f"{'engine':<14}{'format':<9}{'weights MB':>11}{'prompt tok/s':>14}{'decode tok/s':>14}{'bound':>8}"
          f"{'of bound':>10}")
    for engine, fmt, size, prompt_tps, decode_tps in rows:
        bound = bandwidth / size
        print(f"{engine:<14}{fmt:<9}{size / 1e6:>11.0f}{prompt_tps:>14.1f}{decode_tps:>14.2f}{bound:>8.1f}"
              f"{decode_tps / bound:>9.0%}")
    share = next(decode / (bandwidth / size) for engine, fmt, size, _, decode in rows if fmt == "q4_0")
    print(f"goal: llama.cpp q4_0 decode >= 80% of the bound: {share:.0%} ({'met' if share >= 0.8 else 'NOT met'})")

    server_comparison(work, gguf_artifact(work, source, "q4_0"), args.decode_tokens * 4)


def read_bandwidth() -> float:
    """Bytes/s read by one numpy reduction per core at once (numpy releases the GIL inside the sum)."""
    from concurrent.futures import ThreadPoolExecutor

    cores = os.cpu_count() or 1
    arrays = [np.ones((1 << 30) // 8 // cores, dtype=np.float64) for _ in range(cores)]  # 1 GiB in all
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(np.sum, arrays))
        started = time.perf_counter()
        for _ in range(3):
            list(pool.map(np.sum, arrays))
        elapsed = time.perf_counter() - started
    return 3 * sum(a.nbytes for a in arrays) / elapsed


def make_source(work: Path, shape: str) -> Path:
    from tests.fixtures.tiny_model import make_tiny_model

    return make_tiny_model(work / "hf", **SHAPES[shape])


def mlx_artifact(work: Path, source: Path, dtype: str) -> Path:
    from mlx_lm import convert

    out = work / f"mlx-{dtype}"
    if dtype == "q4":
        convert(hf_path=str(source), mlx_path=str(out), quantize=True, q_bits=4, q_group_size=64)
    else:
        convert(hf_path=str(source), mlx_path=str(out), dtype=dtype)
    return out


def gguf_artifact(work: Path, source: Path, qtype: str) -> Path:
    from formats.gguf.export import export_gguf

    out = work / f"model-{qtype}.gguf"
    if not out.exists():
        export_gguf(source, out, qtype)
    return out


def weight_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def prompt_ids(count: int) -> list[int]:
    return [(17 * i + 5) % 1000 + 3 for i in range(count)]  # ordinary (non-special) ids of the tiny vocabulary


def without_openblas() -> dict[str, str]:
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in env.get("LD_PRELOAD", "").split() if "openblas" not in p)
    return env


def measure_mlx(path: Path, prompt_tokens: int, decode_tokens: int, env: dict[str, str]) -> tuple[float, float]:
    """In a child process, since the BLAS is chosen when a process starts (LD_PRELOAD)."""
    print(f"MLX {path.name} ({'OpenBLAS' if 'openblas' in env.get('LD_PRELOAD', '') else 'bundled BLAS'})",
          file=sys.stderr, flush=True)
    script = ("import sys; from mlx_lm import load, stream_generate; model, tok = load(sys.argv[1]); "
              "ids = [(17 * i + 5) % 1000 + 3 for i in range(int(sys.argv[2]))]; "
              "r = [r for r in stream_generate(model, tok, ids, max_tokens=int(sys.argv[3]))][-1]; "
              "print(r.prompt_tps, r.generation_tps)")
    out = subprocess.run([sys.executable, "-c", script, str(path), str(prompt_tokens), str(decode_tokens)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def measure_llamacpp(path: Path, prompt_tokens: int, decode_tokens: int) -> tuple[float, float]:
    from llama_cpp import Llama

    print(f"llama.cpp {path.name}", file=sys.stderr, flush=True)
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=os.cpu_count(), verbose=False)
    tokens = prompt_ids(prompt_tokens)
    started = time.perf_counter()
    llm.eval(tokens)
    prompt_tps = prompt_tokens / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(decode_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([token])
    decode_tps = decode_tokens / (time.perf_counter() - started)
    llm.close()
    return prompt_tps, decode_tps


def server_comparison(work: Path, gguf: Path, max_tokens: int) -> None:
    """Single-stream and 4-stream decode through each server's OpenAI API (the peer: llama_cpp.server)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from streams import run_level, wait_ready

    registry = Registry(work / "registry")
    registry.publish("bench", {"gguf-q4_0": _dir_with(work, gguf)}, serve={"context_length": 2048})
    ours_port, peer_port = free_port(), free_port()
    ours = subprocess.Popen(SERVER_COMMAND,
                            cwd=ROOT, env={**os.environ, "FACTORY_REGISTRY": str(registry.root),
                                           "FACTORY_SERVE_PORT": str(ours_port),
                                           "FACTORY_SERVE_LOGS_LEVEL": "warning"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(peer_port),
                             "--n_ctx", "2048", "--n_threads", str(os.cpu_count()),
                             "--interrupt_requests", "False"],  # by default a new request cuts the running one
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        for name, process, port, model in (("llm-factory", ours, ours_port, "bench"),
                                           ("llama_cpp.server", peer, peer_port, str(gguf))):
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process)
            asyncio.run(run_level(url, model, 1, 4))  # warm-up
            results[name] = {n: asyncio.run(run_level(url, model, n, max_tokens)) for n in (1, 4)}
    finally:
        for process in (ours, peer):
            process.terminate()
            process.wait(timeout=30)
    print(f"\nservers on the same q4_0 GGUF ({max_tokens} tokens per stream); ratio = llm-factory / llama_cpp.server")
    print(f"{'streams':>7}  {'metric':<22}{'llm-factory':>13}{'llama_cpp.server':>18}{'ratio':>8}")
    for n in (1, 4):
        for metric in ("ttft", "decode_tps", "aggregate_tps"):
            a, b = results["llm-factory"][n][metric], results["llama_cpp.server"][n][metric]
            print(f"{n:>7}  {metric:<22}{a:>13.3f}{b:>18.3f}{a / b if b else float('nan'):>7.2f}x")


def _dir_with(work: Path, gguf: Path) -> Path:
    """A directory holding just this GGUF file: the registry's artifact layout."""
    directory = work / f"artifact-{gguf.stem}"
    directory.mkdir(exist_ok=True)
    link = directory / gguf.name
    if not link.exists():
        os.link(gguf, link)
    return directory


if __name__ == "__main__":
    main()
