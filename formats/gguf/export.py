"""GGUF export for llama and qwen2 models, written with the `gguf` package (llama.cpp's own Python writer).

Byte-level BPE vocabularies are written as llama.cpp expects them (`tokenizer.ggml.model = gpt2`, merges, token
types, special token ids, the chat template), which `mlx_lm.fuse --export-gguf` does not do (it labels every
vocabulary SentencePiece). Quantization: f16, and q8_0 / q4_0 through `gguf.quants` (32-value blocks); a tensor
whose rows do not divide into blocks stays f16, as llama.cpp's converter does. 1-D tensors (norms, biases) stay f32.
Q4_K_M goes through llama.cpp's own quantizer (llama-cpp-python), from the f16 file: k-quants need rows divisible
by 256, and llama.cpp picks its own fallbacks for the tensors whose rows do not divide.

RoPE scaling (the config's `rope_scaling`) is written the way llama.cpp's converter writes it: `linear` as the
`rope.scaling.type` / `rope.scaling.factor` keys; `llama3` as a `rope_freqs.weight` tensor of per-frequency
divisors (llama.cpp rotates by `angle / rope_freqs[i]`, so a frequency Llama 3 divides by `factor` has the value
`factor`, an unscaled one 1). Any other scaling type is refused rather than dropped: llama.cpp would otherwise run
the model with unscaled rotary frequencies, wrong at every position.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2"}
QTYPES = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k_m": "Q4_K"}
FILE_TYPES = {"f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}  # llama_ftype: MOSTLY_F16, _Q8_0, _Q4_0, _Q4_K_M
PRE_TOKENIZERS = {"llama": "llama-bpe", "qwen2": "qwen2"}
ROPE_FREQS = "rope_freqs.weight"  # a GGUF-only tensor (llama3 RoPE scaling): no Hugging Face tensor maps to it
ROPE_SCALING_TYPES = ("linear", "llama3")


class GgufExportError(Exception):
    pass


def load_hf_tensors(source: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors model as float32 numpy (via MLX, which also reads bfloat16)."""
    import mlx.core as mx

    tensors: dict[str, np.ndarray] = {}
    for path in sorted(source.glob("*.safetensors")):
        for name, array in mx.load(str(path)).items():
            tensors[name] = np.array(array.astype(mx.float32))
    if not tensors:
        raise GgufExportError(f"{source} has no safetensors weights")
    return tensors


def rope_scaling(config: dict) -> dict | None:
    """The config's RoPE scaling with its type under `rope_type` (None when the frequencies are not scaled);
    a type this export cannot write is refused, naming it."""
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind not in ROPE_SCALING_TYPES:
        raise GgufExportError(f"rope_scaling type {kind!r} is not supported by the GGUF export (supported: "
                              f"{', '.join(ROPE_SCALING_TYPES)}); the model would run with the wrong rotary "
                              f"frequencies")
    if kind == "llama3" and config.get("model_type") != "llama":
        raise GgufExportError(f"llama3 rope_scaling is written as a rope_freqs tensor, which llama.cpp reads only "
                              f"for llama models (this one is {config.get('model_type')!r})")
    if "factor" not in scaling:
        raise GgufExportError(f"{kind} rope_scaling has no factor")
    return {**scaling, "rope_type": kind}


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def llama3_rope_freqs(config: dict) -> np.ndarray | None:
    """llama.cpp's `rope_freqs` for a llama3-scaled config: per rotary frequency, how much Llama 3 divides it by
    (1 for high frequencies, `factor` for low ones, a smooth blend between). None for any other config.

    The scaled frequencies follow Hugging Face's definition (as mlx-lm's and the Core ML export's do), with
    `original_max_position_embeddings` read from `rope_scaling`; missing keys take mlx-lm's defaults."""
    scaling = rope_scaling(config)
    if scaling is None or scaling["rope_type"] != "llama3":
        return None
    dim = head_dim(config)
    inv_freq = 1.0 / config.get("rope_theta", 10000.0) ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling.get("original_max_position_embeddings", 8192))
    if high <= low:
        raise GgufExportError(f"llama3 rope_scaling needs high_freq_factor > low_freq_factor (got {high}, {low})")
    wavelength = 2 * np.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    scaled = np.where(wavelength < original / high, inv_freq,
                      np.where(wavelength > original / low, inv_freq / factor,
                               (1 - smooth) * inv_freq / factor + smooth * inv_freq))
    return (inv_freq / scaled).astype(np.float32)


