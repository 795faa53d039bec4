"""Write a (pruned, slimmed or Streamline) model as a GGUF file for llama.cpp, Ollama and transformers.

Names come from the `gguf` package's own tables: the architecture from `gguf.MODEL_ARCH_NAMES`,
every tensor through `gguf.get_tensor_name_map`, every key through the writer's typed `add_*`
methods. The adapter table's `GGUFSpec` holds what a family changes in the stored numbers
(llama.cpp's rotary row order, Gemma's norm offset) and its llama.cpp architecture name when that is
not its model type (Mistral is stored as `llama`).

Whether a model can be exported is decided from its config alone, before any weights load:
`check_gguf_export` writes the hyperparameters into a tensor-less GGUF, lets transformers' own GGUF
loader rebuild a config from it, and refuses (naming the family and the setting) when that config
would describe a different model -- a setting GGUF has no key for, such as a Gemma 3 pattern of
sliding-window layers that is not the default one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from layercut.adapters import GGUFSpec, adapter_for_model_type
from layercut.errors import ConfigError, UnsupportedArchitectureError
from layercut.export import ensure_output_free, follow_umask
from layercut.loading import LoadedModel

GGUF_TYPES = ("f16", "f32")
# Config entries that do not change the function a model computes in evaluation (or that the
# written tensors decide, like tied embeddings), so a reloaded config may differ in them.
NON_FUNCTIONAL_KEYS = frozenset({
    "architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path", "initializer_range",
    "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "output_hidden_states",
    "output_attentions", "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "quantization_config", "max_position_embeddings", "original_max_position_embeddings",
    "_sliding_window_pattern", "pretraining_tp", "max_window_layers", "use_sliding_window",
    "model_type",  # a family stored as another architecture (Mistral as `llama`) reloads as that one
})


def rotary_interleave(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the rows of a Q/K projection from HF's rotate-half layout to llama.cpp's pairs.

    Within each head, HF keeps the first halves of the rotary pairs, then the second halves;
    llama.cpp wants them interleaved (row 0 of each half, then row 1 ...).
    """
    rows = weight.shape[0]
    per_head = rows // heads
    return weight.reshape(heads, 2, per_head // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


@dataclass(frozen=True)
class GGUFTarget:
    """What `check_gguf_export` decided: the family, its llama.cpp architecture and layout spec."""

    family: str
    arch: str
    spec: GGUFSpec


def gguf_target(config: Any) -> GGUFTarget:
    """The llama.cpp architecture of a config's family, or a refusal naming the family."""
    import gguf

    model_type = str(getattr(config, "model_type", "<none>"))
    adapter = adapter_for_model_type(model_type)
    family = model_type.removesuffix("_text")
    if adapter.gguf is None:
        raise UnsupportedArchitectureError(
            f"GGUF export does not support {family}: the adapter table gives it no GGUF spec; export the "
            "checkpoint with --out and convert it with llama.cpp's convert_hf_to_gguf.py")
    arch = adapter.gguf.arch or family
    if arch not in gguf.MODEL_ARCH_NAMES.values():
        raise UnsupportedArchitectureError(
            f"GGUF export does not support {family}: the gguf package knows no architecture '{arch}'; "
            "upgrade gguf or export the checkpoint with --out")
    return GGUFTarget(family=family, arch=arch, spec=adapter.gguf)


def _arch_enum(arch: str) -> Any:
    import gguf

    return next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)


def rope_theta(config: Any, family: str) -> float:
    """The rotary base of the full-attention layers, refusing rope scaling GGUF would not carry."""
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get("full_attention", params)
    if params.get("rope_type", "default") != "default":
        raise UnsupportedArchitectureError(
            f"GGUF export does not support {family} with rope scaling '{params['rope_type']}'; "
            "convert this checkpoint with llama.cpp's convert_hf_to_gguf.py")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise UnsupportedArchitectureError(f"GGUF export does not support {family} without rope_theta (not rotary)")
    return float(theta)


def write_hyperparameters(writer: Any, config: Any, target: GGUFTarget, name: str) -> None:
    """The architecture keys llama.cpp's converter writes, from the (pruned) config."""
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_name(name)
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(int(head_dim * (config.rope_parameters or {}).get("partial_rotary_factor", 1.0)))
    writer.add_rope_freq_base(rope_theta(config, target.family))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    layer_types = getattr(config, "layer_types", None)
    if getattr(config, "sliding_window", None) and layer_types and "sliding_attention" in layer_types:
        writer.add_sliding_window(int(config.sliding_window))
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in layer_types])
        local = (config.rope_parameters or {}).get("sliding_attention", {}).get("rope_theta")
        if local is not None:
            writer.add_rope_freq_base_swa(float(local))


