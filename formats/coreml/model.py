"""A small PyTorch Llama / Qwen2 decoder written to trace into Core ML, loading a Hugging Face checkpoint's safetensors.

transformers' own modules do not convert (their traced graphs use ops coremltools lacks), so this is the plain
architecture: RMSNorm, rotary embeddings (rotate-half, as both families use on Hugging Face weights), grouped-query
attention with optional q/k/v biases (Qwen2), SwiGLU, tied or separate output head.

The key/value cache lives in two registered buffers that the Core ML conversion turns into model *states*, so a
caller feeds only new tokens: inputs are `input_ids` (1, S) and `causal_mask` (1, 1, S, P + S) where P is the number
of tokens already in the cache — the mask's width tells the model where the new tokens start, as in Apple's own
stateful Llama example. Output is `logits` (1, S, vocab).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

SUPPORTED_TYPES = ("llama", "qwen2")


class UnsupportedArchitecture(ValueError):
    """The source model is not one this Core ML export implements."""


def rope_frequencies(config: dict) -> torch.Tensor:
    """Inverse rotary frequencies per pair of head dimensions, with Llama 3's long-context rescaling if configured."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    base = config.get("rope_theta", 10000.0)
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        original = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv_freq
        smooth = ((original / wavelength) - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelength > original / low, inv_freq / factor,
                               torch.where(wavelength < original / high, inv_freq, blended))
    elif kind != "default":
        raise UnsupportedArchitecture(f"rope_scaling type {kind!r} is not supported by the Core ML export")
    return inv_freq.float()


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight, computed so that no intermediate overflows float16.

    Trained models carry residual activations that float16 holds but whose squares it does not (max 65504, so any
    |x| > 256): SmolLM2-135M's residual stream reaches 24926 and its mean of squares 1.1e6, and the plain formula
    made every norm from layer 2 on rsqrt(inf) = 0 (its float16 export answered only <|endoftext|>). So the mean of
    squares is taken of x / s, s = max |x| over the row: it lies in [1/size, 1], and mean(x²) + eps =
    s² · (mean((x/s)²) + (√eps/s)²), the same number. The row's factor rsqrt(...) / s then multiplies x itself, not
    x / s: dividing the row's ordinary values (around 1) by 24926 would put them below float16's smallest normal
    (6.1e-5), where hardware may flush them to zero. (Their squares do underflow; together they weigh at most
    size · 6e-8 against the largest one's 1.) s is floored at √eps (or float16's smallest normal), so an all-zero row
    stays finite and the eps term is at most 1.

    Why rescale rather than keep the norms in float32 (coremltools' FP16ComputePrecision op_selector): the Neural
    Engine computes only in float16, so float32 norms would cut the program into pieces at every layer, moving
    activations between it and the CPU/GPU twice per layer. Rescaled, the program stays float16 throughout, for an
    abs, a reduce_max and a few element-wise ops per norm. The other float16 hazards, measured on SmolLM2 in float32,
    are inside the range: residual stream 24926, MLP output 24882 (2.6 × below the limit), attention scores 53,
    logits 38.
    """

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.floor = max(math.sqrt(eps), 2.0 ** -14)
        # A tensor, so √eps / s converts to a division: a number over a tensor traces as reciprocal, which Core ML
        # computes as 1 / (s + 1e-4).
        self.register_buffer("root_eps", torch.tensor(math.sqrt(eps)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clamp_min is a maximum op; clamp(min=) would add an upper bound of float32's max, inf in float16.
        scale = torch.clamp_min(x.abs().amax(-1, keepdim=True), self.floor)
        mean_square = (x / scale).pow(2).mean(-1, keepdim=True) + (self.root_eps / scale).pow(2)
        return x * (torch.rsqrt(mean_square) / scale) * self.weight


class Attention(nn.Module):
    def __init__(self, config: dict, bias: bool):
        super().__init__()
        hidden = config["hidden_size"]
        self.heads, self.kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
        self.head_dim = config.get("head_dim") or hidden // self.heads
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)

    def forward(self, x, cos, sin, mask, key_cache, value_cache, layer: int, start, end):
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        # Write the new keys/values into the state, then attend over everything cached so far.
        key_cache[layer, :, :, start:end] = k
        value_cache[layer, :, :, start:end] = v
        keys = key_cache[layer, :, :, :end].to(q.dtype)
        values = value_cache[layer, :, :, :end].to(q.dtype)
        group = self.heads // self.kv_heads
        keys = keys[:, :, None].expand(batch, self.kv_heads, group, -1, self.head_dim).reshape(batch, self.heads, -1,
                                                                                               self.head_dim)
        values = values[:, :, None].expand(batch, self.kv_heads, group, -1, self.head_dim).reshape(
            batch, self.heads, -1, self.head_dim)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(self.head_dim) + mask
        out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ values
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: dict, bias: bool):
        super().__init__()
        eps = config.get("rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(config["hidden_size"], eps)
        self.self_attn = Attention(config, bias)
        self.post_attention_layernorm = RMSNorm(config["hidden_size"], eps)
        self.mlp = MLP(config["hidden_size"], config["intermediate_size"])

    def forward(self, x, cos, sin, mask, key_cache, value_cache, index: int, start, end):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, key_cache, value_cache, index, start, end)
        return x + self.mlp(self.post_attention_layernorm(x))


class StatefulCausalLM(nn.Module):
    """The decoder with its KV cache as buffers (`key_cache`, `value_cache`: layers × 1 × kv heads × context × dim)."""

    def __init__(self, config: dict, context_length: int):
        super().__init__()
        if config.get("model_type") not in SUPPORTED_TYPES:
            raise UnsupportedArchitecture(f"Core ML export supports {', '.join(SUPPORTED_TYPES)}, "
                                          f"not model_type {config.get('model_type')!r}")
        bias = config["model_type"] == "qwen2" or bool(config.get("attention_bias"))
        self.config, self.context_length = config, context_length
        self.embed_tokens = nn.Embedding(config["vocab_size"], config["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(config, bias) for _ in range(config["num_hidden_layers"]))
        self.norm = RMSNorm(config["hidden_size"], config.get("rms_norm_eps", 1e-6))
        self.lm_head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)
        attention = self.layers[0].self_attn
        cache_shape = (len(self.layers), 1, attention.kv_heads, context_length, attention.head_dim)
        # Core ML states hold float16; the converter casts around them when the rest computes in float32.
        self.register_buffer("key_cache", torch.zeros(cache_shape, dtype=torch.float16))
        self.register_buffer("value_cache", torch.zeros(cache_shape, dtype=torch.float16))
        angles = torch.outer(torch.arange(context_length, dtype=torch.float32), rope_frequencies(config))
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, input_ids: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        end = causal_mask.shape[-1]
        start = end - input_ids.shape[-1]
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        x = self.embed_tokens(input_ids)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, causal_mask, self.key_cache, self.value_cache, index, start, end)
        return self.lm_head(self.norm(x))


def load_causal_lm(source: Path, context_length: int) -> StatefulCausalLM:
    """Build the model for a Hugging Face checkpoint directory and load its safetensors (float32)."""
    from safetensors.torch import load_file

    config = json.loads((source / "config.json").read_text())
    model = StatefulCausalLM(config, context_length)
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(source.glob("*.safetensors")):
        tensors |= load_file(str(path))
    weights = {name.removeprefix("model."): tensor.float() for name, tensor in tensors.items()}
    tied = "lm_head.weight" not in weights or config.get("tie_word_embeddings", False)
    if tied:
        weights.pop("lm_head.weight", None)
    weights = {name: value for name, value in weights.items() if not name.endswith("rotary_emb.inv_freq")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    expected_missing = {"key_cache", "value_cache"} | ({"lm_head.weight"} if tied else set())
    missing = [name for name in missing if name not in expected_missing]
    if missing or unexpected:
        raise UnsupportedArchitecture(f"{source}: weights do not fit the llama/qwen2 layout "
                                      f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if tied:  # one tensor for both ends, so the program stores it once
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def causal_mask(past: int, length: int) -> torch.Tensor:
    """The package's mask input (`formats.coreml.export.attention_mask`) as a tensor, for tracing and tests."""
    from formats.coreml.export import attention_mask

    return torch.from_numpy(attention_mask(past, length))
