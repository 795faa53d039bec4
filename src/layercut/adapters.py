"""The architecture adapter table: the one place that knows where each model family keeps its parts.

Everything else in layercut asks an `ArchAdapter` for "the decoder blocks", "the MLP's
down-projection" and so on, and never branches on `model_type`. To support a new family, add
one entry to `ADAPTERS` (the attribute paths are relative to the causal-LM model for
`blocks_path`/`final_norm_path`, and to one decoder block for the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class GGUFLayout:
    """How llama.cpp names and lays out a family's tensors in a GGUF file.

    Attributes:
        arch: llama.cpp's architecture name (`general.architecture`, and the prefix of its keys).
        top_names: (module path from the causal-LM model, GGUF tensor name) for the non-block parts.
        block_names: (module path inside a block, GGUF name after `blk.N.`) for every block part.
        rope_permute: (module path inside a block, config key of its head count) for the
            projections whose rows llama.cpp expects interleaved per rotary pair (Llama's Q and K).
    """

    arch: str
    top_names: tuple[tuple[str, str], ...]
    block_names: tuple[tuple[str, str], ...]
    rope_permute: tuple[tuple[str, str], ...] = ()


LLAMA_GGUF = GGUFLayout(
    arch="llama",
    top_names=(("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")),
    block_names=(("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                 ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                 ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"),
                 ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")),
    rope_permute=(("self_attn.q_proj", "num_attention_heads"), ("self_attn.k_proj", "num_key_value_heads")),
)


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
            not end in a linear op and a full ReplaceMe transform cannot be folded.
        ffn_width_key: the config key holding the FFN width.
        lora_targets: linear-layer names LoRA adapts in this family.
        gguf: the family's llama.cpp tensor layout, when `layercut export --gguf` supports it.
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
    lora_targets: tuple[str, ...] = field(default=())
    gguf: GGUFLayout | None = None

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

    def attn_module(self, block: nn.Module) -> nn.Module:
        return get_path(block, self.attn)

    def attn_out_proj(self, block: nn.Module) -> nn.Module:
        return get_path(block, f"{self.attn}.{self.attn_out}")

    @property
    def can_fold_linear(self) -> bool:
        """True when the MLP branch ends with a linear op, so a d x d map can be folded into it."""
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
    ArchAdapter(name="llama", model_types=("llama",), gguf=LLAMA_GGUF, **_LLAMA_LIKE),
    ArchAdapter(name="mistral", model_types=("mistral",), **_LLAMA_LIKE),
    ArchAdapter(name="qwen2", model_types=("qwen2", "qwen3"), **_LLAMA_LIKE),
    ArchAdapter(name="gemma", model_types=("gemma",), **_LLAMA_LIKE),
    ArchAdapter(name="gemma2", model_types=("gemma2", "gemma3_text"),
                mlp_post_norm="post_feedforward_layernorm", **_LLAMA_LIKE),
    ArchAdapter(
        name="phi3", model_types=("phi3",),
        blocks_path="model.layers", final_norm_path="model.norm",
        attn="self_attn", attn_out="o_proj",
        mlp="mlp", mlp_in=("gate_up_proj",), mlp_down="down_proj", fused_gate_up=True,
        input_norm="input_layernorm", post_attn_norm="post_attention_layernorm",
        lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    ),
    ArchAdapter(
        name="gpt2", model_types=("gpt2",),
        blocks_path="transformer.h", final_norm_path="transformer.ln_f",
        attn="attn", attn_out="c_proj",
        mlp="mlp", mlp_in=("c_fc",), mlp_down="c_proj",
        input_norm="ln_1", post_attn_norm="ln_2", ffn_width_key="n_inner",
        lora_targets=("c_attn", "c_proj", "c_fc"),
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
