"""Recipes: a whole compression pipeline as one YAML file, validated before anything runs.

A recipe names the model (required) and seed once, then lists steps; each step is one `layercut` command
(scan, prune, slim, heal, eval, export) and its keys are that command's flags with underscores:

    model: smollm2-135m
    seed: 0
    work_dir: runs/replaceme
    steps:
      - prune: {method: replaceme-lstsq, cut: 8}
      - eval: {ppl: builtin:pydoc-eval, max_tokens: 16384}
      - export: {out: runs/replaceme/final, gguf: runs/replaceme/model.gguf}

Every step works on the model the previous model-writing step (prune, slim, heal) produced; those
write to `out`, by default `work_dir/NN-step`; "{work_dir}" in any value stands for `work_dir`. Each step model is a pydantic model that forbids
unknown keys, and an error names the file and line; the keys of a method's own options (prune,
slim) come from its `MethodOptions` declaration, so the recipe schema and the CLI never disagree.
`plan` turns a validated recipe into the argument lists of the commands, so a recipe runs exactly
the code the command line runs; an export step with `out` embeds the recipe text in that
checkpoint's model card.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      ValidationError, create_model, field_validator)

from layercut.calibration.scores import SPAN_SCORES
from layercut.errors import RecipeError
from layercut.methods.base import MethodOptions
from layercut.methods.settings import DEPTH_METHODS, GRANULARITIES, OFFLOAD_CHOICES, SLIM_METHODS


def one_of(value: str | None, choices: list[str], what: str) -> str | None:
    """Check a name against a registry the command itself reads (so the two never disagree)."""
    if value is not None and value not in choices:
        raise ValueError(f"unknown {what} '{value}'; choose one of: {', '.join(choices)}")
    return value


class Step(BaseModel):
    """Flags shared by every step; subclasses add their command's own."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    command: ClassVar[str] = ""
    writes_model: ClassVar[bool] = False  # True: the step writes a checkpoint the next step reads
    overwrite: bool | None = None


class CalibFields(Step):
    calib: str | list[str] | None = None
    text_field: str | None = None
    samples: PositiveInt | None = None
    seq_len: int | None = Field(None, ge=2)
    batch_size: PositiveInt | None = None


class ScanStep(CalibFields):
    command: ClassVar[str] = "scan"
    json_path: str | None = Field(None, alias="json")
    plot: str | None = None
    span: list[PositiveInt] | None = None
    top: PositiveInt | None = None
    granularity: Literal["block", "attn", "mlp"] | None = None
    linear_error: bool | None = None
    cut: PositiveInt | None = None


def option_fields(option_types: Iterable[type[MethodOptions]]) -> dict[str, Any]:
    """Recipe keys from the methods' option declarations: each key optional (unset = the command's default)
    and checked with the option's own type and constraints."""
    fields: dict[str, Any] = {}
    for options_type in option_types:
        for name, info in options_type.model_fields.items():
            checked = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            fields[info.alias or name] = (Optional[checked], Field(None, description=info.description))
    return fields


class PruneFields(CalibFields):
    """The `layercut prune` flags that are not a method's own options."""

    command: ClassVar[str] = "prune"
    writes_model: ClassVar[bool] = True
    method: str
    cut: PositiveInt
    out: str | None = None
    start: NonNegativeInt | None = None
    min_start: NonNegativeInt | None = None
    allow_last: bool | None = None
    num_cuts: PositiveInt | None = None
    select: str | None = None
    offload: Literal[OFFLOAD_CHOICES] | None = None  # type: ignore[valid-type]
    offload_dir: str | None = None
    granularity: Literal[GRANULARITIES] | None = None  # type: ignore[valid-type]
    heal_steps: NonNegativeInt | None = None
    heal_mode: Literal["full", "lora"] | None = None
    heal_lr: PositiveFloat | None = None
    no_progress: bool | None = None

    @field_validator("method")
    @classmethod
    def known_method(cls, value: str) -> str:
        return one_of(value, sorted(DEPTH_METHODS), "method")

    @field_validator("select")
    @classmethod
    def known_score(cls, value: str | None) -> str | None:
        return one_of(value, list(SPAN_SCORES), "span score")


PruneStep = create_model("PruneStep", __base__=PruneFields, __module__=__name__,
                         **option_fields(DEPTH_METHODS.values()))


class SlimFields(Step):
    """The `layercut slim` flags that are not a method's own options."""

    command: ClassVar[str] = "slim"
    writes_model: ClassVar[bool] = True
    ratio: float = Field(gt=0.0, lt=1.0)
    method: str | None = None
    no_progress: bool | None = None
    out: str | None = None

    @field_validator("method")
    @classmethod
    def known_method(cls, value: str | None) -> str | None:
        return one_of(value, list(SLIM_METHODS), "slim method")


