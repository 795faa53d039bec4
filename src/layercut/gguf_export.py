"""Write a (pruned or slimmed) model as a GGUF file for llama.cpp and Ollama, with the `gguf` package.

The adapter table's `gguf` layout names every tensor the llama.cpp way (`blk.N.attn_q.weight` ...)
and says which projections need llama.cpp's rotary row order. Hyperparameters come from the
model's config and its actual shapes (a pruned model has fewer blocks, a slimmed one a narrower
FFN), and the byte-level BPE tokenizer is written as `tokenizer.ggml.*` (tokens, merges, types,
special ids). 2-D weights are stored as f16 (or f32); norms and biases always as f32, as
llama.cpp's own converter does.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from layercut.adapters import GGUFLayout, get_path
from layercut.data import bos_id
from layercut.errors import ConfigError, UnsupportedArchitectureError
from layercut.export import count_parameters, ensure_output_free
from layercut.loading import LoadedModel

GGUF_TYPES = ("f16", "f32")
# gguf's TokenType values, as llama.cpp reads them.
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def rotary_interleave(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the rows of a Q/K projection from HF's rotate-half layout to llama.cpp's pairs.

    Within each head, HF keeps the first halves of the rotary pairs, then the second halves;
    llama.cpp wants them interleaved (row 0 of each half, then row 1 ...).
    """
    rows = weight.shape[0]
    per_head = rows // heads
    return weight.reshape(heads, 2, per_head // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


@dataclass
class GGUFTokenizer:
    """A byte-level BPE vocabulary as GGUF stores it."""

    tokens: list[str]
    types: list[int]
    merges: list[str]


def gguf_tokenizer(tokenizer: Any, vocab_size: int) -> GGUFTokenizer:
    """Tokens (by id, padded to the model's vocabulary size), their types and the merges of a fast
    byte-level BPE tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UnsupportedArchitectureError(
            "GGUF export writes byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Llama 3 use); this "
            "tokenizer is not one; export the checkpoint and convert it with llama.cpp's convert_hf_to_gguf.py")
    by_id: dict[int, str] = {index: token for token, index in model["vocab"].items()}
    types = {index: TOKEN_NORMAL for index in by_id}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    size = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(index, f"[PAD{index}]") for index in range(size)]
    token_types = [types.get(index, TOKEN_UNUSED) for index in range(size)]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    return GGUFTokenizer(tokens, token_types, merges)


def named_gguf_tensors(loaded: LoadedModel, layout: GGUFLayout) -> list[tuple[str, torch.Tensor]]:
    """Every parameter under its llama.cpp name (rotary rows reordered); tied weights appear once."""
    model, config = loaded.model, loaded.model.config
    seen: set[int] = set()
    named: list[tuple[str, torch.Tensor]] = []

    def add(module: nn.Module, gguf_name: str, heads_key: str | None = None) -> None:
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            tensor = param.detach()
            if heads_key is not None:
                tensor = rotary_interleave(tensor, int(getattr(config, heads_key)))
            named.append((f"{gguf_name}.{param_name}", tensor))

    for path, gguf_name in layout.top_names:
        add(get_path(model, path), gguf_name)
    permuted = dict(layout.rope_permute)
    for index, block in enumerate(loaded.adapter.blocks(model)):
        for path, gguf_name in layout.block_names:
            add(get_path(block, path), f"blk.{index}.{gguf_name}", permuted.get(path))
    written = sum(tensor.numel() for _, tensor in named)
    if written != count_parameters(model):
        raise UnsupportedArchitectureError(
            f"{loaded.adapter.name} model has parameters the GGUF layout does not name "
            f"({count_parameters(model) - written:,} left); extend its GGUFLayout in layercut/adapters.py")
    return named


def rope_theta(config: Any) -> float:
    """The rotary base, refusing rope scaling that the written keys would not describe."""
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise UnsupportedArchitectureError(
            f"rope scaling '{params['rope_type']}' is not written by layercut's GGUF export; "
            "convert this checkpoint with llama.cpp's convert_hf_to_gguf.py")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise UnsupportedArchitectureError("config has no rope_theta; GGUF export needs a rotary model")
    return float(theta)


def write_metadata(writer: Any, loaded: LoadedModel, layout: GGUFLayout, gguf_type: str) -> None:
    """Architecture hyperparameters and the tokenizer, under llama.cpp's key names."""
    import gguf

    config = loaded.model.config
    blocks = loaded.adapter.blocks(loaded.model)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    ffn_width = loaded.adapter.down_proj(blocks[0]).weight.shape[1]
    writer.add_name(Path(loaded.source).name or "layercut-model")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_block_count(len(blocks))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(ffn_width))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    vocab = gguf_tokenizer(loaded.tokenizer, int(config.vocab_size))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    tokenizer = loaded.tokenizer
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id), (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(bos_id(tokenizer) is not None)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def tensor_array(tensor: torch.Tensor, gguf_type: str) -> np.ndarray:
    """f16 for matrices when asked; vectors (norms, biases) stay f32 as llama.cpp expects."""
    dtype = torch.float16 if gguf_type == "f16" and tensor.dim() > 1 else torch.float32
    return tensor.to(device="cpu", dtype=dtype).contiguous().numpy()


def export_gguf(loaded: LoadedModel, out: str | Path, gguf_type: str = "f16", overwrite: bool = False) -> Path:
    """Write `loaded` as one GGUF file at `out` (through a temporary file and a rename)."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"unknown --gguf-type '{gguf_type}'; use {' or '.join(GGUF_TYPES)}")
    layout = loaded.adapter.gguf
    if layout is None:
        raise UnsupportedArchitectureError(
            f"GGUF export supports Llama-family models; {loaded.adapter.name} has no GGUF layout in "
            "layercut/adapters.py (export the checkpoint and use llama.cpp's convert_hf_to_gguf.py)")
    target = ensure_output_free(out, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = named_gguf_tensors(loaded, layout)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(tmp, layout.arch)
        write_metadata(writer, loaded, layout, gguf_type)
        for name, tensor in tensors:
            writer.add_tensor(name, tensor_array(tensor, gguf_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