def same_setting(ours: Any, theirs: Any) -> bool:
    """Equal config values, reading floats at GGUF's f32 precision and an absent flag as off."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(same_setting(ours[key], theirs[key]) for key in ours)
    if isinstance(ours, float) or isinstance(theirs, float):
        return isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) \
            and math.isclose(ours, theirs, rel_tol=1e-6)
    if ours in (None, False) and theirs in (None, False):
        return True
    return ours == theirs


def effective_settings(config: Any) -> dict[str, Any]:
    """A config as a dict, with a sliding window no shorter than the context read as none (it never slides)."""
    settings = config.to_dict()
    window, context = settings.get("sliding_window"), settings.get("max_position_embeddings")
    if window is not None and context is not None and window >= context:
        settings["sliding_window"] = None
    return settings


def unrecorded_settings(config: Any, reloaded: Any) -> list[str]:
    """The settings that change the model's function and that a reload from GGUF gets wrong."""
    ours, theirs = effective_settings(config), effective_settings(reloaded)
    wrong = []
    for key in sorted(set(ours) | set(theirs)):
        if key in NON_FUNCTIONAL_KEYS or key.endswith(("_token_id", "pdrop")) or "dropout" in key or key[0] == "_":
            continue
        mine, read = ours.get(key), theirs.get(key)
        if same_setting(mine, read):
            continue
        if isinstance(mine, list) and isinstance(read, list) and len(mine) == len(read):
            layer = next(index for index, (a, b) in enumerate(zip(mine, read)) if a != b)
            wrong.append(f"its {key} (layer {layer} is {mine[layer]!r}; a GGUF reader would make it {read[layer]!r})")
        else:
            wrong.append(f"its {key} ({mine!r}; a GGUF reader would use {read!r})")
    return wrong


def check_gguf_export(config: Any, name: str = "layercut-model") -> GGUFTarget:
    """Decide from the config alone (before weights load) whether a GGUF export reloads as the same model.

    Writes the hyperparameters into a tensor-less GGUF, rebuilds a config from it with transformers'
    GGUF loader, and compares every setting that changes the model's function.
    """
    import gguf
    from transformers import AutoConfig

    target = gguf_target(config)
    rope_theta(config, target.family)
    try:
        with torch.device("meta"):
            from transformers import AutoModelForCausalLM

            skeleton = AutoModelForCausalLM.from_config(config)
        tensor_names(skeleton, config, target)
        with tempfile.TemporaryDirectory(prefix="layercut-gguf-") as folder:
            path = Path(folder) / "config.gguf"
            writer = gguf.GGUFWriter(str(path), target.arch)
            write_hyperparameters(writer, config, target, name)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.close()
            logging.getLogger("transformers").disabled = True
            try:
                reloaded = AutoConfig.from_pretrained(folder, gguf_file=path.name)
            finally:
                logging.getLogger("transformers").disabled = False
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnsupportedArchitectureError(
            f"GGUF export does not support {target.family}: transformers' GGUF loader cannot read it back "
            f"({str(exc).splitlines()[0]}); export the checkpoint with --out instead") from None
    wrong = unrecorded_settings(config, reloaded)
    if wrong:
        raise UnsupportedArchitectureError(
            f"GGUF export does not support this {target.family} model: a GGUF file cannot record {wrong[0]}; "
            "export the checkpoint with --out instead")
    return target


def tensor_names(model: nn.Module, config: Any, target: GGUFTarget) -> list[tuple[str, str]]:
    """(parameter name, GGUF tensor name) for every parameter; tied weights appear once."""
    import gguf

    name_map = gguf.get_tensor_name_map(_arch_enum(target.arch), int(config.num_hidden_layers))
    names, missing = [], []
    for param_name, _ in model.named_parameters():
        gguf_name = name_map.get_name(param_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            missing.append(param_name)
        names.append((param_name, gguf_name))
    if missing:
        raise UnsupportedArchitectureError(
            f"GGUF export does not support {target.family}: llama.cpp's '{target.arch}' layout has no tensor for "
            f"{missing[0]} ({len(missing)} unnamed); export the checkpoint with --out instead")
    return names


def gguf_tensors(model: nn.Module, config: Any, target: GGUFTarget) -> list[tuple[str, torch.Tensor]]:
    """Every parameter under its GGUF name, in the layout llama.cpp stores it."""
    import gguf

    heads = {gguf.MODEL_TENSOR.ATTN_Q: int(config.num_attention_heads),
             gguf.MODEL_TENSOR.ATTN_K: int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)}
    params = dict(model.named_parameters())
    tensors = []
    for param_name, gguf_name in tensor_names(model, config, target):
        tensor = params[param_name].detach().float()
        part = gguf_name.split(".")[-2]  # blk.3.attn_q.weight -> attn_q; output_norm.weight -> output_norm
        for kind, count in heads.items():
            if target.spec.rope_interleave and part == gguf.TENSOR_NAMES[kind].split(".")[-1]:
                tensor = rotary_interleave(tensor, count)
        if target.spec.norm_offset and "norm" in part:
            tensor = tensor + target.spec.norm_offset
        tensors.append((gguf_name, tensor))
    return tensors


