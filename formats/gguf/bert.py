"""GGUF export of BERT-family encoders (architecture `bert`), as llama.cpp's converter writes them, for llama.cpp's
embedding mode: bidirectional attention (`attention.causal` false), the pooling type, and the WordPiece vocabulary
as llama.cpp's `bert` tokenizer reads it (a word-initial piece carries a leading `▁`, a `##` continuation loses its
`##`, control tokens stay as written). Position and token-type embeddings stay float32 (llama.cpp's converter
never quantizes them); other matrices are f16 or q8_0 like the decoder export; 1-D tensors float32.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from formats.gguf.export import FILE_TYPES, QTYPES, GgufExportError, add_tensor, load_hf_tensors, write_out

TYPES = ("f16", "q8_0")
POOLING = {"mean": 1, "cls": 2, "last": 3}  # llama_pooling_type: MEAN, CLS, LAST
UNUSED = ("pooler.", "cls.", "embeddings.position_ids")  # pretraining heads and a buffer: no use for embeddings
KEEP_F32 = ("position_embd.weight", "token_types.weight")


def bert_gguf_names(config: dict, hf_names: list[str]) -> dict[str, str]:
    """HF tensor name -> GGUF name (llama.cpp's BERT map), for the tensors an embedding model uses."""
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
    names = {}
    for hf_name in hf_names:
        short = hf_name.removeprefix("bert.")
        if short.startswith(UNUSED):
            continue
        mapped = name_map.get_name(short, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise GgufExportError(f"no GGUF name for BERT tensor {hf_name}")
        names[hf_name] = mapped
    return names


def export_bert_gguf(source: Path, out_file: Path, qtype: str, pooling: str) -> Path:
    import gguf

    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise GgufExportError(f"the BERT export takes bert models; this one is {config.get('model_type')!r}")
    if qtype not in TYPES:
        raise GgufExportError(f"BERT GGUF type {qtype!r} is not produced here (available: {', '.join(TYPES)})")
    tensors = load_hf_tensors(source)
    names = bert_gguf_names(config, list(tensors))
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(source.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config.get("layer_norm_eps", 1e-12))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType(POOLING[pooling]))
    writer.add_file_type(FILE_TYPES[qtype])
    _write_wordpiece(writer, source, config)
    target = getattr(gguf.GGMLQuantizationType, QTYPES[qtype])
    for hf_name, gguf_name in names.items():
        data = tensors[hf_name]
        if gguf_name in KEEP_F32:
            writer.add_tensor(gguf_name, data.astype(np.float32))
        else:
            add_tensor(writer, gguf_name, data, target)
    return write_out(writer, out_file)


def phantom_space(token: str, control: bool) -> str:
    """A WordPiece token as llama.cpp's bert tokenizer stores it."""
    if control:
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def _write_wordpiece(writer, source: Path, config: dict) -> None:
    import gguf

    spec = json.loads((source / "tokenizer.json").read_text())
    if spec["model"].get("type") != "WordPiece":
        raise GgufExportError(f"BERT export needs a WordPiece tokenizer (this one is {spec['model'].get('type')})")
    by_id = {index: token for token, index in spec["model"]["vocab"].items()}
    control = {added["id"] for added in spec.get("added_tokens", []) if added.get("special")}
    by_id.update({added["id"]: added["content"] for added in spec.get("added_tokens", [])})
    if sorted(by_id) != list(range(config["vocab_size"])):
        raise GgufExportError(f"the vocabulary has {len(by_id)} tokens with gaps or extras; config vocab_size is "
                              f"{config['vocab_size']}")
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_type_count(config.get("type_vocab_size", 2))
    writer.add_token_list([phantom_space(by_id[i], i in control) for i in range(config["vocab_size"])])
    writer.add_token_types([gguf.TokenType.CONTROL if i in control else gguf.TokenType.NORMAL
                            for i in range(config["vocab_size"])])
    gguf.SpecialVocab(source, n_vocab=config["vocab_size"]).add_to_gguf(writer)  # CLS/SEP/UNK/PAD/MASK ids
