"""Core ML validation on any host: inspect the package's spec (interface, states, deployment target, op counts,
weight bytes), then evaluate the saved program itself (`formats/coreml/program.py`) and compare its logits with the
source model's (run by mlx-lm, an independent implementation) on fixed prompts, each fed in two calls so the second
half reads the first from the KV cache state. Thresholds depend on precision and weight compression.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from formats.checks import check, gate
from formats.coreml.export import PACKAGE, PALETTE_GROUP, quiet_coremltools
from formats.coreml.runtime import CoremlLanguageModel
from formats.gguf.check import PROBE_TEXTS
from formats.gguf.export import hf_tensor_shapes

# (minimum argmax agreement, maximum error relative to the largest source logit), by compression or precision
THRESHOLDS = {"float32": (0.98, 0.01), "float16": (0.98, 0.02), "int8": (0.90, 0.05), "palettize4": (0.60, 0.35)}
IOS18 = 9  # Core ML specification version of iOS 18 / macOS 15, the first with states
COMPRESS_THRESHOLD = 2048  # coremltools leaves constants of this many elements or fewer uncompressed


def spec_checks(spec, config: dict, shapes: dict[str, tuple[int, ...]], weights: Path) -> list[dict[str, Any]]:
    """What an app relies on, read from the package: names, shapes, states, target, ops and weight bytes."""
    description = spec.description
    metadata = dict(description.metadata.userDefined)
    context = int(metadata.get("llm_factory.context_length", 0))
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    cache = (config["num_hidden_layers"], 1, config["num_key_value_heads"], context, head_dim)
    names = ([i.name for i in description.input], [o.name for o in description.output],
             [s.name for s in description.state])
    expected_names = (["input_ids", "causal_mask"], ["logits"], ["key_cache", "value_cache"])
    states = {s.name: tuple(s.type.stateType.arrayType.shape) for s in description.state}
    ranges = {i.name: [(r.lowerBound, r.upperBound) for r in i.type.multiArrayType.shapeRange.sizeRanges]
              for i in description.input}
    operations = program_operations(spec)
    linear_expected = 7 * config["num_hidden_layers"] + 1  # q, k, v, o, gate, up, down per layer; the output head
    return [
        check("interface", names == expected_names, "inputs " + ", ".join(names[0]),
              "" if names == expected_names else f"expected {expected_names}, found {names}"),
        check("flexible_length", ranges.get("input_ids") == [(1, 1), (1, context)], f"1..{context} tokens",
              f"input_ids ranges {ranges.get('input_ids')}"),
        check("kv_states", all(shape == cache for shape in states.values()) and len(states) == 2,
              "x".join(map(str, cache)), f"found {states}"),
        check("deployment_target", spec.specificationVersion >= IOS18, spec.specificationVersion,
              "states need specification version 9 (macOS 15 / iOS 18)"),
        check("linear_ops", operations["linear"] == linear_expected, operations["linear"],
              f"expected {linear_expected}; {sum(operations.values())} ops in all"),
        weight_bytes_check(weights, shapes, 2 * context * head_dim, metadata),
    ]


def program_operations(spec) -> Counter:
    main = spec.mlProgram.functions["main"]
    return Counter(op.type for op in main.block_specializations[main.opset].operations)


def weight_bytes_check(weights: Path, shapes: dict[str, tuple[int, ...]], rope_elements: int,
                       metadata: dict) -> dict[str, Any]:
    """The weight file should hold each source tensor once, at the declared precision and compression (±10 %)."""
    found = sum(f.stat().st_size for f in weights.rglob("*") if f.is_file())
    expected = expected_weight_bytes(shapes, rope_elements, metadata)
    within = abs(found - expected) <= 0.1 * expected
    return check("weight_bytes", within, found, f"expected about {expected} for "
                                               f"{metadata.get('llm_factory.precision')}/"
                                               f"{metadata.get('llm_factory.compress')}")


def expected_weight_bytes(shapes: dict[str, tuple[int, ...]], rope_elements: int, metadata: dict) -> int:
    """Source tensors at the declared precision/compression, plus the rotary cos/sin tables (uncompressed)."""
    float_bytes = 2 if metadata.get("llm_factory.precision") == "float16" else 4
    compress = metadata.get("llm_factory.compress", "none")
    total = 0
    for shape in shapes.values():
        elements = int(np.prod(shape))
        if len(shape) != 2 or elements <= COMPRESS_THRESHOLD or compress == "none":
            total += elements * float_bytes
        elif compress == "int8":
            total += elements + shape[0] * float_bytes  # one scale per output channel
        else:  # 4-bit indices and a 16-entry table per group of output channels
            total += elements // 2 + -(-shape[0] // PALETTE_GROUP) * 16 * float_bytes
    return total + rope_elements * float_bytes


def numeric_checks(model: CoremlLanguageModel, source: Path, key: str) -> list[dict[str, Any]]:
    import mlx.core as mx
    from mlx_lm import load

    reference_model, tokenizer = load(str(source))
    reference_model.set_dtype(mx.float32)
    agree, errors = [], []
    for text in PROBE_TEXTS:
        tokens = tokenizer.encode(text)[: model.context]
        reference = np.array(reference_model(mx.array(tokens)[None])[0].astype(mx.float32))
        candidate = model.logits(tokens, split=len(tokens) // 2)
        agree.append(np.argmax(candidate, -1) == np.argmax(reference, -1))
        errors.append(float(np.abs(candidate - reference).max() / np.abs(reference).max()))
    agreement, error = float(np.mean(np.concatenate(agree))), max(errors)
    min_agree, max_error = THRESHOLDS[key]
    return [gate("argmax_agreement", round(agreement, 4), "min", min_agree, key),
            gate("logit_error", round(error, 5), "max", max_error, f"{key}; relative to the largest logit")]


def predict_check(package: Path, precision: str) -> dict[str, Any]:
    """On macOS, Core ML itself loads the package and predicts one step; elsewhere there is no Core ML runtime.
    (Written to Core ML's documented API but never run here: these machines are Linux.)"""
    if sys.platform != "darwin":
        return check("predict", True, None, "not run: Core ML predicts on macOS only")
    ct = quiet_coremltools()
    try:
        model = ct.models.MLModel(str(package))
        state = model.make_state()
        logits = model.predict({"input_ids": np.array([[1, 2]], dtype=np.int32),
                                "causal_mask": np.array([[[[0, -np.inf], [0, 0]]]], dtype=precision)}, state)["logits"]
    except Exception as exc:  # Core ML refusing the package is a failed check
        return check("predict", False, detail=f"{type(exc).__name__}: {exc}")
    return check("predict", bool(np.isfinite(logits).all()), list(np.shape(logits)))


def validate_coreml(artifact_dir: Path, source: Path) -> tuple[list[dict[str, Any]], CoremlLanguageModel | None]:
    """Spec inspection, then numerics; returns the checks and, when the package is sound, the program as a model."""
    ct = quiet_coremltools()
    package = artifact_dir / PACKAGE
    try:
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    except Exception as exc:  # a missing or corrupted package
        return [check("reads", False, detail=f"{type(exc).__name__}: {exc}")], None
    config = json.loads((source / "config.json").read_text())
    shapes = hf_tensor_shapes(source)
    if config.get("tie_word_embeddings"):  # the export stores the shared tensor once
        shapes.pop("lm_head.weight", None)
    results = [check("reads", True, value=f"spec version {spec.specificationVersion}")]
    results += spec_checks(spec, config, shapes, package / "Data" / "com.apple.CoreML" / "weights")
    if not all(r["passed"] for r in results):
        return results, None
    metadata = dict(spec.description.metadata.userDefined)
    key = metadata["llm_factory.compress"] if metadata["llm_factory.compress"] != "none" \
        else metadata["llm_factory.precision"]
    try:
        model = CoremlLanguageModel.load(artifact_dir)
        results += numeric_checks(model, source, key)
    except Exception as exc:  # a program that cannot be evaluated fails validation; it must not crash the build
        return results + [check("evaluates", False, detail=f"{type(exc).__name__}: {exc}")], None
    results.append(predict_check(package, metadata["llm_factory.precision"]))
    return results, model
