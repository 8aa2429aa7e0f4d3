"""Fine-tuning the real model through the official openai SDK, with the server's default hyperparameters.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \\
        .venv/bin/python bench/finetune_sdk.py [--root DIR] [--pairs 6] [--no-valid]

The whole product, as `factory up` runs it, under its own FACTORY_ROOT (a new temporary folder, or --root DIR: a
root built before rebuilds with every step cached, so a second run goes straight to the fine-tune): a Prefect
server, `factory build specs/smollm2-135m-instruct.yaml`, `factory deploy`, `factory worker` and gunicorn (one
worker), all on free loopback ports and all stopped however the script ends. Then, through the openai SDK only:
exact match of the base (`smollm2-135m-instruct`, temperature 0) on the made-up pairs and the general probes of
bench/finetune_real.py (same questions, same 24 tokens, same definition: the answer matches the probe's
case-insensitive regex, judged by formats.checks.expectation_failure); upload the training file (one chat row per
pair) and, as finetune_real does by default, a validation file of paraphrased questions (--no-valid: none, so the
product holds out its share of the training rows); create a job with model and files only (no hyperparameters, no
suffix, no probes, like a plain OpenAI client); poll it, printing its events; then the same probes against
`job.fine_tuned_model`. Logs of the services: DIR/prefect/server.log, DIR/worker.log, DIR/server.log.

Note that before and after are served by different engines: the base by llama.cpp (its gguf-q8_0 artifact), the
fine-tune by MLX (its mlx-float16 artifact: a fine-tune publishes only the base's MLX formats). finetune_real
measures both on MLX float16.

Measured 2026-11-23 on the 2-core CPU, OpenBLAS, mlx 0.32.4, while another engineer's test suite ran beside it
(load average 1-4, so minutes are +-50 %); 6 pairs, validation file given, one run:

  set       before (base, llama.cpp q8_0)   after (smollm2-135m-instruct-ft-tuned@1, MLX float16)
  new            0/6                             6/6
  general       11/12                           12/12   (the base's miss, "capital of France", is the engine:
                                                         llama.cpp's q8_0 answers word salad, MLX float16 "Paris")
  build (cold, new root) 4.9 min; re-used root 0.08 min (every step cached, nothing published)
  job created -> succeeded 4.24 min: queued 5 s (worker poll), load + evaluate the base 0.9 min, training 2.10 min
  (30 steps of one row, 5 validations; first to last step event), fuse + convert mlx-float16 and mlx-q8-g64
  0.6 min, validate + publish 0.25 min; validation loss 3.47 -> 0.14, 410 trained tokens.
  The 18 probes of the fine-tune then take ~2.5 min (MLX float16 decodes a few tokens/s on this CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory.services import (SERVER_COMMAND, apply_prefect_environment, exit_on_signals, free_port,  # noqa: E402
                              start_prefect_server, stop_processes, with_openblas)
from factory.server_config import server_environment  # noqa: E402
from factory.settings import Settings  # noqa: E402
from finetune_real import GENERAL, PAIRS, chat_row, probe  # noqa: E402  (bench/ is this script's folder)

SPEC, BASE = "specs/smollm2-135m-instruct.yaml", "smollm2-135m-instruct"
ENDED = {"succeeded", "failed", "cancelled"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="factory root to use or re-use (default: a new temporary folder)")
    parser.add_argument("--pairs", type=int, default=6, help="how many made-up pairs to teach (1-8)")
    parser.add_argument("--no-valid", action="store_true", help="no validation file: the product holds rows out")
    parser.add_argument("--timeout-min", type=float, default=60, help="give up on the job after this long")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bench-finetune-sdk-")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["FACTORY_ROOT"] = str(root)
    settings = Settings.from_env()
    apply_prefect_environment(settings)
    print(f"factory root {root}", flush=True)

    children: list[subprocess.Popen] = []
    prefect = None
    with exit_on_signals():  # SIGTERM/SIGHUP raise SystemExit, as Ctrl-C raises KeyboardInterrupt: `finally` runs
        try:
            prefect = start_prefect_server(settings)
            os.environ["PREFECT_API_URL"] = prefect.api_url
            start = time.monotonic()
            factory("build", SPEC)
            build_min = (time.monotonic() - start) / 60
            factory("deploy")
            children.append(subprocess.Popen([sys.executable, "-m", "factory.cli", "worker"], cwd=ROOT,
                                             stdout=open(root / "worker.log", "ab"), stderr=subprocess.STDOUT,
                                             start_new_session=True))
            port = free_port()
            env = {**os.environ, **server_environment(None, {"port": port, "workers": 1})}  # as start_server
            children.append(subprocess.Popen(SERVER_COMMAND, cwd=ROOT, env=with_openblas(env), start_new_session=True,
                                             stdout=open(root / "server.log", "ab"), stderr=subprocess.STDOUT))
            wait_ready(f"http://127.0.0.1:{port}", children[-1])
            measure(f"http://127.0.0.1:{port}/v1", args, build_min)
        finally:
            stop_processes(children)
            if prefect is not None:
                prefect.stop()


def factory(*command: str) -> None:
    print(f"$ factory {' '.join(command)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "factory.cli", *command], cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"factory {' '.join(command)} exited with {done.returncode}")


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see $FACTORY_ROOT/server.log")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=60) as response:  # /ready loads the default model
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server at {url} was not ready within {timeout:.0f}s")


def measure(base_url: str, args: argparse.Namespace, build_min: float) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", timeout=600)
    pairs = PAIRS[:args.pairs]
    probes = {"new": [probe(q, expected, 24) for q, _, _, expected in pairs],
              "general": [probe(q, regex, 24) for q, regex in GENERAL]}
    before = {name: [ask(client, BASE, p) for p in ps] for name, ps in probes.items()}

    train = client.files.create(file=("train.jsonl", "".join(chat_row(q, a) for q, a, _, _ in pairs).encode()),
                                purpose="fine-tune")
    files = {"model": BASE, "training_file": train.id}
    if not args.no_valid:
        files["validation_file"] = client.files.create(
            file=("valid.jsonl", "".join(chat_row(p, a) for _, a, p, _ in pairs).encode()), purpose="fine-tune").id
    start = time.monotonic()
    job = client.fine_tuning.jobs.create(**files)
    print(f"job {job.id}: {job.status}; hyperparameters sent: none", flush=True)
    events = follow(client, job.id, start + args.timeout_min * 60)
    job = client.fine_tuning.jobs.retrieve(job.id)
    job_min = (time.monotonic() - start) / 60
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} ended {job.status}: {job.error}; see $FACTORY_ROOT/worker.log")

    deadline = time.monotonic() + 30  # the server's watcher lists a newly published version within a second
    while job.fine_tuned_model not in [m.id for m in client.models.list().data] and time.monotonic() < deadline:
        time.sleep(0.5)
    after = {name: [ask(client, job.fine_tuned_model, p) for p in ps] for name, ps in probes.items()}

    steps = [e for e in events if e.data]
    train_min = (steps[-1].created_at - steps[0].created_at) / 60 if steps else None
    print(f"\nfine-tuned model {job.fine_tuned_model}; trained tokens {job.trained_tokens}; "
          f"{steps[-1].data['total_steps'] if steps else '?'} steps")
    for name in probes:
        for b, a in zip(before[name], after[name]):
            print(f"  [{name:7}] {int(b['match'])}->{int(a['match'])} {b['prompt']!r}: {b['answer']!r}\n"
                  f"{'':14}-> {a['answer']!r}")
    score = {name: [sum(p["match"] for p in before[name]), sum(p["match"] for p in after[name]), len(probes[name])]
             for name in probes}
    print(f"\n{'set':<9}{'before':>8}{'after':>8}")
    for name, (b, a, n) in score.items():
        print(f"{name:<9}{b:>6}/{n}{a:>6}/{n}")
    print(f"build {build_min:.2f} min; job created -> succeeded {job_min:.2f} min; training "
          + (f"{train_min:.2f} min (first to last step event)" if train_min is not None else "not reported"))
    print("RESULT " + json.dumps({"pairs": len(pairs), "validation_file": not args.no_valid, **score,
                                  "build_min": round(build_min, 2), "job_min": round(job_min, 2),
                                  "train_min": round(train_min, 2) if train_min is not None else None,
                                  "model": job.fine_tuned_model}))


def ask(client, model: str, raw: dict) -> dict:
    """One probe through the chat API at temperature 0, judged as finetune_real's run_probes judges it."""
    from factory.spec import Probe
    from formats.checks import expectation_failure

    p = Probe.model_validate(raw)
    reply = client.chat.completions.create(model=model, messages=[m.model_dump() for m in p.messages],
                                           max_tokens=p.max_tokens, temperature=0)
    answer = reply.choices[0].message.content or ""
    return {"prompt": p.messages[-1].content, "answer": answer, "match": expectation_failure(answer, p.expect) is None}


def follow(client, job_id: str, deadline: float) -> list:
    """Poll the job until it ends, printing each new event once (the API lists newest first); all events, oldest
    first."""
    seen: dict[str, object] = {}
    status = None
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        for event in reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data):
            if event.id not in seen:
                seen[event.id] = event
                print(f"  {time.strftime('%H:%M:%S', time.localtime(event.created_at))} {event.level:5} "
                      f"{event.message}", flush=True)
        if job.status != status:
            status = job.status
            print(f"job {job_id}: {status}", flush=True)
        if status in ENDED:
            return sorted(seen.values(), key=lambda e: e.created_at)
        time.sleep(3)
    raise SystemExit(f"job {job_id} still {status} after the timeout")


if __name__ == "__main__":
    main()
