"""The architecture adapter table: the one place that knows where each model family keeps its parts.

Everything else in layercut asks an `ArchAdapter` for "the decoder blocks", "the MLP's
down-projection" and so on, and never branches on `model_type`. To support a new family, add
one entry to `ADAPTERS` (the attribute paths are relative to the causal-LM model for
`blocks_path`/`final_norm_path`, and to one decoder block for the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from layercut.errors import UnsupportedArchitectureError


def get_path(root: nn.Module, path: str) -> nn.Module:
    """Follow a dotted attribute path ("model.layers") from `root`."""
    obj = root
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    """Set the attribute at a dotted path."""
    parent_path, _, name = path.rpartition(".")
    parent = get_path(root, parent_path) if parent_path else root
    setattr(parent, name, value)


def soft_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap), in the logits' own dtype (the order transformers uses)."""
    return torch.tanh(logits / cap) * cap


@dataclass(frozen=True)
class GGUFSpec:
    """What a family changes in the numbers it stores in a GGUF file (names come from `gguf`'s tables).

    Attributes:
        arch: llama.cpp's architecture name when it is not the `model_type` (less a `_text` suffix).
        rope_interleave: Q/K rows go in llama.cpp's interleaved rotary order (its Llama layout).
        norm_offset: added to every norm weight (Gemma keeps `scale - 1`, llama.cpp the scale).
        min_transformers: the oldest transformers whose GGUF reader converts this family's tokenizer
            right (5.16 and 5.17 split Gemma 3's words into wrong pieces: perplexity ~5,000 instead of 30).
    """

    arch: str | None = None
    rope_interleave: bool = False
    norm_offset: float = 0.0
    min_transformers: str | None = None


