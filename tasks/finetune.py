"""Fine-tune steps: check and split the data, then train (LoRA, DoRA, QLoRA or full) with mlx-lm's tuner, measure
before and after, and fuse the result into a plain model directory the convert step can take.

Losses are logged to Prefect as `step N/M: train loss X` / `step N/M: valid loss X` lines (the server's job events
read them back), and drawn as a PNG loss curve.
"""
from __future__ import annotations

import json
import math
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.concurrency.sync import concurrency
from prefect.logging import get_run_logger

from factory.content_keys import content_key
from factory.storage import sha256_file, write_durably
from factory.spec import FINE_TUNE_METHODS
from factory.training_data import TrainingData, parse_training_jsonl, split_train_valid
from formats.checks import expectation_failure
from tasks.convert import HEAVY


@dataclass(frozen=True)
class TrainingSettings:
    """What to train and how. `epochs` and `batch_size` left as None are "auto" (OpenAI's word): they follow the
    size of the training set, see `batch` and `iterations`; `learning_rate` left as None follows the method.

    The defaults are measured (bench/finetune_real.py, SmolLM2-135M-Instruct): with six made-up facts, one example
    per step for five epochs teaches all six in about two minutes on two CPU cores while the model keeps its general
    answers (11-12 of 12) -- at 3e-5 for the adapters (their update is scaled by 20, see _make_trainable), 1e-5
    for full fine-tuning. A higher rate or more passes overwrite what the model knew ("the capital of France is
    Blorptown"); a lower rate or fewer passes leave facts unlearned. An explicit n_epochs of 3 teaches 1 of 6.
    """
    method: str = "lora"
    iters: int | None = None
    epochs: int | None = None  # None: auto, see iterations()
    batch_size: int | None = None  # None: auto, see batch()
    learning_rate: float | None = None  # None: LEARNING_RATES[method]
    rank: int = 8
    layers: int | None = None  # None: every layer
    seed: int = 0
    max_seq_length: int = 2048

    LEARNING_RATES = {"lora": 3e-5, "dora": 3e-5, "qlora": 3e-5, "full": 1e-5}
    SMALL_SET = 32  # training rows; up to this many, auto trains one row per step for SMALL_SET_EPOCHS passes
    SMALL_SET_EPOCHS = 5
    EPOCHS = 3
    BATCH_SIZE = 4

    def __post_init__(self):
        if self.learning_rate is None:
            rate = self.LEARNING_RATES.get(self.method, self.LEARNING_RATES["lora"])
            object.__setattr__(self, "learning_rate", rate)

    @classmethod
    def from_hyperparameters(cls, values: dict[str, Any], seed: int = 0) -> "TrainingSettings":
        """OpenAI's names (`n_epochs`, `batch_size`, `learning_rate_multiplier`, each may be "auto") and ours."""
        def given(key):
            value = values.get(key)
            return None if value in (None, "auto") else value

        settings = cls(method=given("method") or cls.method, seed=seed)
        multiplier = given("learning_rate_multiplier")
        batch_size = given("batch_size")
        return cls(
            method=settings.method,
            iters=given("iters"),
            epochs=given("n_epochs") or given("epochs"),
            batch_size=int(batch_size) if batch_size else None,
            learning_rate=float(given("learning_rate") or settings.learning_rate * (multiplier or 1)),
            rank=int(given("rank") or settings.rank),
            layers=given("layers"),
            seed=seed,
        )

    def batch(self, train_examples: int) -> int:
        """Rows per step. Auto: mlx-lm's 4 when `iters` is given (steps then mean what they mean to mlx_lm.lora),
        else one row per step for small sets: mlx-lm sorts rows by length into fixed batches and never trains the
        remainder (the longest rows), so 6 facts in batches of 4 teach only 4."""
        if self.batch_size:
            return max(1, min(int(self.batch_size), train_examples))
        if self.iters or train_examples > self.SMALL_SET:
            return min(self.BATCH_SIZE, train_examples)
        return 1

    def iterations(self, train_examples: int) -> int:
        if self.iters:
            return int(self.iters)
        epochs = int(self.epochs or (self.SMALL_SET_EPOCHS if train_examples <= self.SMALL_SET else self.EPOCHS))
        return max(1, epochs * math.ceil(train_examples / self.batch(train_examples)))


@dataclass(frozen=True)
class PreparedData:
    directory: str  # holds train.jsonl and valid.jsonl
    shape: str
    train_examples: int
    valid_examples: int
    digest: str


