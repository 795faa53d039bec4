"""Every method's own options, declared in one light module (pydantic only, no torch), so that
`layercut --help`, argument errors and recipe validation never wait for torch to import.

The depth methods live in `layercut/methods/<method>.py` and register their function with
`methods.base.register(name, options, ...)`, passing the options class declared here; `DEPTH_METHODS`
lists them by name for the command line (tests/test_options.py checks the two agree). `SLIM_METHODS`
is the width methods' registry (`methods/prunenet.py` dispatches them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from layercut.methods.base import MethodOptions, NoOptions

GRANULARITIES = ("block", "attn", "mlp")  # --granularity: whole blocks, or attention / MLP sublayers
OFFLOAD_CHOICES = ("none", "layers")  # --offload: all weights in memory, or one block at a time
FIT_WEIGHTINGS = ("none", "unit-target")  # least-squares token weights of ReplaceMe


class ReplaceMeSettings(MethodOptions):
    """How the least-squares map is fitted (both ReplaceMe methods)."""

    title: ClassVar[str] = "replaceme-lstsq / replaceme-cosine (ReplaceMe)"
    alpha: float = Field(0.0, ge=0.0, description="ridge penalty of the least-squares map")
    fit_weighting: Literal[FIT_WEIGHTINGS] = Field(  # type: ignore[valid-type]
        "none", description="least-squares token weights: none, or unit-target (1/||L_t||^2, so massive-activation "
                            "tokens do not dominate)")
    fit_memory_budget: float = Field(4.0, gt=0.0, description="GiB allowed for least-squares sums of every candidate "
                                                              "cut in one pass; above it a second pass fits only the "
                                                              "chosen cut")
    allow_massive_cut: bool = Field(False, description="let ReplaceMe cut a block that creates massive activations "
                                                       "(excluded by default: no linear map reproduces them)")


class CosineSettings(ReplaceMeSettings):
    """The cosine refinement of `replaceme-cosine`."""

    title: ClassVar[str] = "replaceme-cosine"
    cosine_epochs: int = Field(10, ge=1, description="Adam epochs over the kept token rows")
    cosine_lr: float = Field(1e-4, gt=0.0, description="Adam learning rate")
    cosine_batch_tokens: int = Field(1024, ge=1, description="token rows per Adam step")
    cosine_tokens: int = Field(65536, ge=1, description="token rows kept for the cosine fit")
    cosine_init: Literal["lstsq", "identity"] = Field("lstsq", description="start from the lstsq map or the identity")
    cosine_objective: Literal["full", "residual"] = Field(
        "full", description="full: cos(MT+Y, L); residual: cos(MT, L-Y) as the reference code")


class StreamlineSettings(MethodOptions):
    """Training settings. `train_samples` caps the calibration windows used (0 = all); a tenth of
    them (at least one) is held out for early stopping after `patience` epochs without improvement.
    Hidden states above `memory_gib` go to a memory-mapped file instead of RAM."""

    title: ClassVar[str] = "streamline-layer / streamline-ffn (LLM-Streamline)"
    train_samples: int = Field(0, ge=0, description="calibration windows used to train the replacement, a tenth "
                                                    "held out (0 = all)")
    epochs: int = Field(5, ge=1, description="training epochs")
    lr: float = Field(2e-4, gt=0.0, description="AdamW learning rate")
    train_batch_tokens: int = Field(2048, ge=1, description="tokens per training step")
    patience: int = Field(2, ge=1, description="stop after this many epochs without held-out improvement")
    lm_loss_steps: int = Field(0, ge=0, description="second stage: steps of next-token loss on the replacement only "
                                                    "(0 = off)")
    lm_loss_lr: float = Field(1e-5, gt=0.0, description="learning rate of the LM-loss stage")
    memory_gib: float = Field(2.0, ge=0.0, alias="streamline_memory",
                              description="GiB of captured hidden states kept in RAM; above it they go to a "
                                          "memory-mapped temp file (0 = always)")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class LacoSettings(MethodOptions):
    """The paper's hyper-parameters: `layers` (C) blocks merged at a time, `interval` (I) blocks moved
    down after an accepted merge, `threshold` (T) on the representation similarity, and the
    calibration windows used for the check. The lowest block a merge may start at (L) is `--min-start`."""

    title: ClassVar[str] = "laco"
    threshold: float = Field(0.85, ge=-1.0, le=1.0, alias="laco_threshold",
                             description="keep a merge only when the final hidden states' mean cosine to the dense "
                                         "model's stays at or above this")
    layers: int = Field(4, ge=2, alias="laco_layers", description="blocks merged into one per step")
    interval: int = Field(2, ge=1, alias="laco_interval", description="blocks to move down after an accepted merge")
    samples: int = Field(4, ge=1, alias="laco_samples", description="calibration windows used for the similarity check")


class PplSettings(MethodOptions):
    """How many calibration windows score each candidate span of `ppl`."""

    title: ClassVar[str] = "ppl (perplexity-drop selection)"
    ppl_samples: int = Field(16, ge=1, description="calibration windows scored per candidate span")


class BiSpanSettings(MethodOptions):
    """The options of `bi-span`."""

    title: ClassVar[str] = "bi-span"
    keep_last: int = Field(0, ge=0, alias="bi_keep_last",
                           description="final blocks a span may not cover (the last one is kept anyway "
                                       "unless --allow-last)")


VARIANTS = ("layercut", "reference")
FEATURES = ("gate_norm", "gate_max", "up_norm", "up_max", "down_norm", "down_max")
REWARDS = ("coverage", "coverage+spectrum", "spectrum")
VARIANT_DEFAULTS = {"layercut": {"episodes": 60, "lr": 0.1}, "reference": {"episodes": 20, "lr": 1e-3}}


@dataclass
class PolicyConfig:
    """Settings of PruneNet policy learning. None means the variant's default (VARIANT_DEFAULTS)."""

    ratio: float
    variant: str = "layercut"
    episodes: int | None = None
    lr: float | None = None
    seed: int = 0
    gamma: float = 0.99
    samples: int = 8
    restarts: int = 4
    power: float = 4.0
    protect: float = 50.0
    features: tuple[str, ...] = FEATURES
    reward: str = "coverage"

    def resolved(self, name: str) -> Any:
        value = getattr(self, name)
        return VARIANT_DEFAULTS[self.variant][name] if value is None else value


