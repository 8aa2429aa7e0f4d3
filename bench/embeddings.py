"""Embedding benchmark: sentences per second of all-MiniLM-L6-v2 (the model `make up` serves) on this factory's
runtimes against sentence-transformers on torch, the obvious alternative a user has: same model, same CPU, batch
sizes 1 and 32, each contender in its own process. Then this server end to end (gunicorn, the openai SDK,
llama.cpp f16): one request per batch, so its overhead shows against the runtime alone.

    .venv/bin/python bench/embeddings.py [--sentences 256]

sentence-transformers is not a dependency of the factory: without it, the baseline is transformers + mean pooling +
normalisation on torch (the same computation; the table says which ran). Every contender's vectors are compared with
the baseline's (minimum cosine), so a fast wrong answer shows. Only the MLX contender runs with OpenBLAS preloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory.services import SERVER_COMMAND, free_port, with_openblas  # noqa: E402

SUBJECTS = ["the weather in the mountains", "a recipe for lemon cake", "the train timetable", "my password reset",
            "quarterly sales figures", "the history of Rome", "a football match last night", "solar panels"]
SHAPES = ["Tell me about {}.", "I have been reading a long and rather detailed article about {} this morning.",
          "{}?", "Could you please summarise everything you know about {} in a few short sentences for me?"]
CONTENDERS = ["baseline", "gguf-f16", "gguf-q8_0", "mlx-float32", "server-gguf-f16"]
BATCHES = (1, 32)


def sentences(count: int) -> list[str]:
    """Varied lengths (about 6 to 25 tokens), deterministic."""
    return [f"({i}) " + SHAPES[i % len(SHAPES)].format(SUBJECTS[(i // len(SHAPES)) % len(SUBJECTS)])
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--run", choices=CONTENDERS, help=argparse.SUPPRESS)  # one contender, in a child process
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run(args.run, args.batch, args.work, sentences(args.sentences))))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-embeddings-"))
    prepare(work)
    results = {(name, batch): child(name, batch, work, args.sentences) for batch in BATCHES for name in CONTENDERS}
    baseline = results[("baseline", 1)]["label"]
    print(f"\nall-MiniLM-L6-v2, {args.sentences} sentences, {os.cpu_count()} CPU threads; "
          f"ratio = contender / {baseline} at the same batch size")
    print(f"{'contender':<34}{'batch':>6}{'sentences/s':>13}{'ratio':>8}{'min cosine':>12}")
    for batch in BATCHES:
        base = results[("baseline", batch)]["rate"]
        for name in CONTENDERS:
            row = results[(name, batch)]
            print(f"{row['label']:<34}{batch:>6}{row['rate']:>13.1f}{row['rate'] / base:>7.2f}x"
                  f"{row['min_cosine']:>12.6f}")


def prepare(work: Path) -> None:
    """The source folder, each artifact the way the convert step writes it, and the baseline's vectors."""
    from tests.fixtures.minilm import embedding_artifact, minilm_source

    source = minilm_source()
    (work / "source").symlink_to(source)
    for key, entry in (("gguf-f16", {"gguf": {"type": "f16"}}), ("gguf-q8_0", {"gguf": {"type": "q8_0"}}),
                       ("mlx-float32", {"mlx": {"dtype": "float32"}})):
        _, limits = embedding_artifact(source, work / key, entry)
    (work / "limits.json").write_text(json.dumps(limits))


def child(name: str, batch: int, work: Path, count: int) -> dict:
    print(f"{name} batch {batch}...", file=sys.stderr, flush=True)
    # MLX's float32 products need OpenBLAS preloaded (see README); torch must not have it: preloaded, it made
    # sentence-transformers 6x slower here (93 -> 14 sentences/s at batch 1). llama.cpp has its own kernels.
    env = {**os.environ, "LD_PRELOAD": " ".join(p for p in os.environ.get("LD_PRELOAD", "").split()
                                                if "openblas" not in p)}
    if name.startswith("mlx-"):
        env = with_openblas(env)
    out = subprocess.run([sys.executable, __file__, "--run", name, "--batch", str(batch), "--work", str(work),
                          "--sentences", str(count)], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{name} batch {batch} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(name: str, batch: int, work: Path, texts: list[str]) -> dict:
    encode, label = contender(name, batch, work)
    encode(texts[:batch * 2])  # warm-up
    started = time.perf_counter()
    vectors = np.asarray(encode(texts), dtype=np.float32)
    rate = len(texts) / (time.perf_counter() - started)
    reference_file = work / "baseline.npy"
    if name == "baseline" and not reference_file.exists():
        np.save(reference_file, vectors)
    reference = np.load(reference_file)
    cosine = (vectors * reference).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))
    return {"label": label, "rate": rate, "min_cosine": float(cosine.min())}


def contender(name: str, batch: int, work: Path):
    if name == "baseline":
        return baseline(work / "source", batch)
    if name.startswith("server-"):
        return server(work, batch)
    from formats.embeddings.runtime import load_embedder

    embedder = load_embedder(work / name, max_batch=batch)
    return embedder.embed_texts, f"llm-factory {embedder.name} {name}"


def baseline(source: Path, batch: int):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return transformers_baseline(source, batch)
    model = SentenceTransformer(str(source), device="cpu")
    version = __import__("sentence_transformers").__version__
    return (lambda texts: model.encode(texts, batch_size=batch, normalize_embeddings=False),
            f"sentence-transformers {version} (torch)")


def transformers_baseline(source: Path, batch: int):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(str(source)), AutoModel.from_pretrained(str(source)).eval()

    def encode(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch):
                inputs = tokenizer(texts[start:start + batch], padding=True, truncation=True, max_length=256,
                                   return_tensors="pt")
                hidden = model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)

    return encode, "transformers + mean pooling (torch)"


def server(work: Path, batch: int):
    """gunicorn serving the f16 GGUF; `batch` inputs per request, one request at a time."""
    import atexit

    import openai

    from factory.registry import Registry

    registry = Registry(work / f"registry-{batch}")
    registry.publish("minilm", {"gguf-f16": work / "gguf-f16"},
                     embedding=json.loads((work / "limits.json").read_text()))
    port = free_port()
    process = subprocess.Popen(SERVER_COMMAND, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "FACTORY_ROOT": str(work / f"root-{batch}"),
                                    "FACTORY_REGISTRY": str(registry.root), "FACTORY_SERVE_PORT": str(port),
                                    "FACTORY_SERVE_WORKERS": "1", "FACTORY_SERVE_LOGS_LEVEL": "warning"})
    atexit.register(process.terminate)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not _up(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} did not start")
        time.sleep(0.3)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def encode(texts: list[str]) -> list[list[float]]:
        vectors = []
        for start in range(0, len(texts), batch):
            response = client.embeddings.create(model="minilm", input=texts[start:start + batch])
            vectors += [item.embedding for item in response.data]
        return vectors

    return encode, "llm-factory server (HTTP) gguf-f16"


def _up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