@dataclass
class TrainingOutcome:
    directory: str  # training/: adapter (if any), loss_curve.png, metrics.json
    fused: str  # a complete model directory with the fine-tuned weights
    iterations: int
    trained_tokens: int
    valid_loss_before: float
    valid_loss_after: float
    exact_match_before: int
    exact_match_after: int
    probes: list[dict[str, Any]] = field(default_factory=list)
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    valid_losses: list[tuple[int, float]] = field(default_factory=list)

    @property
    def valid_loss_drop(self) -> float:
        """Relative drop of the validation loss: 0.25 means 25 % lower after training."""
        return (self.valid_loss_before - self.valid_loss_after) / self.valid_loss_before


@task(task_run_name="prepare training data")
def prepare_training_data(train_file: str, valid_file: str | None, runs_dir: str, seed: int = 0) -> PreparedData:
    """Check every line (a TrainingDataError names the bad ones), hold out validation data if none was given."""
    train = parse_training_jsonl(Path(train_file).read_text(), name=Path(train_file).name)
    if valid_file:
        valid = parse_training_jsonl(Path(valid_file).read_text(), name=Path(valid_file).name)
        train_rows, valid_rows = train.examples, valid.examples
    else:
        train_rows, valid_rows = split_train_valid(train, seed=seed)
    digest = content_key(sha256_file(Path(train_file)), sha256_file(Path(valid_file)) if valid_file else None, seed)
    directory = Path(runs_dir) / "finetune" / digest[:24] / "data"
    directory.mkdir(parents=True, exist_ok=True)
    write_durably(directory / "train.jsonl", TrainingData(train.shape, train_rows).to_jsonl().encode())
    write_durably(directory / "valid.jsonl", TrainingData(train.shape, valid_rows).to_jsonl().encode())
    get_run_logger().info("training data: %d %s examples, %d held out for validation", len(train_rows),
                          train.shape, len(valid_rows))
    return PreparedData(directory=str(directory), shape=train.shape, train_examples=len(train_rows),
                        valid_examples=len(valid_rows), digest=digest)


@task(task_run_name="fine-tune ({settings.method})")
def train_and_fuse(base_dir: str, data: PreparedData, settings: TrainingSettings, probes: list[dict[str, Any]],
                   out_dir: str) -> TrainingOutcome:
    """Evaluate the base, train, evaluate again, save the adapter and a fused model directory."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.datasets import CacheDataset, create_dataset
    from mlx_lm.tuner.trainer import TrainingArgs, evaluate, train

    logger = get_run_logger()
    out = Path(out_dir)
    training_dir, fused_dir = out / "training", out / "fused"
    training_dir.mkdir(parents=True, exist_ok=True)
    with concurrency(HEAVY, occupy=1):
        model, tokenizer, config = load(base_dir, return_config=True)
        options = types.SimpleNamespace(mask_prompt=data.shape != "text")
        rows = {name: [json.loads(line) for line in (Path(data.directory) / f"{name}.jsonl").read_text().splitlines()]
                for name in ("train", "valid")}
        batch = settings.batch(data.train_examples)
        # mlx-lm evaluates during training with the training batch size; repeating a small held-out set up to one
        # batch lets it run without changing the mean loss.
        repeats = math.ceil(batch / len(rows["valid"]))
        train_set = CacheDataset(create_dataset(rows["train"], tokenizer, options))
        valid_set = CacheDataset(create_dataset(rows["valid"] * repeats, tokenizer, options))
        iterations = settings.iterations(data.train_examples)

        def valid_loss() -> float:
            return float(evaluate(model, valid_set, batch_size=batch, num_batches=-1,
                                  max_seq_length=settings.max_seq_length))

        before, probes_before = valid_loss(), run_probes(model, tokenizer, probes)
        layers = _make_trainable(model, settings, config)
        reporter = LossReporter(logger, iterations)
        mx.random.seed(settings.seed)
        np.random.seed(settings.seed)  # mlx-lm shuffles batches with numpy's global generator
        train(model=model, optimizer=optim.Adam(learning_rate=settings.learning_rate),
              train_dataset=train_set, val_dataset=valid_set, training_callback=reporter,
              args=TrainingArgs(batch_size=batch, iters=iterations, val_batches=-1,
                                steps_per_report=max(1, iterations // 20), steps_per_eval=max(1, iterations // 5),
                                steps_per_save=iterations + 1, adapter_file=str(training_dir / "adapters.safetensors"),
                                max_seq_length=settings.max_seq_length))
        after, probes_after = valid_loss(), run_probes(model, tokenizer, probes)
        _save_adapter(model, settings, layers, training_dir)
        _save_fused(model, tokenizer, config, base_dir, fused_dir, dequantize=settings.method == "qlora")
    outcome = TrainingOutcome(
        directory=str(training_dir), fused=str(fused_dir), iterations=iterations, trained_tokens=reporter.tokens,
        valid_loss_before=before, valid_loss_after=after,
        exact_match_before=sum(p["match"] for p in probes_before),
        exact_match_after=sum(p["match"] for p in probes_after),
        probes=[{**b, "answer_before": b["answer"], "answer_after": a["answer"], "match_before": b["match"],
                 "match_after": a["match"]} for b, a in zip(probes_before, probes_after)],
        train_losses=reporter.train, valid_losses=reporter.valid,
    )
    write_durably(training_dir / "metrics.json", json.dumps(asdict(outcome), indent=2).encode())
    logger.info("valid loss %.4f -> %.4f (%.0f %% lower); exact match %d -> %d of %d", before, after,
                100 * outcome.valid_loss_drop, outcome.exact_match_before, outcome.exact_match_after, len(probes))
    return outcome


def run_probes(model, tokenizer, probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Greedy answers to probe prompts; `match` when the answer meets the probe's expectation."""
    from mlx_lm import generate

    from factory.spec import Probe

    results = []
    for raw in probes:
        probe = Probe.model_validate(raw)
        prompt = (tokenizer.apply_chat_template([m.model_dump() for m in probe.messages], add_generation_prompt=True,
                                                tokenize=False) if probe.messages else probe.prompt)
        answer = generate(model, tokenizer, prompt, max_tokens=probe.max_tokens)
        results.append({"prompt": probe.messages[-1].content if probe.messages else probe.prompt,
                        "answer": answer, "match": expectation_failure(answer, probe.expect) is None})
    return results