SlimStep = create_model("SlimStep", __base__=SlimFields, __module__=__name__,
                        **option_fields(SLIM_METHODS.values()))


class HealStep(Step):
    command: ClassVar[str] = "heal"
    writes_model: ClassVar[bool] = True
    data: str | list[str]
    max_minutes: PositiveFloat | None = None
    text_field: str | None = None
    seq_len: int | None = Field(None, ge=2)
    ppl: str | None = None
    ppl_max_tokens: PositiveInt | None = None
    mode: Literal["full", "lora"] | None = None
    steps: PositiveInt | None = None
    tokens: PositiveInt | None = None
    lr: PositiveFloat | None = None
    min_lr_ratio: float | None = Field(None, ge=0.0, le=1.0)
    warmup: NonNegativeInt | None = None
    weight_decay: NonNegativeFloat | None = None
    batch_size: PositiveInt | None = None
    grad_accum: PositiveInt | None = None
    max_grad_norm: NonNegativeFloat | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None
    lora_rank: PositiveInt | None = None
    lora_alpha: PositiveFloat | None = None
    lora_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    train_from: NonNegativeInt | Literal["auto"] | None = None
    teacher: str | None = None
    kd_weight: float | None = Field(None, ge=0.0, le=1.0)
    kd_temperature: PositiveFloat | None = None
    hidden_kd_weight: NonNegativeFloat | None = None
    hidden_kd_match: Literal["first", "all"] | None = None
    teacher_device: str | None = None
    eval_every: NonNegativeInt | None = None
    save_every: NonNegativeInt | None = None
    resume: str | None = None
    no_progress: bool | None = None
    out: str | None = None


class EvalStep(Step):
    command: ClassVar[str] = "eval"
    baseline: str | None = None
    ppl: str | None = None
    text_field: str | None = None
    max_tokens: PositiveInt | None = None
    seq_len: int | None = Field(None, ge=2)
    ppl_batch_size: PositiveInt | None = None
    logits_mib: PositiveInt | None = None
    tasks: str | list[str] | None = None
    tasks_dir: str | None = None
    limit: PositiveInt | None = None
    num_fewshot: NonNegativeInt | None = None
    batch_size: PositiveInt | None = None
    json_path: str | None = Field(None, alias="json")
    report: str | None = None
    plot: str | None = None
    no_progress: bool | None = None
    no_cache: bool | None = None
    no_record: bool | None = None

    @field_validator("tasks")
    @classmethod
    def comma_separated(cls, value: str | list[str] | None) -> str | None:
        return ",".join(value) if isinstance(value, list) else value


class ExportStep(Step):
    command: ClassVar[str] = "export"
    out: str | None = None
    gguf: str | None = None
    gguf_type: Literal["f16", "f32"] | None = None


STEP_TYPES: dict[str, type[Step]] = {cls.command: cls
                                     for cls in (ScanStep, PruneStep, SlimStep, HealStep, EvalStep, ExportStep)}


class Recipe(BaseModel):
    """The top of a recipe: the model and settings every step shares, then the steps."""

    model_config = ConfigDict(extra="forbid")
    model: str
    seed: int = 0
    work_dir: str
    dtype: str | None = None
    device: str | None = None
    device_map: str | None = None
    trust_remote_code: bool = False
    overwrite: bool = False
    steps: list[Any] = Field(min_length=1)


@dataclass
class PlannedStep:
    """One command of a recipe: its name and the exact argument list the CLI parses."""

    command: str
    argv: list[str]
    outputs: list[str]


def yaml_node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the YAML node at path `loc` (a key's own line for mapping entries), or of
    the deepest node on that path that exists."""
    if root is None:
        return 1
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((key, value) for key, value in node.value if key.value == str(part)), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _check_duplicate_keys(node: yaml.Node, source: str) -> None:
    """PyYAML keeps the last of two equal keys silently; a recipe with one is almost surely a mistake."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                raise RecipeError(f"{source}:{key.start_mark.line + 1}: key '{key.value}' appears twice; keep one")
            seen.add(key.value)
            _check_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, source)


def parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """The data of a YAML document and its node tree (which knows every value's line)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise RecipeError(f"{source}:{line}: invalid YAML: {exc.problem}; fix the syntax on that line") from None
    if root is not None:
        _check_duplicate_keys(root, source)
    return data, root


def _where(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


MISSING_HINTS = {"model": "; add `model: smollm2-135m` (or a model directory, .gguf file or hub id)"}


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    """One line for one pydantic error, in the recipe's own words."""
    key = error["loc"][-1] if error["loc"] else ""
    if error["type"] == "extra_forbidden":
        allowed = sorted(field.alias or name for name, field in model.model_fields.items())
        closest = difflib.get_close_matches(str(key), allowed, n=1)
        if closest:
            return f"unknown key '{key}'; did you mean '{closest[0]}'?"
        return f"unknown key '{key}' (allowed: {', '.join(allowed)})"
    if error["type"] == "missing":
        return f"missing required key '{key}'{MISSING_HINTS.get(str(key), '')}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{message} (got {error['input']!r})"


def _raise_validation(exc: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...], root: yaml.Node | None,
                      source: str) -> None:
    errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")  # a typo explains a missing key
    first = errors[0]
    loc = prefix + tuple(first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    about_key = first["type"] in ("extra_forbidden", "missing")  # the message names the key itself
    where = _where(loc[:-1] if about_key else loc)
    raise RecipeError(f"{source}:{yaml_node_line(root, loc)}: {where + ': ' if where else ''}"
                      f"{_describe(first, model)}{more}") from None


def validate_recipe(data: Any, root: yaml.Node | None, source: str) -> tuple[Recipe, list[Step]]:
    """The validated top of a recipe and its typed steps, or a RecipeError naming the line."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}:1: a recipe is a mapping with 'work_dir' and 'steps'; see examples/*.yaml")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, Recipe, (), root, source)
    steps = []
    for index, item in enumerate(recipe.steps):
        loc = ("steps", index)
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in STEP_TYPES:
            raise RecipeError(f"{source}:{yaml_node_line(root, loc)}: {_where(loc)}: each step is one of "
                              f"{', '.join(STEP_TYPES)} followed by its settings, e.g. '- prune: {{cut: 4, ...}}'")
        command, params = next(iter(item.items()))
        step_type = STEP_TYPES[command]
        try:
            steps.append(step_type.model_validate(params or {}))
        except ValidationError as exc:
            _raise_validation(exc, step_type, (*loc, command), root, source)
    return recipe, steps


def load_recipe(path: str | Path) -> tuple[Recipe, list[Step]]:
    """Read and validate a recipe file."""
    recipe_path = Path(path).expanduser()
    if not recipe_path.is_file():
        raise RecipeError(f"recipe '{path}' does not exist; pass a YAML file such as examples/replaceme.yaml")
    data, root = parse_yaml(recipe_path.read_text(encoding="utf-8"), str(path))
    return validate_recipe(data, root, str(path))


def _flags(values: dict[str, Any]) -> list[str]:
    """Command-line flags for set values: True -> a bare flag, lists -> the flag repeated."""
    argv: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is False or value is None:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


WORK_DIR_MARK = "{work_dir}"


def with_work_dir(value: Any, work_dir: str) -> Any:
    """`value` with every "{work_dir}" in its strings replaced, so a recipe keeps all its outputs
    under one directory that `layercut run --work-dir` can move."""
    if isinstance(value, str):
        return value.replace(WORK_DIR_MARK, work_dir)
    if isinstance(value, list):
        return [with_work_dir(item, work_dir) for item in value]
    return value


def plan(recipe: Recipe, steps: list[Step], recipe_path: str | Path) -> list[PlannedStep]:
    """The command argument lists of a recipe, with the model flowing from step to step."""
    shared = {"seed": recipe.seed, "dtype": recipe.dtype, "device": recipe.device, "device_map": recipe.device_map,
              "trust_remote_code": recipe.trust_remote_code}
    current = recipe.model
    planned = []
    for number, step in enumerate(steps, start=1):
        values = {key: with_work_dir(value, recipe.work_dir)
                  for key, value in step.model_dump(by_alias=True, exclude_none=True).items()}
        values["overwrite"] = recipe.overwrite if step.overwrite is None else step.overwrite
        if step.writes_model and "out" not in values:
            values["out"] = str(Path(recipe.work_dir) / f"{number:02d}-{step.command}")
        if isinstance(step, ExportStep) and "out" in values:
            values["recipe"] = str(recipe_path)
        argv = [step.command, *_flags({"model": current, **shared}), *_flags(values)]
        written = ("gguf", "json", "report", "plot", "policy_out") + (() if "resume" in values else ("out",))
        outputs = [str(values[key]) for key in written if key in values]
        planned.append(PlannedStep(step.command, argv, outputs))
        if step.writes_model:
            current = values["out"]
    return planned