def hf_tensor_shapes(source: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, read from the safetensors headers alone (no weights loaded)."""
    from safetensors import safe_open

    shapes = {}
    for path in sorted(source.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    return shapes


def permute_for_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF stores llama q/k rows rotary-half-split; llama.cpp wants them interleaved."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def unpermute_from_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    return weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def hf_tensors_from_gguf(reader, config: dict, hf_names: list[str]) -> dict[str, np.ndarray]:
    """The inverse of the export: every tensor of a GGUF reader dequantized to float32, under its Hugging Face
    name, with llama's q/k rows put back into Hugging Face's rotary layout."""
    import gguf

    to_hf = {gguf_name: hf_name for hf_name, gguf_name in gguf_names(config, hf_names).items()}
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    tensors = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:  # llama3 RoPE scaling, which the config carries on the Hugging Face side
            continue
        if tensor.name not in to_hf:
            raise GgufExportError(f"unexpected tensor {tensor.name}")
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        data = data.reshape(tuple(int(d) for d in reversed(tensor.shape)))
        hf_name = to_hf[tensor.name]
        if config["model_type"] == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            data = unpermute_from_gguf(data, heads if "q_proj" in hf_name else kv_heads)
        tensors[hf_name] = np.ascontiguousarray(data)
    return tensors


def gguf_names(config: dict, hf_names: list[str]) -> dict[str, str]:
    """HF tensor name -> GGUF tensor name, through llama.cpp's own name map."""
    import gguf

    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[config["model_type"]])
    name_map = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    names = {}
    for hf_name in hf_names:
        mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise GgufExportError(f"no GGUF name for tensor {hf_name}")
        names[hf_name] = mapped
    return names


def export_gguf(source: Path, out_file: Path, qtype: str) -> Path:
    import gguf

    config = json.loads((source / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise GgufExportError(f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {model_type!r}")
    if qtype not in QTYPES:
        raise GgufExportError(f"GGUF type {qtype!r} is not produced here (available: {', '.join(QTYPES)})")
    freqs = llama3_rope_freqs(config)  # checks rope_scaling before any work
    if qtype == "q4_k_m":
        return _quantize_with_llama_cpp(source, out_file)
    tensors = load_hf_tensors(source)
    if config.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when output.weight is absent
    names = gguf_names(config, list(tensors))

    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, ARCHITECTURES[model_type])])
    _write_hyperparameters(writer, config, source.name, FILE_TYPES[qtype])
    _write_tokenizer(writer, source, config)
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    target = getattr(gguf.GGMLQuantizationType, QTYPES[qtype])
    for hf_name, data in tensors.items():
        if model_type == "llama" and hf_name.endswith("q_proj.weight"):
            data = permute_for_gguf(data, heads)
        elif model_type == "llama" and hf_name.endswith("k_proj.weight"):
            data = permute_for_gguf(data, kv_heads)
        add_tensor(writer, names[hf_name], data, target)
    if freqs is not None:
        writer.add_tensor(ROPE_FREQS, freqs)
    return write_out(writer, out_file)


def _quantize_with_llama_cpp(source: Path, out_file: Path) -> Path:
    import ctypes

    try:
        from llama_cpp import llama_cpp as lc
    except ImportError:
        raise GgufExportError("q4_k_m needs llama.cpp's quantizer: install llama-cpp-python (make install does)") \
            from None
    f16 = out_file.with_name(out_file.stem + ".f16-tmp.gguf")
    export_gguf(source, f16, "f16")
    try:
        params = lc.llama_model_quantize_default_params()
        params.ftype = lc.LLAMA_FTYPE_MOSTLY_Q4_K_M
        if lc.llama_model_quantize(str(f16).encode(), str(out_file).encode(), ctypes.byref(params)) != 0:
            raise GgufExportError(f"llama.cpp could not quantize {f16.name} to Q4_K_M")
    finally:
        f16.unlink(missing_ok=True)
    return out_file


def write_out(writer, out_file: Path) -> Path:
    """Header, metadata, then tensors: the order a GGUF file is written in."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def add_tensor(writer, name: str, data: np.ndarray, target) -> None:
    import gguf

    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif target == gguf.GGMLQuantizationType.F16 or data.shape[-1] % 32:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, target), raw_dtype=target)


def _write_hyperparameters(writer, config: dict, name: str, file_type: int) -> None:
    import gguf

    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    scaling = rope_scaling(config)
    if scaling is not None and scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)


def _write_tokenizer(writer, source: Path, config: dict) -> None:
    """A byte-level BPE vocabulary the way llama.cpp's converter writes one (model gpt2)."""
    import gguf

    spec = json.loads((source / "tokenizer.json").read_text())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise GgufExportError(f"only byte-level BPE tokenizers are exported (this one is {model.get('type')})")
    vocab_size = config["vocab_size"]
    by_id = {index: token for token, index in model["vocab"].items()}
    special = {added["id"]: added["content"] for added in spec.get("added_tokens", [])}
    by_id.update(special)
    tokens, types = [], []
    for index in range(vocab_size):  # llama.cpp needs exactly vocab_size tokens: pad unused ids
        token = by_id.get(index, f"[PAD{index}]")
        tokens.append(token)
        types.append(gguf.TokenType.CONTROL if index in special else
                     gguf.TokenType.USER_DEFINED if index not in by_id else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS[config["model_type"]])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text()) \
        if (source / "tokenizer_config.json").exists() else {}
    ids = {token: index for index, token in by_id.items()}
    for kind, add in (("eos_token", writer.add_eos_token_id), ("bos_token", writer.add_bos_token_id),
                      ("pad_token", writer.add_pad_token_id)):
        token = tokenizer_config.get(kind)
        token = token.get("content") if isinstance(token, dict) else token
        if token in ids:
            add(ids[token])
    writer.add_add_bos_token(bool(tokenizer_config.get("add_bos_token", False)))
    template = tokenizer_config.get("chat_template")
    if template is None and (source / "chat_template.jinja").exists():
        template = (source / "chat_template.jinja").read_text()
    if template:
        writer.add_chat_template(template)
