"""What validation needs from a Core ML artifact, offered like `formats/mlx_runtime.LoadedModel`: render the chat
template, generate greedily, compute perplexity — all through the saved program itself (`formats/coreml/program.py`)
and the tokenizer files exported next to it. Speed is not measured: here the program runs in coremltools' numpy
evaluator, not in Core ML.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from formats.coreml.export import attention_mask
from formats.coreml.program import CoremlProgram
from formats.mlx_runtime import perplexity


class CoremlLanguageModel:
    def __init__(self, program: CoremlProgram, tokenizer):
        self.program, self.tokenizer = program, tokenizer
        self.context = int(program.states["key_cache"].shape[3])

    @classmethod
    def load(cls, artifact_dir: Path) -> "CoremlLanguageModel":
        from mlx_lm.utils import load_tokenizer

        config = json.loads((artifact_dir / "config.json").read_text())  # exported next to the package
        tokenizer = load_tokenizer(artifact_dir, eos_token_ids=config.get("eos_token_id"))
        return cls(CoremlProgram.from_artifact(artifact_dir), tokenizer)

    def step(self, tokens: list[int], past: int) -> np.ndarray:
        """Feed `tokens` after `past` cached ones; returns their logits (len(tokens), vocab) as float32."""
        outputs = self.program({"input_ids": np.array([tokens], dtype=np.int32),
                                "causal_mask": attention_mask(past, len(tokens))})
        return outputs["logits"][0].astype(np.float32)

    def logits(self, tokens: list[int], split: int | None = None) -> np.ndarray:
        """Logits of a fresh sequence; with `split`, fed in two calls so the second reads the first from the cache."""
        self.program.reset()
        split = len(tokens) if split is None else split
        parts = [self.step(tokens[:split], 0)] + ([self.step(tokens[split:], split)] if split < len(tokens) else [])
        return np.concatenate(parts)

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, prompt: str, max_tokens: int) -> tuple[str, float, float]:
        """Greedy completion of `prompt` through the program: (text, 0, 0) — speed is not measured here."""
        tokens = self.tokenizer.encode(prompt)[-max(1, self.context - max_tokens):]  # room for the answer
        self.program.reset()
        logits, past, generated = self.step(tokens, 0), 0, []
        for _ in range(max_tokens):
            token = int(np.argmax(logits[-1]))
            if token in self.tokenizer.eos_token_ids:
                break
            generated.append(token)
            past += len(tokens)
            tokens = [token]
            logits = self.step(tokens, past)
        return self.tokenizer.decode(generated), 0.0, 0.0

    def perplexity(self, eval_file: Path) -> float:
        def summed_nll(tokens: list[int]) -> float:
            logits = self.logits(tokens[:-1])
            log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
            return -float(log_probs[np.arange(len(tokens) - 1), tokens[1:]].sum())

        return perplexity(self.tokenizer, eval_file, summed_nll, max_tokens=self.context)

    def release(self) -> None:
        self.program = self.tokenizer = None