def _variant_defaults(name: str) -> str:
    return ", ".join(f"{variant} {defaults[name]}" for variant, defaults in VARIANT_DEFAULTS.items())


class PruneNetSettings(MethodOptions):
    """The options of `layercut slim --method prunenet` (the rest of `PolicyConfig` keeps its reference values)."""

    title: ClassVar[str] = "prunenet"
    variant: Literal["layercut", "reference"] = Field(
        "layercut", description="layercut (neuron features, coverage reward) or reference (the authors' code)")
    episodes: int | None = Field(None, ge=1, description="policy learning episodes per restart (default: "
                                 + _variant_defaults("episodes") + ")")
    lr: float | None = Field(None, gt=0.0, description="policy learning rate (default: " + _variant_defaults("lr") + ")")
    policy: str | None = Field(None, description="reuse a policy file from --policy-out (no learning)")
    policy_out: str | None = Field(None, description="also save the learned policy here, to reuse at other ratios")


DEPTH_METHODS: dict[str, type[MethodOptions]] = {
    "angular": NoOptions, "bi-span": BiSpanSettings, "chop": NoOptions, "laco": LacoSettings, "last": NoOptions,
    "ppl": PplSettings, "random": NoOptions, "replaceme-cosine": CosineSettings, "replaceme-lstsq": ReplaceMeSettings,
    "shortgpt": NoOptions, "streamline-ffn": StreamlineSettings, "streamline-layer": StreamlineSettings,
}

SLIM_METHODS: dict[str, type[MethodOptions]] = {"prunenet": PruneNetSettings, "magnitude": NoOptions}
