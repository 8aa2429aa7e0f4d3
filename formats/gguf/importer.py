"""GGUF as a source: a `.gguf` file (llama or qwen2, byte-level BPE) becomes a Hugging Face–layout directory
(config.json, float32 safetensors, tokenizer.json with its chat template) that the convert step can take.

The inverse of `export.py`; its tensors come from `export.hf_tensors_from_gguf`, which validation uses too. RoPE
scaling comes back as the config's `rope_scaling`: `linear` from the `rope.scaling` keys, `llama3` from the
`rope_freqs.weight` tensor (parameters that reproduce its values; any other scaling is refused).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from formats.gguf.export import (ARCHITECTURES, ROPE_FREQS, GgufExportError, head_dim, hf_tensors_from_gguf,
                                 llama3_rope_freqs)


class GgufImportError(Exception):
    pass


def hf_tensor_names(config: dict) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        names += [f"{prefix}.{part}.weight" for part in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")]
        if config["model_type"] == "qwen2":
            names += [f"{prefix}.self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj")]
    return names


def import_gguf(path: Path, out: Path) -> Path:
    import gguf
    from safetensors.numpy import save_file

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise GgufImportError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    field = lambda key, default=None: reader.fields[key].contents() if key in reader.fields else default  # noqa: E731
    arch = field("general.architecture")
    if arch not in ARCHITECTURES:
        raise GgufImportError(f"{path}: GGUF architecture {arch!r} is not supported (supported: "
                              f"{', '.join(ARCHITECTURES)})")
    if field("tokenizer.ggml.model") != "gpt2":
        raise GgufImportError(f"{path}: only byte-level BPE (gpt2) vocabularies are supported")
    tokens = field("tokenizer.ggml.tokens")
    names = {t.name for t in reader.tensors}
    config = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"], "model_type": arch,
        "vocab_size": len(tokens), "hidden_size": field(f"{arch}.embedding_length"),
        "intermediate_size": field(f"{arch}.feed_forward_length"), "num_hidden_layers": field(f"{arch}.block_count"),
        "num_attention_heads": field(f"{arch}.attention.head_count"),
        "num_key_value_heads": field(f"{arch}.attention.head_count_kv"),
        "rms_norm_eps": field(f"{arch}.attention.layer_norm_rms_epsilon"),
        "rope_theta": field(f"{arch}.rope.freq_base", 10000.0),
        "max_position_embeddings": field(f"{arch}.context_length", 4096),
        "tie_word_embeddings": "output.weight" not in names, "torch_dtype": "float32", "hidden_act": "silu",
    }
    scaling = _rope_scaling(reader, field, config)
    if scaling is not None:
        config["rope_scaling"] = scaling
    wanted = [n for n in hf_tensor_names(config) if not (config["tie_word_embeddings"] and n == "lm_head.weight")]
    try:
        tensors = hf_tensors_from_gguf(reader, config, wanted)
    except GgufExportError as exc:
        raise GgufImportError(f"{path}: {exc}") from None
    missing = sorted(set(wanted) - set(tensors))
    if missing:
        raise GgufImportError(f"{path}: missing tensors {', '.join(missing[:5])}")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _write_tokenizer(field, tokens, out)
    return out


def _rope_scaling(reader, field, config: dict) -> dict | None:
    """The `rope_scaling` that makes Hugging Face runtimes rotate as llama.cpp does with this file."""
    import gguf

    arch = config["model_type"]
    kind, factor = field(f"{arch}.rope.scaling.type"), field(f"{arch}.rope.scaling.factor")
    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if kind not in (None, "none", "linear"):
        raise GgufImportError(f"RoPE scaling {kind!r} is not supported (supported: linear, llama3)")
    linear = kind != "none" and factor not in (None, 0.0, 1.0)  # llama.cpp reads a factor without a type as linear
    if tensor is not None and (linear or arch != "llama"):
        raise GgufImportError(f"{ROPE_FREQS} is supported only as llama3 scaling of a llama model, alone")
    if linear:
        return {"rope_type": "linear", "factor": float(factor)}
    if tensor is None:
        return None
    ratios = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64).ravel()
    if np.allclose(ratios, 1.0):
        return None
    scaling = _llama3_scaling(ratios, config)
    expected = llama3_rope_freqs({**config, "rope_scaling": scaling}) if scaling else None
    if expected is None or expected.shape != ratios.shape or not np.allclose(expected, ratios, rtol=1e-4):
        raise GgufImportError(f"{ROPE_FREQS} ({np.round(ratios, 4).tolist()}) is not a llama3 RoPE scaling")
    return scaling


def _llama3_scaling(ratios: np.ndarray, config: dict) -> dict | None:
    """llama3 parameters whose frequency divisors are `ratios` (checked by the caller), or None.

    Llama 3 divides a frequency by 1 below wavelength `original / high_freq_factor`, by `factor` above
    `original / low_freq_factor`, and blends between, where `smooth = (original / wavelength - low) / (high - low)`
    is linear in 1 / wavelength. Only the two boundary wavelengths count: they come from the blended frequencies
    when there are two or more, else they are put in the gaps around them; `original` is the upper boundary
    rounded (so a Llama 3 file, with low_freq_factor 1, reads back as written)."""
    dim = head_dim(config)
    if 2 * len(ratios) != dim:
        return None
    wavelength = 2 * np.pi * config["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor = float(ratios.max())
    unscaled, full = np.isclose(ratios, 1.0, rtol=1e-5), np.isclose(ratios, factor, rtol=1e-5)
    blended = ~(unscaled | full)
    smooth = (1 / ratios - 1 / factor) / (1 - 1 / factor)
    below = wavelength[unscaled].max() if unscaled.any() else wavelength[0] / 2  # the gaps' ends
    above = wavelength[full].min()
    if blended.sum() >= 2:
        slope, intercept = np.polyfit(1 / wavelength[blended], smooth[blended], 1)
        if slope <= 0 or intercept >= 0:
            return None
        low_wavelength, high_wavelength = -slope / intercept, slope / (1 - intercept)
    elif blended.sum() == 1:  # one equation: put where blending starts in its gap, solve for where it ends
        point, value = float(wavelength[blended][0]), float(smooth[blended][0])
        for fraction in (0.5, 0.25, 0.75, 0.1, 0.9):
            high_wavelength = below * (point / below) ** fraction
            low_wavelength = (1 - value) / (1 / point - value / high_wavelength)
            if point < low_wavelength < above:
                break
        else:
            return None
    else:
        low_wavelength, high_wavelength = below * (above / below) ** (2 / 3), below * (above / below) ** (1 / 3)
    original = max(1, int(round(low_wavelength)))
    return {"rope_type": "llama3", "factor": _tidy(factor), "low_freq_factor": _tidy(original / low_wavelength),
            "high_freq_factor": _tidy(original / high_wavelength), "original_max_position_embeddings": original}


def _tidy(value: float) -> float:
    """A float read back through float32, snapped to the round number it most likely was."""
    nearest = round(value)
    return float(nearest) if abs(value - nearest) <= 1e-5 * max(1.0, abs(value)) else float(value)


def _write_tokenizer(field, tokens: list[str], out: Path) -> None:
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    types = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
    # Special tokens are in the vocabulary too, so adding them as special below keeps their ids.
    tokenizer = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [(index, token) for index, token in enumerate(tokens) if types[index] == gguf.TokenType.CONTROL]
    tokenizer.add_special_tokens([AddedToken(token, special=True) for _, token in specials])
    id_of = lambda key: field(key)  # noqa: E731
    eos = tokens[id_of("tokenizer.ggml.eos_token_id")] if id_of("tokenizer.ggml.eos_token_id") is not None else None
    template = field("tokenizer.chat_template")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, chat_template=template)
    fast.save_pretrained(out)
    if any(tokenizer.token_to_id(token) != index for index, token in specials):
        raise GgufImportError("special token ids could not be preserved in the rebuilt tokenizer")