class LossReporter:
    """mlx-lm training callback: log each reported loss to Prefect and keep the curve."""

    def __init__(self, logger, iterations: int):
        self.logger, self.iterations = logger, iterations
        self.train: list[tuple[int, float]] = []
        self.valid: list[tuple[int, float]] = []
        self.tokens = 0

    def on_train_loss_report(self, info: dict) -> None:
        self.train.append((info["iteration"], float(info["train_loss"])))
        self.tokens = int(info.get("trained_tokens", self.tokens))
        self.logger.info("step %d/%d: train loss %.4f", info["iteration"], self.iterations, info["train_loss"])

    def on_val_loss_report(self, info: dict) -> None:
        self.valid.append((info["iteration"], float(info["val_loss"])))
        self.logger.info("step %d/%d: valid loss %.4f", info["iteration"], self.iterations, info["val_loss"])


def _make_trainable(model, settings: TrainingSettings, config: dict) -> int:
    """Freeze the base and open the trained part; returns how many (last) layers are trained, clamped to depth."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    if settings.method not in FINE_TUNE_METHODS:
        raise ValueError(f"method must be one of {', '.join(FINE_TUNE_METHODS)}, not {settings.method!r}")
    if settings.method == "qlora" and "quantization" not in config:
        raise ValueError("qlora trains on a quantized base; this base artifact is not quantized")
    layers = min(int(settings.layers or len(model.layers)), len(model.layers))
    model.freeze()
    import mlx.core as mx

    # Train in float32: updates on float16 weights overflow into NaN. Quantized weights keep their packing.
    model.set_dtype(mx.float32)
    if settings.method == "full" and settings.layers is None:
        model.unfreeze()  # everything, embeddings and output head included
    elif settings.method == "full":
        for layer in model.layers[-layers:]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(model, layers, {"rank": settings.rank, "scale": 20.0, "dropout": 0.0},
                              use_dora=settings.method == "dora")
    return layers


def _save_adapter(model, settings: TrainingSettings, layers: int, directory: Path) -> None:
    """Trained weights plus an adapter_config.json that `mlx_lm.load(base, adapter_path=...)` understands."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    mx.save_safetensors(str(directory / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    kind = "lora" if settings.method == "qlora" else settings.method
    config = {"fine_tune_type": kind, "num_layers": layers,
              "lora_parameters": {"rank": settings.rank, "scale": 20.0, "dropout": 0.0}}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))


def _save_fused(model, tokenizer, config: dict, base_dir: str, out: Path, dequantize: bool) -> None:
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, save

    fused = [(name, module.fuse(dequantize=dequantize)) for name, module in model.named_modules()
             if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    config = dict(config)
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    save(out, base_dir, model, tokenizer, config, donate_model=False)
