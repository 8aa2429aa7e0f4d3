"""Core ML export: a stateful ML Program (`model.mlpackage`, macOS 15 / iOS 18) for llama and qwen2 models.

The source's safetensors go into the small torch decoder of `formats/coreml/model.py`, which is traced and converted
by coremltools with a flexible sequence length (1 … context length) and its KV cache as two float16 states, so an
app feeds only new tokens. Precision is float16 (the default; what the Neural Engine runs) or float32; weights can
then be compressed to int8 (per-channel linear quantization) or 4-bit palettes (k-means, a 16-entry table per group
of 16 output channels). The tokenizer files travel next to the package, since an app needs both.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from pathlib import Path

from factory.spec import CoremlFormat

PACKAGE = "model.mlpackage"
TOKENIZER_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")
# Output channels sharing one 16-entry look-up table, as in Apple's LLM examples. Each group is one k-means run, so
# palettizing a 0.5B model took 24 min on 2 cores.
PALETTE_GROUP = 16


def attention_mask(past: int, length: int):
    """The package's `causal_mask` input for `length` new tokens after `past` cached ones, (1, 1, length,
    past + length): 0 where a token may attend (the cache, the tokens before it, itself), -inf after."""
    import numpy as np

    return np.triu(np.full((length, past + length), -np.inf, dtype=np.float32), k=past + 1)[None, None]


def quiet_coremltools():
    """Import coremltools without its Linux noise (the macOS-only runtime it cannot load, the untested-torch note)."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import coremltools

    return coremltools


def export_coreml(source: Path, out: Path, options: CoremlFormat) -> Path:
    """Write `out/model.mlpackage` plus the tokenizer files; returns the package path."""
    import torch

    from formats.coreml.model import causal_mask, load_causal_lm

    ct = quiet_coremltools()
    config = json.loads((source / "config.json").read_text())
    context = min(options.context_length, config.get("max_position_embeddings") or options.context_length)
    model = load_causal_lm(source, context)
    example = (torch.zeros((1, 2), dtype=torch.int32), causal_mask(0, 2))
    # TorchScript tracing is deprecated in torch but is the path coremltools converts states from; its progress
    # bars and deprecation notes would flood the flow's logs.
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, example)
        mlmodel = convert(ct, traced, tuple(model.key_cache.shape), context, options.precision)
        mlmodel = compress(mlmodel, options.compress)
    describe(mlmodel, config, context, options)

    out.mkdir(parents=True, exist_ok=True)
    package = out / PACKAGE
    mlmodel.save(str(package))
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    return package


def convert(ct, traced, cache_shape: tuple[int, ...], context: int, precision: str):
    """The traced decoder as an ML Program: flexible token count, the KV cache buffers as float16 states."""
    import numpy as np

    fp16 = precision == "float16"
    tokens, span = ct.RangeDim(1, context, default=1), ct.RangeDim(1, context, default=1)
    cache = ct.TensorType(shape=cache_shape, dtype=np.float16)
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name="input_ids", shape=(1, tokens), dtype=np.int32),
                ct.TensorType(name="causal_mask", shape=(1, 1, tokens, span), dtype=np.float16 if fp16 else np.float32)],
        outputs=[ct.TensorType(name="logits", dtype=np.float16 if fp16 else np.float32)],
        states=[ct.StateType(wrapped_type=cache, name="key_cache"), ct.StateType(wrapped_type=cache, name="value_cache")],
        minimum_deployment_target=ct.target.macOS15,
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        skip_model_load=True,  # loading needs the macOS runtime; validation evaluates the program instead
    )


def compress(mlmodel, method: str):
    if method == "none":
        return mlmodel
    import coremltools.optimize.coreml as cto

    if method == "int8":
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        apply = cto.linear_quantize_weights
    else:
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_grouped_channel",
                                           group_size=PALETTE_GROUP)
        apply = cto.palettize_weights
        # One process: coremltools' k-means workers are forked, and a fork of this multi-threaded process (Prefect
        # runs tasks on threads) deadlocked in scikit-learn's OpenMP pool.
    # Only the weights of projections and the embedding: a global config would also compress constant tables
    # such as the rotary sin/cos (whose all-zero first row turns into NaN under per-channel scaling).
    return apply(mlmodel, cto.OptimizationConfig(op_type_configs={"linear": op_config, "gather": op_config}))


def describe(mlmodel, config: dict, context: int, options: CoremlFormat) -> None:
    """What an app needs to drive the program, in the package's own metadata."""
    mlmodel.short_description = f"{config['model_type']} causal LM, stateful KV cache of {context} tokens"
    mlmodel.input_description["input_ids"] = "new token ids, shape (1, S), 1 <= S <= context length"
    mlmodel.input_description["causal_mask"] = ("(1, 1, S, P + S): 0 where a token may attend, -inf elsewhere; "
                                                "P = tokens already in the cache")
    mlmodel.output_description["logits"] = "next-token logits for each new token, shape (1, S, vocab)"
    mlmodel.user_defined_metadata.update({
        "llm_factory.model_type": config["model_type"],
        "llm_factory.context_length": str(context),
        "llm_factory.precision": options.precision,
        "llm_factory.compress": options.compress,
        "llm_factory.vocab_size": str(config["vocab_size"]),
    })