@dataclass
class GGUFVocab:
    """A tokenizer as GGUF stores it: `gpt2` (byte-level BPE with merges) or `llama` (SentencePiece)."""

    model: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float]


def gguf_vocab(tokenizer: Any, vocab_size: int, family: str) -> GGUFVocab:
    """Tokens by id (padded to the model's vocabulary), their types, and merges or scores."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedArchitectureError(
            f"GGUF export of {family} writes BPE tokenizers (byte-level or SentencePiece); this one is "
            f"{model.get('type', 'not a fast tokenizer')}; export the checkpoint with --out instead")
    sentencepiece = bool(model.get("byte_fallback"))
    by_id: dict[int, str] = {index: token for token, index in model["vocab"].items()}
    types = {index: gguf.TokenType.NORMAL for index in by_id}
    if sentencepiece:
        for token, index in model["vocab"].items():
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                types[index] = gguf.TokenType.BYTE
        if model.get("unk_token") in model["vocab"]:
            types[model["vocab"][model["unk_token"]]] = gguf.TokenType.UNKNOWN
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if types.get(added["id"]) != gguf.TokenType.UNKNOWN:
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    size = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(index, f"[PAD{index}]") for index in range(size)]
    token_types = [int(types.get(index, gguf.TokenType.UNUSED)) for index in range(size)]
    if sentencepiece:
        # SentencePiece BPE numbers pieces best-first, so the id order is the merge order.
        return GGUFVocab("llama", tokens, token_types, [], [-float(index) for index in range(size)])
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    return GGUFVocab("gpt2", tokens, token_types, merges, [])


def write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, family: str) -> None:
    """`tokenizer.ggml.*`: the vocabulary, the special ids and whether a BOS starts each text."""
    vocab = gguf_vocab(tokenizer, vocab_size, family)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
        writer.add_add_space_prefix(False)
    special = ((tokenizer.bos_token_id, writer.add_bos_token_id), (tokenizer.eos_token_id, writer.add_eos_token_id),
               (tokenizer.pad_token_id, writer.add_pad_token_id),
               (getattr(tokenizer, "unk_token_id", None), writer.add_unk_token_id))
    for token_id, add in special:
        if token_id is not None:
            add(int(token_id))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id and len(probe) > 1)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def tensor_array(tensor: torch.Tensor, gguf_type: str) -> np.ndarray:
    """f16 for matrices when asked; vectors (norms, biases) stay f32 as llama.cpp expects."""
    dtype = torch.float16 if gguf_type == "f16" and tensor.dim() > 1 else torch.float32
    return tensor.to(device="cpu", dtype=dtype).contiguous().numpy()


def check_ffn_width(loaded: LoadedModel) -> None:
    """GGUF has one FFN width: every block must have the config's (uniform slimming only)."""
    width = int(loaded.model.config.intermediate_size)
    widths = {int(loaded.adapter.down_proj(block).weight.numel() // loaded.model.config.hidden_size)
              for block in loaded.adapter.blocks(loaded.model)}
    if widths != {width}:
        raise UnsupportedArchitectureError(
            f"GGUF export needs one FFN width for every block; this model has {sorted(widths)} "
            f"(config says {width}); slim every block to the same width or export with --out")


def export_gguf(loaded: LoadedModel, out: str | Path, gguf_type: str = "f16", overwrite: bool = False,
                checked: GGUFTarget | None = None) -> Path:
    """Write `loaded` as one GGUF file at `out` (through a temporary file and a rename). `checked` is the
    result of `check_gguf_export` on this model's config when the caller already ran it (it builds a
    model skeleton and round-trips a GGUF header, so once is enough)."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"unknown --gguf-type '{gguf_type}'; use {' or '.join(GGUF_TYPES)}")
    config = loaded.model.config
    name = Path(loaded.source).name or "layercut-model"
    target = checked or check_gguf_export(config, name)
    check_ffn_width(loaded)
    target_path = ensure_output_free(out, overwrite)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = gguf_tensors(loaded.model, config, target)
    handle, tmp = tempfile.mkstemp(prefix=f".{target_path.name}.", dir=target_path.parent)
    os.close(handle)
    follow_umask(Path(tmp), directory=False)  # mkstemp's 0600 would hide the file from other users
    try:
        writer = gguf.GGUFWriter(tmp, target.arch)
        write_hyperparameters(writer, config, target, name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.ALL_F32)
        write_tokenizer(writer, loaded.tokenizer, int(config.vocab_size), target.family)
        for tensor_name, tensor in tensors:
            writer.add_tensor(tensor_name, tensor_array(tensor, gguf_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, target_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target_path
