"""GGUF validation: read the file back with `gguf.GGUFReader`, check its structure against the source config, then
put its (dequantized) tensors into the source's mlx-lm model and compare logits with the source weights on fixed
prompts: argmax agreement and relative error, with thresholds per quantization type. When llama-cpp-python is
installed, llama.cpp itself loads the file and its logits are compared the same way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from formats.checks import check, gate
from formats.gguf.export import (ROPE_FREQS, GgufExportError, gguf_names, hf_tensor_shapes, hf_tensors_from_gguf,
                                 llama3_rope_freqs, rope_scaling)
from formats.gguf.files import gguf_file
from formats.mlx_runtime import LoadedModel

# (minimum argmax agreement, maximum error relative to the largest source logit)
THRESHOLDS = {"F16": (0.98, 0.01), "Q8_0": (0.90, 0.05), "Q4_0": (0.60, 0.35), "Q4_K": (0.60, 0.35),
              "Q5_0": (0.70, 0.25), "Q6_K": (0.80, 0.15)}
PROBE_TEXTS = ["def main():\n    return 42\n", "The lighthouse keeper looked at the sea and said"]


def structure_checks(path: Path, source: Path) -> tuple[list[dict[str, Any]], Any]:
    import gguf

    config = json.loads((source / "config.json").read_text())
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # a truncated or corrupted file
        return [check("reads", False, detail=f"{type(exc).__name__}: {exc}")], None
    results = [check("reads", True, value=f"{len(reader.tensors)} tensors")]
    arch = reader.fields["general.architecture"].contents()
    results.append(check("architecture", arch == config["model_type"], arch, f"source is {config['model_type']}"))
    tokens = len(reader.fields["tokenizer.ggml.tokens"].contents())
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    rows = int(embedding.shape[-1]) if embedding is not None else None
    results.append(check("vocabulary", tokens == config["vocab_size"] == rows, tokens,
                         f"config vocab_size {config['vocab_size']}, token_embd rows {rows}"))
    hf = _exported_shapes(source, config)
    expected = {gguf_name: tuple(reversed(hf[hf_name])) for hf_name, gguf_name in gguf_names(config, list(hf)).items()}
    found = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors if t.name != ROPE_FREQS}
    wrong = sorted(n for n in expected if found.get(n) != expected[n]) + sorted(set(found) - set(expected))
    results.append(check("tensor_shapes", not wrong, len(found), f"mismatched: {', '.join(wrong[:5])}" if wrong else ""))
    results.append(rope_scaling_check(reader, config))
    return results, reader


def rope_scaling_check(reader, config: dict) -> dict[str, Any]:
    """The file scales RoPE as the source config does: linear through the `rope.scaling` keys, llama3 through the
    `rope_freqs.weight` values; and nothing else scales it (a short probe cannot see a wrong low frequency)."""
    import gguf

    try:
        scaling = rope_scaling(config)
        expected_freqs = llama3_rope_freqs(config)
    except GgufExportError as exc:
        return check("rope_scaling", False, None, str(exc))
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    arch = config["model_type"]
    kind, factor = field(f"{arch}.rope.scaling.type"), field(f"{arch}.rope.scaling.factor")
    problems = []
    if scaling is not None and scaling["rope_type"] == "linear":
        if kind != "linear" or factor is None or not np.isclose(factor, float(scaling["factor"])):
            problems.append(f"rope.scaling {kind} factor {factor}, source linear factor {scaling['factor']}")
    elif kind not in (None, "none", "linear") or (kind != "none" and factor not in (None, 0.0, 1.0)):
        problems.append(f"rope.scaling {kind} factor {factor}, source has no such scaling")  # no type: linear
    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if tensor is not None and expected_freqs is None:
        problems.append(f"{ROPE_FREQS} present, source has no llama3 scaling")
    elif tensor is None and expected_freqs is not None:
        problems.append(f"no {ROPE_FREQS}: llama.cpp would not apply the source's llama3 scaling")
    elif tensor is not None:
        freqs = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).ravel()
        if freqs.shape != expected_freqs.shape or not np.allclose(freqs, expected_freqs, rtol=1e-5):
            problems.append(f"{ROPE_FREQS} {np.round(freqs, 4).tolist()}, source's llama3 scaling gives "
                            f"{np.round(expected_freqs, 4).tolist()}")
    return check("rope_scaling", not problems, scaling["rope_type"] if scaling else "none", "; ".join(problems))


def numeric_checks(reader, path: Path, source: Path) -> tuple[list[dict[str, Any]], LoadedModel]:
    """Logits of the source weights vs the GGUF's weights in the same mlx-lm model (returned, for more checks)."""
    import mlx.core as mx
    from mlx_lm import load

    config = json.loads((source / "config.json").read_text())
    model, tokenizer = load(str(source))
    model.set_dtype(mx.float32)
    prompts = [mx.array(tokenizer.encode(text))[None] for text in PROBE_TEXTS]
    reference = [model(p).astype(mx.float32) for p in prompts]

    weights = hf_tensors_from_gguf(reader, config, list(_exported_shapes(source, config)))
    model.load_weights([(name, mx.array(data)) for name, data in weights.items()], strict=False)
    candidate = [model(p).astype(mx.float32) for p in prompts]

    agree = np.mean(np.concatenate([np.array(mx.argmax(a, -1) == mx.argmax(b, -1)).ravel()
                                    for a, b in zip(reference, candidate)]))
    scale = max(float(mx.abs(r).max()) for r in reference)
    error = max(float(mx.abs(a - b).max()) for a, b in zip(reference, candidate)) / scale
    qtype = _dominant_type(reader)
    min_agree, max_error = THRESHOLDS.get(qtype, (0.5, 0.5))
    results = [gate("argmax_agreement", round(float(agree), 4), "min", min_agree, qtype),
               gate("logit_error", round(error, 5), "max", max_error, f"{qtype}; relative to the largest logit")]
    results += llamacpp_checks(path, source, [np.array(r[0]) for r in reference], [p[0].tolist() for p in prompts],
                               qtype)
    return results, LoadedModel(model, tokenizer)


