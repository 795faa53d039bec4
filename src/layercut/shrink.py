"""`shrink`: from a size target to a healed model, in one resumable run.

A target (a fraction of the parameters, a layer count, or an ideal decode speed-up by the FLOP
model of `layercut bench`) fixes how many blocks go. One calibration pass scores every candidate
(span position x method: plain drop, ReplaceMe least squares) by the relative residual its fit
already has, ||M T + Y - L||^2 / ||L||^2 (T = I for a plain drop), and places LLM-Streamline's
candidate (one trained layer for a span one block longer) where that method itself would, at the
span of highest cosine. The best few predicted, the best of each method and the Streamline
candidate (trained, so not predicted) are checked on held-out windows of the calibration text; the
winner is healed for what remains of the time budget, evaluated and saved. Every finished stage is
written to `shrink_state.json` in the output directory, so a rerun with `resume` skips it and healing
continues from its checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from layercut.calibration.capture import LinearFitStats, calibrate, collect_fit, fit_memory_bytes
from layercut.calibration.scores import ScanStats, redundancy
from layercut.calibration.selection import choose_spans
from layercut.data import as_sources, seeded_groups, share_evenly, source_windows
from layercut.errors import ConfigError, DataError
from layercut.evaluation.perplexity import window_nll
from layercut.export import count_parameters, write_text_atomic
from layercut.loading import LoadedModel
from layercut.methods.base import PruneRequest
from layercut.methods.protection import protected_blocks
from layercut.methods.replaceme import fit_residual, fold_into_block, solve_lstsq
from layercut.methods.streamline import streamline_layer
from layercut.onload import materialize
from layercut.shrink_candidates import METHODS, STREAMLINE, Candidate, span_blocks
from layercut.shrink_report import REPORT_MD, REPORT_PNG, write_report
from layercut.speed import head_parameters
from layercut.surgery import remove_blocks

STATE_FILE = "shrink_state.json"
STREAMLINE_EPOCHS = 10  # the replacement trains one window per step; shrink's few windows need more epochs
TargetKind = Literal["params", "layers", "speedup"]


@dataclass(frozen=True)
class Target:
    """What the user asked for: a parameter fraction, a layer count or an ideal decode speed-up."""

    kind: TargetKind
    value: float

    def __post_init__(self) -> None:
        """Refuse a target no model can meet (the model-dependent limits are `cut_for_target`'s)."""
        if self.kind == "params" and not 0.0 < self.value < 1.0:
            raise ConfigError(f"--target-params {self.value:g} is not a fraction of the dense parameters; "
                              "give a number between 0 and 1, e.g. 0.8")
        if self.kind == "layers" and (self.value != int(self.value) or self.value < 1):
            raise ConfigError(f"--target-layers {self.value:g} must be a whole number of layers, at least 1")
        if self.kind == "speedup" and not self.value > 1.0:
            raise ConfigError(f"--target-speedup {self.value:g} must be above 1, e.g. 1.25")

    def describe(self) -> str:
        return {"params": f"{self.value:g} of the parameters", "layers": f"{int(self.value)} layers",
                "speedup": f"{self.value:g}x ideal decode speed-up"}[self.kind]


@dataclass
class ModelSizes:
    """What the cut length is computed from (blocks are assumed equal in size, as in every family here)."""

    num_layers: int
    parameters: int
    block_parameters: int
    decode_flops: float
    head_flops: float


def cut_for_target(target: Target, sizes: ModelSizes) -> int:
    """Blocks to remove: the fewest that reach the target. At least one block and the first and last
    blocks stay; a target outside that range is a one-line `ConfigError`."""
    layers = sizes.num_layers
    if target.kind == "params":
        cut = math.ceil((1.0 - target.value) * sizes.parameters / sizes.block_parameters - 1e-9)
    elif target.kind == "layers":
        check_target_layers(target.value, layers)
        cut = layers - int(target.value)
    elif target.kind == "speedup":
        block_flops = (sizes.decode_flops - sizes.head_flops) / layers
        cut = math.ceil((sizes.decode_flops - sizes.decode_flops / target.value) / block_flops - 1e-9)
    else:
        raise ValueError(f"unknown target kind {target.kind}")
    if cut > layers - 2:
        raise ConfigError(f"{target.describe()} needs {cut} of {layers} blocks cut, but the first and last blocks "
                          f"stay; ask for a larger model (at most {layers - 2} blocks can go)")
    return max(cut, 1)


def check_target_layers(value: float, num_layers: int) -> None:
    if value >= num_layers:
        raise ConfigError(f"--target-layers {value:g} must be below the model's {num_layers} layers")


def predicted_decode_speedup(sizes: ModelSizes, cut: int) -> float:
    """Dense / pruned decode FLOPs per token when `cut` equal blocks go (the LM head stays)."""
    block_flops = (sizes.decode_flops - sizes.head_flops) / sizes.num_layers
    return sizes.decode_flops / (sizes.decode_flops - cut * block_flops)


def model_sizes(loaded: LoadedModel, prompt_len: int = 512, gen_len: int = 128) -> ModelSizes:
    """Sizes of the dense model; decode FLOPs at `layercut bench`'s default lengths."""
    from layercut.speed import compute_profile

    blocks = loaded.adapter.blocks(loaded.model)
    profile = compute_profile(loaded, prompt_len, gen_len)
    return ModelSizes(num_layers=len(blocks), parameters=count_parameters(loaded.model),
                      block_parameters=round(sum(count_parameters(b) for b in blocks) / len(blocks)),
                      decode_flops=profile["decode_flops_per_token"], head_flops=2.0 * head_parameters(loaded))


def relative_residuals(stats: LinearFitStats, alpha: float = 0.0) -> dict[str, float]:
    """Each method's span-output error relative to the span output's energy: ||M T + Y - L||^2 / ||L||^2
    with T = I (drop: the span's input passes straight on) and T = the least-squares map."""
    dim = stats.gram.shape[0]
    energy = max(float(stats.output_sq), 1e-30)
    transform = solve_lstsq(stats.gram, stats.cross, alpha)
    return {"drop": max(fit_residual(stats.gram, stats.cross, stats.target_sq,
                                     torch.eye(dim, dtype=torch.float64)), 0.0) / energy,
            "replaceme-lstsq": max(fit_residual(stats.gram, stats.cross, stats.target_sq, transform), 0.0) / energy}


def candidate_starts(num_layers: int, cut: int) -> list[int]:
    """Span starts with a block before the span (ReplaceMe's fold block) and the last block kept."""
    return list(range(1, num_layers - cut))


def streamline_start(scan: ScanStats, cut: int) -> int | None:
    """Where LLM-Streamline puts a replacement that removes `cut` blocks: the span of `cut` + 1 blocks
    with the highest cosine between its input and output, under prune's default protection (first and
    last blocks kept); None if none fits."""
    guarded = tuple(protected_blocks(scan.num_layers, min_start=None, allow_last=False))
    starts = choose_spans(redundancy(scan, "cosine"), span_blocks(STREAMLINE, cut), protected=guarded)
    return starts[0] if starts else None


def score_candidates(loaded: LoadedModel, windows: torch.Tensor, cut: int, batch_size: int = 8,
                     fit_memory_gib: float = 4.0, progress: bool = True, methods: tuple[str, ...] = METHODS
                     ) -> tuple[list[Candidate], dict[int, LinearFitStats]]:
    """One calibration pass: every span start x method with its predicted (relative residual) error,
    best first, then the Streamline candidate, and the least-squares sums per fold block (to build a
    candidate without another pass). ReplaceMe skips spans holding a block that creates massive
    activations, as its method does (no linear map reproduces them)."""
    starts = candidate_starts(loaded.num_layers, cut)
    dim = loaded.model.config.hidden_size
    needed = fit_memory_bytes(dim, len(starts))
    if needed > fit_memory_gib * 2**30:
        raise ConfigError(f"scoring {len(starts)} span positions needs {needed / 2**30:.1f} GiB of least-squares "
                          f"sums; raise --fit-memory-gib above that or free memory")
    calibration = calibrate(loaded, windows, batch_size, cut=cut, fold_blocks=[k - 1 for k in starts],
                            progress=progress)
    massive = set(calibration.scan.massive_creators())
    params = count_parameters(loaded.model) - sum(
        count_parameters(b) for b in loaded.adapter.blocks(loaded.model)[starts[0]:starts[0] + cut])
    usable = candidate_methods(loaded, methods)
    predicted = [method for method in usable if method != STREAMLINE]
    candidates = []
    for start in starts:
        residuals = relative_residuals(calibration.fits[start - 1])
        for method in predicted:
            if method == "replaceme-lstsq" and massive & set(range(start, start + cut)):
                continue
            candidates.append(Candidate(method, start, cut, params, residuals[method]))
    candidates.sort(key=lambda c: c.predicted)
    trained_start = streamline_start(calibration.scan, cut) if STREAMLINE in usable else None
    if trained_start is not None:
        candidates.append(Candidate(STREAMLINE, trained_start, cut, params, None))
    return candidates, calibration.fits


def candidate_methods(loaded: LoadedModel, methods: tuple[str, ...] = METHODS) -> tuple[str, ...]:
    """Of `methods`, those shrink can build on this model: its one-pass residual predicts a map folded
    into `down_proj`, which is the ReplaceMe fit only where the MLP output is not normalised; families
    with a post-MLP norm (Gemma 2/3) get no ReplaceMe candidates (`layercut prune --method
    replaceme-lstsq` fits through their norm)."""
    return tuple(m for m in methods if m != "replaceme-lstsq" or loaded.adapter.can_fold_linear)


def to_check(candidates: list[Candidate], top: int) -> list[Candidate]:
    """The `top` best predicted candidates, plus the best of each method not among them (the trained
    Streamline candidate, which has no prediction, is always checked)."""
    chosen = [c for c in candidates if c.predicted is not None][:top]
    for method in METHODS:
        best = next((c for c in candidates if c.method == method), None)
        if best is not None and best not in chosen:
            chosen.append(best)
    return chosen


def apply_candidate(loaded: LoadedModel, candidate: Candidate, fits: dict[int, LinearFitStats],
                    windows: torch.Tensor, batch_size: int = 8, progress: bool = True, seed: int = 0) -> list[int]:
    """Cut `candidate` from `loaded` in place and return the removed blocks; ReplaceMe folds its
    least-squares map into the block before the span, from `fits` or (after a resume) from a pass
    over `windows` that stops after the span; Streamline trains its layer on `windows`."""
    if candidate.method == STREAMLINE:
        request = PruneRequest(method=STREAMLINE, cut=span_blocks(STREAMLINE, candidate.cut), start=candidate.start,
                               batch_size=batch_size, seed=seed, progress=progress,
                               options={"epochs": STREAMLINE_EPOCHS, "patience": 3,
                                        "train_batch_tokens": windows.shape[1]})
        return streamline_layer(loaded, windows, request, request.method_options()).removed
    if candidate.method == "replaceme-lstsq":
        if candidate.method not in candidate_methods(loaded):
            raise ConfigError(f"shrink cannot fold a ReplaceMe map into a {loaded.model.config.model_type} block "
                              "(its MLP output is normalised); use layercut prune --method replaceme-lstsq")
        fold_block = candidate.start - 1
        stats = fits.get(fold_block) or collect_fit(loaded, windows, fold_block, candidate.cut, batch_size,
                                                    progress=progress)[0]
        materialize(loaded, [fold_block])
        fold_into_block(loaded, fold_block, solve_lstsq(stats.gram, stats.cross))
    elif candidate.method != "drop":
        raise ValueError(f"unknown shrink method {candidate.method}")
    return remove_blocks(loaded, range(candidate.start, candidate.start + candidate.cut))


def describe_cut(candidate: Candidate) -> str:
    """What a candidate does to the model, in words."""
    last = candidate.start + span_blocks(candidate.method, candidate.cut) - 1
    if candidate.method == STREAMLINE:
        return f"replaced blocks {candidate.start}..{last} by one trained decoder layer ({candidate.method})"
    return f"removed blocks {candidate.start}..{last} ({candidate.method})"


def copy_loaded(loaded: LoadedModel) -> LoadedModel:
    """An independent copy of the model (the tokenizer and adapter are shared)."""
    return LoadedModel(model=copy.deepcopy(loaded.model), tokenizer=loaded.tokenizer, adapter=loaded.adapter,
                       source=loaded.source, history=list(loaded.history))


def windows_perplexity(loaded: LoadedModel, windows: torch.Tensor, batch_size: int = 8) -> float:
    nll, count = window_nll(loaded.model, windows, batch_size=batch_size, progress=False)
    return math.exp(nll / count)


def split_calibration(tokenizer: Any, source: str | list[str], samples: int, heldout: int, seq_len: int,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint calibration and held-out windows of the text, drawn in a seeded random order; a mix of
    several sources shares both counts evenly."""
    sources = as_sources(source)
    if min(samples, heldout) < len(sources):
        raise DataError(f"--samples {samples} and --heldout {heldout} must each be at least the "
                        f"{len(sources)} calibration sources; raise them or give fewer --calib sources")
    calib, check = [], []
    for name, n_calib, n_check in zip(sources, share_evenly(samples, len(sources)),
                                      share_evenly(heldout, len(sources))):
        windows = source_windows(tokenizer, name, seq_len)
        if windows.shape[0] < n_calib + n_check:
            raise DataError(f"'{name}' gives only {windows.shape[0]} windows of {seq_len} tokens but --samples "
                            f"{n_calib} + --heldout {n_check} were asked; lower them or --seq-len, or give more text")
        drawn, held = seeded_groups(windows, [n_calib, n_check], seed)
        calib.append(drawn)
        check.append(held)
    return torch.cat(calib), torch.cat(check)


@dataclass
class ShrinkState:
    """What a shrink run has finished; saved after every stage so a rerun continues from there."""

    settings: dict[str, Any]
    cut: int | None = None
    dense: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    checked: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] | None = None
    heal: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def save(self, out: Path) -> None:
        write_text_atomic(out / STATE_FILE, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, out: Path, settings: dict[str, Any]) -> "ShrinkState":
        """The saved state, refused when the run that wrote it had other settings."""
        path = out / STATE_FILE
        if not path.is_file():
            return cls(settings=settings)
        try:
            state = cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError):
            raise ConfigError(f"'{path}' is damaged; delete it to start again") from None
        changed = sorted(k for k in set(settings) | set(state.settings) if settings.get(k) != state.settings.get(k)
                         and k not in RESUMABLE_SETTINGS)
        if changed:
            raise ConfigError(f"'{out}' was started with other settings ({', '.join(changed)}); resume with the same "
                              "ones or use another --out")
        state.settings = settings
        return state

    def spent(self) -> float:
        return sum(self.seconds.values())


RESUMABLE_SETTINGS = ("budget_minutes", "progress")  # may change between a run and its resumption


@dataclass
class ShrinkConfig:
    """Every setting of a shrink run (the command's flags)."""

    target: Target
    calib: str | list[str] = "builtin:pydoc-calib"
    samples: int = 32
    heldout: int = 16
    seq_len: int = 256
    batch_size: int = 8
    check_top: int = 3
    methods: tuple[str, ...] = METHODS
    budget_minutes: float = 10.0
    heal_data: list[str] = field(default_factory=list)  # empty: the calibration text
    heal_mode: Literal["full", "lora"] = "lora"
    heal_lr: float | None = None
    heal_seq_len: int = 256
    heal_batch_size: int = 4
    heal_tokens: int | None = None  # a cap besides the time budget
    kd_weight: float = 0.5
    ppl: str | None = None
    ppl_max_tokens: int = 16384
    ppl_seq_len: int = 256
    fit_memory_gib: float = 4.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"--methods {','.join(self.methods)}: choose from {', '.join(METHODS)}")

    def settings(self, model: str) -> dict[str, Any]:
        return {"model": model, **{k: v for k, v in asdict(self).items() if k not in ("target", "methods")},
                "methods": list(self.methods), "target": asdict(self.target)}


MIN_HEAL_SECONDS = 20.0


@dataclass
class ShrinkResult:
    state: ShrinkState
    model_dir: Path | None
    interrupted: bool = False


class Stage:
    """Times a stage and adds its wall seconds to the state, also when it is interrupted."""

    def __init__(self, state: ShrinkState, name: str) -> None:
        self.state, self.name = state, name

    def __enter__(self) -> "Stage":
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.seconds[self.name] = self.state.seconds.get(self.name, 0.0) + time.perf_counter() - self.started


def latest_checkpoint(work_dir: Path) -> Path | None:
    from layercut.healing.state import CHECKPOINT_PREFIX

    found = sorted(work_dir.glob(f"{CHECKPOINT_PREFIX}*")) if work_dir.is_dir() else []
    return found[-1] if found else None


OUTPUTS = (STATE_FILE, "pruned", "heal", "model", REPORT_MD, REPORT_PNG)


def remove_stale_outputs(out: Path) -> None:
    """A fresh run in an existing directory (--overwrite) starts from nothing a former run left."""
    import shutil

    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def heal_budget(config: ShrinkConfig, state: ShrinkState) -> float:
    """Seconds left for training: the budget less what the stages took, less the final evaluation
    (as long as the dense model's, held-out and --ppl text) and the save."""
    reserve = state.dense.get("heldout_seconds", 0.0) + state.dense.get("text_seconds", 0.0) + 15.0
    return config.budget_minutes * 60.0 - state.spent() - reserve


def shrink(loaded: LoadedModel, config: ShrinkConfig, out: str | Path, resume: bool = False) -> ShrinkResult:
    """Run (or continue) every stage for `loaded` (the dense model, left unchanged) into `out`."""
    from layercut.export import save_checkpoint
    from layercut.loading import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        state = ShrinkState.load(out, config.settings(loaded.source))
    else:
        remove_stale_outputs(out)
        state = ShrinkState(settings=config.settings(loaded.source))
    sizes = model_sizes(loaded)
    state.cut = cut_for_target(config.target, sizes)
    calib, heldout = split_calibration(loaded.tokenizer, config.calib, config.samples, config.heldout,
                                       config.seq_len, config.seed)
    fits: dict[int, LinearFitStats] = {}
    if not state.candidates:
        with Stage(state, "score"):
            started = time.perf_counter()
            dense_ppl = windows_perplexity(loaded, heldout, config.batch_size)
            state.dense = {"heldout_ppl": dense_ppl, "heldout_seconds": time.perf_counter() - started,
                           "params": sizes.parameters, "layers": sizes.num_layers}
            if config.ppl:
                started = time.perf_counter()
                state.dense["text"] = ppl_on_text(loaded, config)
                state.dense["text_seconds"] = time.perf_counter() - started
            candidates, fits = score_candidates(loaded, calib, state.cut, config.batch_size, config.fit_memory_gib,
                                                config.progress, config.methods)
            state.candidates = [asdict(c) for c in candidates]
        state.save(out)
    pruned_dir = out / "pruned"
    if state.chosen is None:
        best: tuple[float, Candidate, LoadedModel, list[int]] | None = None
        with Stage(state, "check"):
            done = {Candidate(**d).name for d in state.checked}
            checked = [c for c in to_check([Candidate(**c) for c in state.candidates], config.check_top)
                       if c.name not in done]
            for candidate in checked:
                trial = copy_loaded(loaded)
                removed = apply_candidate(trial, candidate, fits, calib, config.batch_size, config.progress, config.seed)
                candidate.heldout_ppl = windows_perplexity(trial, heldout, config.batch_size)
                state.checked.append(asdict(candidate))
                state.save(out)
                if best is None or candidate.heldout_ppl < best[0]:
                    best = (candidate.heldout_ppl, candidate, trial, removed)
            winner = Candidate(**min(state.checked, key=lambda c: c["heldout_ppl"]))
            if best is not None and best[1].name == winner.name:
                pruned, removed = best[2], best[3]
            else:
                pruned = copy_loaded(loaded)
                removed = apply_candidate(pruned, winner, fits, calib, config.batch_size, config.progress, config.seed)
            save_checkpoint(pruned, pruned_dir, {
                "command": "shrink", "method": winner.method,
                "summary": f"{config.target.describe()}: {describe_cut(winner)}, the best of {len(state.checked)} "
                           "candidates checked on held-out text",
                "params": {"target": asdict(config.target), "start": winner.start, "cut": winner.cut},
                "calibration": {"source": config.calib, "samples": config.samples, "seq_len": config.seq_len,
                                "seed": config.seed},
                "result": {"heldout_ppl": winner.heldout_ppl, "dense_heldout_ppl": state.dense["heldout_ppl"],
                           "predicted_residual": winner.predicted, "layers_before": sizes.num_layers,
                           "removed_blocks": removed}}, overwrite=True)
        state.chosen = {**asdict(winner), "path": str(pruned_dir)}
        state.save(out)
    else:
        pruned = load_model(str(pruned_dir), device=str(loaded.device))

    model_dir = out / "model"
    if state.heal is None or state.heal.get("interrupted"):
        interrupted = heal_stage(loaded, pruned, config, state, out, model_dir)
        if interrupted:
            return ShrinkResult(state, None, interrupted=True)
    if state.final is None:
        with Stage(state, "evaluate"):
            final = load_model(str(model_dir), device=str(loaded.device))
            state.final = final_evaluation(final, config, heldout)
        state.save(out)
    write_report(out, asdict(state))
    return ShrinkResult(state, model_dir)


def heal_stage(dense: LoadedModel, pruned: LoadedModel, config: ShrinkConfig, state: ShrinkState, out: Path,
               model_dir: Path) -> bool:
    """Heal the chosen model for the time left (or skip healing when too little is left) and save it
    to `model_dir`; True when Ctrl-C stopped it (a checkpoint for the rerun is kept)."""
    from layercut.export import save_checkpoint
    from layercut.healing.trainer import build_config, heal, heal_step_record

    seconds = heal_budget(config, state)
    if state.heal is None and seconds < MIN_HEAL_SECONDS:
        state.heal = {"skipped": f"{max(seconds, 0):.0f} s of the budget left, too little to heal"}
        save_checkpoint(pruned, model_dir, {"command": "shrink", "method": "no-heal",
                                            "summary": state.heal["skipped"]}, overwrite=True)
        state.save(out)
        return False
    work_dir = out / "heal"
    resume_from = latest_checkpoint(work_dir) if state.heal else None
    limit = state.heal["max_seconds"] if state.heal else seconds
    # two warmup steps: a time-limited run on a slow machine may have only a few
    heal_config = build_config(
        data=config.heal_data or config.calib, mode=config.heal_mode, lr=config.heal_lr,
        steps=None if config.heal_tokens else 1_000_000, tokens=config.heal_tokens, warmup=2,
        batch_size=config.heal_batch_size, seq_len=config.heal_seq_len, kd_weight=config.kd_weight,
        max_seconds=limit, work_dir=str(work_dir), resume=str(resume_from) if resume_from else None,
        seed=config.seed, progress=config.progress)
    with Stage(state, "heal"):
        result = heal(pruned, heal_config, teacher=dense if config.kd_weight > 0 else None)
        state.heal = {**result.to_dict(), "max_seconds": limit, "log": str(work_dir / "log.jsonl")}
        if not result.interrupted:
            save_checkpoint(pruned, model_dir, heal_step_record(heal_config, result), overwrite=True)
    state.save(out)
    return result.interrupted


def ppl_on_text(loaded: LoadedModel, config: ShrinkConfig) -> dict[str, Any]:
    """Perplexity on the --ppl text, with what was measured."""
    from layercut.evaluation.perplexity import text_perplexity

    result = text_perplexity(loaded, config.ppl, config.ppl_seq_len, config.ppl_max_tokens, config.batch_size,
                             progress=False)
    return {"ppl": result.perplexity, "windows": result.windows, "seq_len": result.seq_len}


def final_evaluation(final: LoadedModel, config: ShrinkConfig, heldout: torch.Tensor) -> dict[str, Any]:
    """Held-out perplexity of the final model, and its perplexity on the --ppl text when given."""
    result: dict[str, Any] = {"heldout_ppl": windows_perplexity(final, heldout, config.batch_size),
                              "params": count_parameters(final.model), "layers": final.num_layers}
    if config.ppl:
        result["text"] = ppl_on_text(final, config)
    return result