@dataclass(frozen=True)
class ArchAdapter:
    """Where a family keeps its decoder blocks and their parts.

    Attributes:
        name: short family name used in messages.
        model_types: `config.model_type` values served by this entry.
        blocks_path: the `nn.ModuleList` of decoder blocks, from the causal-LM model.
        final_norm_path: the norm after the last block, from the causal-LM model.
        attn: attention module inside a block; attn_out: its output projection inside `attn`.
        mlp: MLP module inside a block.
        mlp_in: input projections inside `mlp` whose *rows* are FFN neurons (gate and up).
        mlp_down: the MLP's last linear op inside `mlp`; ReplaceMe folds into it.
        fused_gate_up: `mlp_in` is one matrix holding [gate; up] stacked (Phi-3).
        input_norm / post_attn_norm: the two pre-norms of a block.
        mlp_post_norm: a norm applied after the MLP (Gemma 2/3); when set, the MLP branch does
            not end in a linear op, so ReplaceMe fits its map through the norm and folds it into
            `mlp_down` with the norm's refitted scale (methods/postnorm_fit.py).
        mlp_pre_norm: the norm in front of the MLP when it is not `post_attn_norm` (Gemma 2/3 put
            `post_attention_layernorm` after the attention and `pre_feedforward_layernorm` before the MLP).
        norm_weight_offset: the RMSNorms multiply by (offset + weight); Gemma stores weight = g - 1.
        ffn_width_key: the config key holding the FFN width.
        lora_targets: linear-layer names LoRA adapts in this family.
        gguf: how the family's tensors are stored in a GGUF file; None: `export --gguf` refuses it.
        body_path: the model body, from the causal-LM model; its `last_hidden_state` is already
            through the final norm.
        lm_head_path: the vocabulary projection, from the causal-LM model.
        logit_softcap_key: the config key of a final logit soft-cap (Gemma 2/3:
            logits = cap * tanh(logits / cap)); the cap is skipped when the key's value is None.
        requires_bos: the family was trained with BOS at the start of every sequence and scores
            garbage without it (Gemma: perplexity in the tens of thousands); loading makes a tokenizer
            that does not add it (transformers 5.17's GGUF conversion of Gemma 3, for one) add it.
    """

    name: str
    model_types: tuple[str, ...]
    blocks_path: str
    final_norm_path: str
    attn: str
    attn_out: str
    mlp: str
    mlp_in: tuple[str, ...]
    mlp_down: str
    input_norm: str
    post_attn_norm: str
    ffn_width_key: str = "intermediate_size"
    fused_gate_up: bool = False
    mlp_post_norm: str | None = None
    mlp_pre_norm: str | None = None
    norm_weight_offset: float = 0.0
    lora_targets: tuple[str, ...] = field(default=())
    gguf: GGUFSpec | None = None
    body_path: str = "model"
    lm_head_path: str = "lm_head"
    logit_softcap_key: str | None = None
    requires_bos: bool = False

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return get_path(model, self.blocks_path)

    def set_blocks(self, model: nn.Module, blocks: nn.ModuleList) -> None:
        set_path(model, self.blocks_path, blocks)

    def mlp_module(self, block: nn.Module) -> nn.Module:
        return get_path(block, self.mlp)

    def down_proj(self, block: nn.Module) -> nn.Module:
        return get_path(block, f"{self.mlp}.{self.mlp_down}")

    def mlp_inputs(self, block: nn.Module) -> list[nn.Module]:
        return [get_path(block, f"{self.mlp}.{name}") for name in self.mlp_in]

    def mlp_norm_path(self) -> str:
        """The path of the norm whose output feeds the MLP."""
        return self.mlp_pre_norm or self.post_attn_norm

    def attn_module(self, block: nn.Module) -> nn.Module:
        return get_path(block, self.attn)

    def attn_out_proj(self, block: nn.Module) -> nn.Module:
        return get_path(block, f"{self.attn}.{self.attn_out}")

    def final_hidden(self, model: nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
        """The body's final (normed) hidden states [batch, seq, d]: the causal LM without its head."""
        return get_path(model, self.body_path)(**inputs, use_cache=False).last_hidden_state

    def vocab_size(self, model: nn.Module) -> int:
        """Rows of the LM head (the width of the logits)."""
        return int(get_path(model, self.lm_head_path).weight.shape[0])

    def head_logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of `hidden` [..., d] exactly as the causal LM computes them from its final hidden states."""
        logits = get_path(model, self.lm_head_path)(hidden)
        cap = getattr(model.config, self.logit_softcap_key, None) if self.logit_softcap_key else None
        return logits if cap is None else soft_cap(logits, cap)

    @property
    def can_fold_linear(self) -> bool:
        """True when the MLP branch ends with a linear op, so a d x d map folds into it as is;
        otherwise the map acts before the post-MLP norm (ReplaceMe fits and folds it through the norm)."""
        return self.mlp_post_norm is None

    def check(self, model: nn.Module) -> None:
        """Fail with a clear message if the model lacks a part this adapter expects."""
        try:
            blocks = self.blocks(model)
        except AttributeError:
            raise UnsupportedArchitectureError(
                f"{self.name} model has no decoder blocks at '{self.blocks_path}'; "
                "update the entry in layercut/adapters.py for this checkpoint") from None
        if len(blocks) == 0:
            return
        block = blocks[0]
        parts = [f"{self.mlp}.{self.mlp_down}", f"{self.attn}.{self.attn_out}",
                 self.input_norm, self.post_attn_norm]
        parts += [f"{self.mlp}.{name}" for name in self.mlp_in]
        for part in parts:
            try:
                get_path(block, part)
            except AttributeError:
                raise UnsupportedArchitectureError(
                    f"{self.name} decoder block has no '{part}'; "
                    "update the entry in layercut/adapters.py for this checkpoint") from None


_LLAMA_LIKE = dict(
    blocks_path="model.layers", final_norm_path="model.norm",
    attn="self_attn", attn_out="o_proj",
    mlp="mlp", mlp_in=("gate_proj", "up_proj"), mlp_down="down_proj",
    input_norm="input_layernorm", post_attn_norm="post_attention_layernorm",
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
)

ADAPTERS: tuple[ArchAdapter, ...] = (
    ArchAdapter(name="llama", model_types=("llama",), gguf=GGUFSpec(rope_interleave=True), **_LLAMA_LIKE),
    ArchAdapter(name="mistral", model_types=("mistral",), gguf=GGUFSpec(arch="llama", rope_interleave=True),
                **_LLAMA_LIKE),
    ArchAdapter(name="qwen2", model_types=("qwen2", "qwen3"), gguf=GGUFSpec(), **_LLAMA_LIKE),
    ArchAdapter(name="gemma", model_types=("gemma",), norm_weight_offset=1.0, gguf=GGUFSpec(norm_offset=1.0),
                requires_bos=True, **_LLAMA_LIKE),
    ArchAdapter(name="gemma2", model_types=("gemma2", "gemma3_text"), mlp_pre_norm="pre_feedforward_layernorm",
                mlp_post_norm="post_feedforward_layernorm", norm_weight_offset=1.0,
                gguf=GGUFSpec(norm_offset=1.0, min_transformers="5.18"),
                logit_softcap_key="final_logit_softcapping", requires_bos=True, **_LLAMA_LIKE),
    ArchAdapter(
        name="phi3", model_types=("phi3",),
        blocks_path="model.layers", final_norm_path="model.norm",
        attn="self_attn", attn_out="o_proj",
        mlp="mlp", mlp_in=("gate_up_proj",), mlp_down="down_proj", fused_gate_up=True,
        input_norm="input_layernorm", post_attn_norm="post_attention_layernorm",
        lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), gguf=GGUFSpec(),
    ),
    ArchAdapter(
        name="gpt2", model_types=("gpt2",),
        blocks_path="transformer.h", final_norm_path="transformer.ln_f",
        attn="attn", attn_out="c_proj",
        mlp="mlp", mlp_in=("c_fc",), mlp_down="c_proj",
        input_norm="ln_1", post_attn_norm="ln_2", ffn_width_key="n_inner", body_path="transformer",
        lora_targets=("c_attn", "c_proj", "c_fc"), gguf=GGUFSpec(),
    ),
)


def family_name(model_type: str) -> str:
    """The family as users know it, for messages: `gemma3_text` -> `gemma3` (an entry may serve
    several model types, so its own `name` is not the model's family)."""
    return model_type.removesuffix("_text")


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for_model_type(model_type: str) -> ArchAdapter:
    """Look up the adapter for a `config.model_type`."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(
        f"model type '{model_type}' is not in layercut's adapter table "
        f"(supported: {', '.join(supported_model_types())}); add an ArchAdapter entry in layercut/adapters.py")


def get_adapter(model: nn.Module) -> ArchAdapter:
    """The checked adapter for a loaded causal-LM model."""
    adapter = adapter_for_model_type(getattr(model.config, "model_type", "<none>"))
    adapter.check(model)
    return adapter