def llamacpp_checks(path: Path, source: Path, reference: list[np.ndarray], prompts: list[list[int]],
                    qtype: str) -> list[dict[str, Any]]:
    """The same comparison through llama.cpp itself (when installed): its logits vs the source's, per prompt."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return [check("llama_cpp", True, None, "not run: llama-cpp-python is not installed")]
    llm = Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False)
    try:
        agree, errors = [], []
        for tokens, expected in zip(prompts, reference):
            llm.reset()
            llm.eval(tokens)
            logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
            agree.append(np.argmax(logits, -1) == np.argmax(expected, -1))
            errors.append(np.abs(logits - expected).max() / np.abs(expected).max())
    finally:
        llm.close()
    agreement, error = float(np.mean(np.concatenate(agree))), float(max(errors))
    min_agree, max_error = THRESHOLDS.get(qtype, (0.5, 0.5))
    return [gate("llama_cpp_argmax_agreement", round(agreement, 4), "min", min_agree, qtype),
            gate("llama_cpp_logit_error", round(error, 5), "max", max_error, f"{qtype}; relative to the largest logit")]


def _exported_shapes(source: Path, config: dict) -> dict[str, tuple[int, ...]]:
    """The source tensors an export writes: all of them, less the output head of a tied model."""
    shapes = hf_tensor_shapes(source)
    if config.get("tie_word_embeddings"):
        shapes.pop("lm_head.weight", None)
    return shapes


def _dominant_type(reader) -> str:
    types = [t.tensor_type.name for t in reader.tensors if len(t.shape) > 1]
    return max(set(types), key=types.count)


def validate_gguf(artifact_dir: Path, source: Path) -> tuple[list[dict[str, Any]], LoadedModel | None]:
    """Structure, then numerics; returns the checks and, when the file is sound, a model running its weights."""
    try:
        path = gguf_file(artifact_dir)
    except FileNotFoundError as exc:
        return [check("reads", False, detail=str(exc))], None
    results, reader = structure_checks(path, source)
    if reader is None or not all(r["passed"] for r in results):
        return results, None
    numeric, model = numeric_checks(reader, path, source)
    return results + numeric, model
