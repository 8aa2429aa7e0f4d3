"""GGUF as a source: a `.gguf` file (llama or qwen2, byte-level BPE) becomes a Hugging Face–layout directory
(config.json, float32 safetensors, tokenizer.json with its chat template) that the convert step can take.

The inverse of `export.py`; its tensors come from `export.hf_tensors_from_gguf`, which validation uses too.
"""
from __future__ import annotations

import json
from pathlib import Path

from formats.gguf.export import ARCHITECTURES, GgufExportError, hf_tensors_from_gguf


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
