"""What every method shares: the request it receives, the outcome it returns, the base class of its
option declarations, and the registries that `layercut.prune` and `layercut slim` dispatch through.
Method modules import this module, never the dispatcher, so the import graph stays one-way."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from layercut.errors import ConfigError
from layercut.methods.protection import Guard, protected_blocks

if TYPE_CHECKING:  # light at import: the command-line parser is built from this module without torch
    import torch

    from layercut.adapters import ArchAdapter
    from layercut.loading import LoadedModel


class MethodOptions(BaseModel):
    """A method's own settings, declared once (in the style of llm-compressor's modifiers).

    Each field gives its default, a `description` (the CLI help), its constraints, and, as its
    alias, the CLI flag and recipe key where they differ from the field name. The `layercut prune`
    / `slim` / `compare` flags, the recipe step keys and the model card's settings are derived from
    these declarations (`layercut.commands.options`, `layercut.recipe`, `PruneRequest.to_dict`).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    title: ClassVar[str] = ""  # the CLI argument group of the fields a class declares itself

    def settings(self) -> dict[str, Any]:
        """Every option by its key (the flag name with underscores), for the model card."""
        return self.model_dump(by_alias=True)

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Each option's key (flag name with underscores) -> its field name."""
        return {field.alias or name: name for name, field in cls.model_fields.items()}


def flag_name(key: str) -> str:
    """The command-line flag of an option key: `laco_threshold` -> `--laco-threshold`."""
    return "--" + key.replace("_", "-")


class NoOptions(MethodOptions):
    """For methods with no settings of their own."""


def resolve_options(options_type: type[MethodOptions], values: MethodOptions | dict[str, Any]) -> MethodOptions:
    """`values` (an options object, or a dict by key or field name) as a validated `options_type`;
    a bad value becomes a one-line `ConfigError` naming the flag."""
    if isinstance(values, options_type):
        return values
    if isinstance(values, MethodOptions):
        values = values.model_dump()
    try:
        return options_type.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        declared = options_type.model_fields.get(key)
        flag = flag_name((declared.alias if declared else None) or key)
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{flag} is not an option of this method; its options are: "
                              f"{', '.join(sorted(options_type.keys())) or '(none)'}") from None
        raise ConfigError(f"invalid {flag} {first['input']!r}: {first['msg']}") from None


@dataclass
class PruneRequest:
    """What to cut and how: the options every depth method shares, plus `options`, the chosen method's
    own settings (its `MethodOptions`, or a dict of them by key; unset ones take their defaults).
    `cut` is the total number of blocks removed. Blocks before `min_start` (default: block 0) and,
    unless `allow_last`, the final block are never cut (`layercut.methods.protection`)."""

    method: str
    cut: int
    start: int | None = None
    min_start: int | None = None
    num_cuts: int = 1
    select: str = "angular"
    batch_size: int = 8
    seed: int = 0
    granularity: str = "block"
    allow_last: bool = False
    progress: bool = True
    options: MethodOptions | dict[str, Any] = field(default_factory=dict)

    def method_options(self) -> MethodOptions:
        """The chosen method's settings, validated (defaults for the unset ones)."""
        return resolve_options(method_spec(self.method).options, self.options)

    def guards(self, num_layers: int, massive: Iterable[int] = (), first_needed: str = "") -> dict[int, Guard]:
        """The blocks this request protects, and why (`protected_blocks`)."""
        return protected_blocks(num_layers, self.min_start, self.allow_last, massive, first_needed)

    def to_dict(self) -> dict[str, Any]:
        """The settings for the model card: the shared ones, then the chosen method's own."""
        shared = {key: value for key, value in asdict(self).items() if key not in ("progress", "options")}
        return {**shared, **self.method_options().settings()}


@dataclass
class PruneOutcome:
    """What a method did: removed block indices (of the input model), the chosen span starts,
    the scores behind the choice, and method-specific details (fit residuals, timings...)."""

    method: str
    removed: list[int]
    span_starts: list[int]
    span_len: int
    scores: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


Method = Callable[["LoadedModel", "torch.Tensor", PruneRequest, Any], PruneOutcome]
FamilyLimit = Callable[["ArchAdapter"], Optional[str]]  # why a method cannot work on a family, or None


@dataclass(frozen=True)
class MethodSpec:
    """A registered depth method: its function, its options and the span score it selects by by default."""

    name: str
    run: Method
    options: type[MethodOptions]
    select: str
    family_limit: FamilyLimit | None = None


METHODS: dict[str, MethodSpec] = {}


def register(name: str, options: type[MethodOptions] = NoOptions, select: str = "angular",
             family_limit: FamilyLimit | None = None) -> Callable[[Method], Method]:
    """Decorator: make `method(loaded, windows, request, options)` available to `prune` (and so to the CLI,
    recipes and `compare`) as `name`, with its options declared by `options`. `family_limit(adapter)`
    says from the adapter entry alone why the method cannot work on a family (None: it can), so a
    command refuses before any weights load."""

    def add(method: Method) -> Method:
        METHODS[name] = MethodSpec(name, method, options, select, family_limit)
        return method

    return add


def method_spec(name: str) -> MethodSpec:
    """The registered method `name`, or a ConfigError listing the known ones."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]
