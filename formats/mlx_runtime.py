"""What validation needs from MLX: load an artifact, render its chat template, generate greedily, measure.

Kept apart from the report logic in `tasks/validate.py` so another runtime (the Core ML program evaluator,
`formats/coreml/runtime.py`) can offer the same four functions.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any

    @classmethod
    def load(cls, path: Path) -> "LoadedModel":
        from mlx_lm import load

        model, tokenizer = load(str(path))
        return cls(model, tokenizer)

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, prompt: str, max_tokens: int) -> tuple[str, float, float]:
        """Greedy completion of `prompt`: (text, decode tokens/s, peak memory MB)."""
        from mlx_lm import stream_generate

        text, tps, peak = "", 0.0, 0.0
        for response in stream_generate(self.model, self.tokenizer, prompt, max_tokens=max_tokens):
            text += response.text
            tps, peak = response.generation_tps, response.peak_memory * 1024
        return text, tps, peak

    def perplexity(self, eval_file: Path) -> float:
        """exp(mean token negative log-likelihood) over every example in a JSONL file."""
        import mlx.core as mx
        import mlx.nn as nn

        def summed_nll(tokens: list[int]) -> float:
            inputs = mx.array(tokens)[None]
            logits = self.model(inputs[:, :-1]).astype(mx.float32)
            return nn.losses.cross_entropy(logits, inputs[:, 1:], reduction="sum").item()

        return perplexity(self.tokenizer, eval_file, summed_nll)

    def release(self) -> None:
        import mlx.core as mx

        self.model = self.tokenizer = None
        mx.clear_cache()


def eval_texts(tokenizer, eval_file: Path):
    """The texts of an evaluation JSONL file (`text`, chat `messages`, or `prompt` + `completion` rows)."""
    for number, line in enumerate(eval_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "text" in row:
            yield row["text"]
        elif "messages" in row:
            yield tokenizer.apply_chat_template(row["messages"], tokenize=False)
        elif "prompt" in row and "completion" in row:
            yield row["prompt"] + row["completion"]
        else:
            raise ValueError(f"{eval_file}:{number}: expected a 'text', 'messages' or 'prompt'+'completion' row")


def perplexity(tokenizer, eval_file: Path, summed_nll, max_tokens: int | None = None) -> float:
    """exp(mean token negative log-likelihood) over the texts of `eval_file`, each cut to `max_tokens`;
    `summed_nll(tokens)` returns the summed NLL of tokens[1:], each given the tokens before it."""
    total, count = 0.0, 0
    for text in eval_texts(tokenizer, eval_file):
        tokens = tokenizer.encode(text)[:max_tokens]
        if len(tokens) < 2:
            continue
        total += summed_nll(tokens)
        count += len(tokens) - 1
    if count == 0:
        raise ValueError(f"{eval_file} has no example of two or more tokens")
    return math.exp(total / count)
