"""LayerChop healing (ALGORITHMS.md section 4): continue next-token pretraining of a pruned model.

`heal(loaded, config)` trains `loaded.model` in place, on packed windows of general text, either
all weights (`mode="full"`) or LoRA matrices that are merged back at the end (`mode="lora"`),
optionally distilled from a teacher (KL on next-token distributions, and optionally the hidden state
behind each cut). It writes training checkpoints, a JSONL log and a loss curve to `config.work_dir`,
and resumes bit-exactly from a checkpoint. `export_healed` saves the result as a plain checkpoint with its model card.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, model_validator
from torch import nn
from tqdm.auto import tqdm

from layercut.data import bos_id, read_text, split_windows, tokenize_text
from layercut.errors import ConfigError, DataError, LayercutError
from layercut.evaluation.perplexity import window_nll
from layercut.export import atomic_replace_dir, ensure_output_free, save_checkpoint
from layercut.healing.hidden import HiddenMatch, hidden_pairs
from layercut.healing.lora import add_lora, merge_lora
from layercut.healing.losses import kd_loss, mixed_loss, next_token_loss
from layercut.healing.report import append_jsonl, plot_loss_curve, write_jsonl
from layercut.healing.scope import SharedPrefix, first_changed_block, freeze_below, resolve_train_from
from layercut.healing.schedule import batch_indices, lr_factor, planned_steps
from layercut.healing.state import (CHECKPOINT_PREFIX, LOG_FILE, load_training_checkpoint, model_fingerprint,
                                    read_training_state, rng_states, save_training_checkpoint)
from layercut.loading import LoadedModel, load_model

CURVE_FILE = "loss_curve.png"
DEFAULT_LR = {"full": 1e-4, "lora": 1e-3}
# With max_seconds the schedule is re-planned after every step from step 3 on, from the median duration of
# the last 20 steps (robust to the slow first steps of a run and to a passing load spike).
FIRST_PROBE, RECENT_STEPS = 3, 20


class NonFiniteLossError(LayercutError):
    """Training diverged: the loss or the gradient norm stopped being a finite number."""


class HealConfig(BaseModel):
    """Every setting of a healing run; unknown keys are errors, so a recipe step is checked whole."""

    model_config = ConfigDict(extra="forbid")

    data: str | list[str]
    text_field: str = "text"
    mode: Literal["full", "lora"] = "lora"  # faster, and better per CPU-minute (docs/BENCHMARKS.md)
    steps: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    seq_len: int = Field(256, ge=2)
    max_grad_norm: float = Field(1.0, ge=0)
    lora_rank: int = Field(16, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    train_from: NonNegativeInt | Literal["auto"] | None = None
    teacher: str | None = None
    kd_weight: float = Field(0.5, ge=0, le=1)
    kd_temperature: float = Field(1.0, gt=0)
    hidden_kd_weight: float = Field(0.0, ge=0)
    hidden_kd_match: Literal["first", "all"] = "first"
    teacher_device: str | None = None
    ppl: str | None = None
    ppl_max_tokens: int | None = Field(16384, ge=1)
    eval_every: int = Field(0, ge=0)
    save_every: int = Field(0, ge=0)
    work_dir: str | None = None
    resume: str | None = None
    max_seconds: float | None = Field(None, gt=0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    progress: bool = True

    @model_validator(mode="after")
    def _needs_a_length(self) -> HealConfig:
        if self.steps is None and self.tokens is None:
            raise ValueError("give --steps or --tokens (or both: healing stops at whichever comes first)")
        if self.eval_every and self.ppl is None:
            raise ValueError("--eval-every needs --ppl, the held-out text to measure")
        return self

    @property
    def peak_lr(self) -> float:
        """`lr`, or the mode's default (LoRA matrices start at zero and want a larger rate)."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len


def build_config(**values: Any) -> HealConfig:
    """A validated `HealConfig`; invalid values become a one-line `ConfigError`."""
    try:
        return HealConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"invalid heal setting {where + ': ' if where else ''}{first['msg']}") from None


@dataclass
class HealResult:
    """What a healing run did and measured."""

    mode: str
    steps: int
    total_steps: int
    tokens: int
    final_loss: float | None
    ppl_before: float | None
    ppl_after: float | None
    train_seconds: float
    tokens_per_second: float
    interrupted: bool
    checkpoint: str | None
    teacher: str | None
    train_from: int = 0
    hidden_pairs: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_sources(config: HealConfig) -> list[str]:
    """The training text sources: one, or several whose windows are mixed."""
    return [config.data] if isinstance(config.data, str) else list(config.data)


def training_windows(tokenizer: Any, config: HealConfig) -> torch.Tensor:
    """Packed windows [N, seq_len] of the training text (every source's windows, concatenated; the
    seeded batch order mixes them); at least one whole batch is required."""
    parts = []
    for source in training_sources(config):
        ids = tokenize_text(tokenizer, read_text(source, config.text_field))
        windows = split_windows(ids, config.seq_len, bos_id(tokenizer))
        if windows.shape[0] == 0:
            raise DataError(f"training data '{source}' has {ids.numel()} tokens, fewer than one window of "
                            f"{config.seq_len}; lower --seq-len or give more text")
        parts.append(windows)
    windows = torch.cat(parts)
    if windows.shape[0] < config.batch_size:
        raise DataError(f"training data '{config.data}' gives {windows.shape[0]} windows of {config.seq_len} tokens, "
                        f"fewer than one batch of {config.batch_size}; lower --batch-size or --seq-len")
    return windows


def time_limited_steps(total: int, done: int, seconds: float, max_seconds: float | None,
                       per_step: float | None = None) -> int:
    """The planned step count once `done` steps took `seconds`: unchanged without a time limit, else
    the steps the remaining time allows at `per_step` seconds a step (default: the average so far),
    at most `total` and at least `done` (time is up), so the learning-rate schedule still ends at its
    floor when the time runs out."""
    if max_seconds is None or done == 0 or seconds <= 0:
        return total
    affordable = done + int((max_seconds - seconds) / (per_step or seconds / done))
    return max(done, min(total, affordable))


def held_out_windows(tokenizer: Any, config: HealConfig) -> torch.Tensor | None:
    """Windows of the held-out perplexity text (capped at `ppl_max_tokens`), or None without --ppl."""
    if config.ppl is None:
        return None
    ids = tokenize_text(tokenizer, read_text(config.ppl, config.text_field))
    windows = split_windows(ids, config.seq_len, bos_id(tokenizer))
    if config.ppl_max_tokens is not None:
        windows = windows[: max(1, config.ppl_max_tokens // config.seq_len)]
    if windows.shape[0] == 0:
        raise DataError(f"--ppl '{config.ppl}' has {ids.numel()} tokens, fewer than one window of "
                        f"{config.seq_len}; lower --seq-len or give more text")
    return windows


def held_out_perplexity(model: nn.Module, windows: torch.Tensor | None, batch_size: int) -> float | None:
    """Perplexity on the held-out windows, measured in eval mode (the training mode is restored)."""
    if windows is None:
        return None
    was_training = model.training
    model.eval()
    nll, count = window_nll(model, windows, batch_size=batch_size, progress=False)
    model.train(was_training)
    return math.exp(nll / count)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype: bf16 (fp16 where bf16 is unsupported) on CUDA for 'auto', none on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_teacher(loaded: LoadedModel, config: HealConfig, teacher: LoadedModel | None) -> nn.Module | None:
    """The frozen teacher model (given, or loaded from `config.teacher`), checked against the student."""
    if teacher is None and config.teacher is None:
        return None
    if teacher is None:
        device = config.teacher_device or str(loaded.device)
        teacher = load_model(config.teacher, device=device)
    model = teacher.model.eval()
    model.requires_grad_(False)
    if model.config.vocab_size != loaded.model.config.vocab_size:
        raise ConfigError(f"teacher vocabulary ({model.config.vocab_size}) differs from the student's "
                          f"({loaded.model.config.vocab_size}); distil only between models sharing a tokenizer")
    return model


def hidden_match(loaded: LoadedModel, teacher: nn.Module | None, config: HealConfig) -> HiddenMatch | None:
    """The hooks of hidden-state distillation when `hidden_kd_weight` asks for it (a teacher is needed)."""
    if not config.hidden_kd_weight:
        return None
    if teacher is None:
        raise ConfigError("--hidden-kd-weight distils hidden states from the dense model; give --teacher")
    adapter = loaded.adapter
    pairs = hidden_pairs(loaded.history, len(adapter.blocks(loaded.model)), len(adapter.blocks(teacher)),
                         config.hidden_kd_match)
    return HiddenMatch(loaded.model, teacher, adapter, pairs)


@dataclass
class TrainingRun:
    """What one optimizer step needs."""

    model: nn.Module
    teacher: nn.Module | None
    windows: torch.Tensor
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    config: HealConfig
    total_steps: int
    device: torch.device
    amp_dtype: torch.dtype | None
    shared: SharedPrefix | None = None  # the teacher reuses the student's frozen lower blocks
    hidden: HiddenMatch | None = None  # hidden-state distillation next to the cut


def forward_logits(model: nn.Module, batch: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return model(input_ids=batch.to(device), use_cache=False).logits


def micro_batch_losses(run: TrainingRun, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of one micro-batch and its parts: cross-entropy, and with a teacher the KL
    of the next-token distributions and (when weighted) the hidden-state error next to the cut."""
    logits = forward_logits(run.model, batch, run.amp_dtype)
    parts = {"ce": next_token_loss(logits, batch)}
    if run.teacher is None:
        return parts["ce"], parts
    run_teacher = partial(forward_logits, run.teacher, batch, run.amp_dtype)
    with torch.no_grad():
        teacher_logits = (run.shared.teacher_logits(run_teacher) if run.shared else run_teacher()).to(logits.device)
    parts["kl"] = kd_loss(logits, teacher_logits, run.config.kd_temperature)
    loss = mixed_loss(parts["ce"], parts["kl"], run.config.kd_weight)
    if run.hidden is not None:
        parts["hidden"] = run.hidden.loss()
        loss = loss + run.config.hidden_kd_weight * parts["hidden"]
    return loss, parts


def train_step(run: TrainingRun, step: int) -> dict[str, float]:
    """Optimizer step `step` (0-based): accumulate `grad_accum` micro-batches, clip, update."""
    config = run.config
    lr = config.peak_lr * lr_factor(step, config.warmup, run.total_steps, config.min_lr_ratio)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    sums: dict[str, float] = {"loss": 0.0}
    for micro in range(config.grad_accum):
        rows = batch_indices(run.windows.shape[0], config.batch_size, config.seed, step * config.grad_accum + micro)
        loss, parts = micro_batch_losses(run, run.windows[rows].to(run.device))
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"the training loss became {loss_value} at step {step + 1}")
        run.scaler.scale(loss / config.grad_accum).backward()
        sums["loss"] += loss_value / config.grad_accum
        for name, part in parts.items():
            sums[name] = sums.get(name, 0.0) + float(part.detach()) / config.grad_accum
    run.scaler.unscale_(run.optimizer)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    grad_norm = float(nn.utils.clip_grad_norm_(params, config.max_grad_norm or math.inf))
    if not math.isfinite(grad_norm) and not run.scaler.is_enabled():
        raise NonFiniteLossError(f"the gradient norm became {grad_norm} at step {step + 1}")
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return {"loss": sums.pop("loss"), "ce": sums.pop("ce"), "lr": lr, "grad_norm": grad_norm, **sums}


def remove_stale_artifacts(work_dir: Path) -> None:
    """Delete checkpoints, log and curve left in `work_dir` by an earlier run (fresh runs only)."""
    for path in work_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        shutil.rmtree(path)
    for name in (LOG_FILE, CURVE_FILE):
        (work_dir / name).unlink(missing_ok=True)


def heal(loaded: LoadedModel, config: HealConfig, teacher: LoadedModel | None = None) -> HealResult:
    """Train `loaded.model` in place as `config` says and return what happened.

    In LoRA mode `loaded.model` is the merged plain model afterwards. Ctrl-C stops after saving
    a checkpoint (when `work_dir` is set) and returns with `interrupted=True`; a non-finite
    loss raises `NonFiniteLossError` and leaves the last good checkpoint as it was.
    """
    windows = training_windows(loaded.tokenizer, config)
    held_out = held_out_windows(loaded.tokenizer, config)
    teacher_model = load_teacher(loaded, config, teacher)
    fingerprint = model_fingerprint(loaded.model)
    resumed = read_training_state(Path(config.resume), fingerprint, config.mode) if config.resume else None
    work_dir = Path(config.work_dir) if config.work_dir else None
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        if resumed is None:
            remove_stale_artifacts(work_dir)
    eval_batch = config.batch_size * 2
    ppl_before = resumed["ppl_before"] if resumed else held_out_perplexity(loaded.model, held_out, eval_batch)

    changed = (first_changed_block(loaded.model, teacher_model, loaded.adapter)
               if config.train_from is not None and teacher_model is not None else None)
    first_block = resolve_train_from(config.train_from, len(loaded.adapter.blocks(loaded.model)), changed)
    shared = (SharedPrefix(loaded.model, teacher_model, loaded.adapter, first_block)
              if changed is not None and 0 < first_block <= changed else None)
    hidden = hidden_match(loaded, teacher_model, config)
    if config.mode == "lora":
        model = add_lora(loaded.model, loaded.adapter, config.lora_rank, config.lora_alpha, config.lora_dropout,
                         first_block)
    else:
        model = loaded.model
        freeze_below(model, loaded.adapter, first_block)
    model.train()
    device = loaded.device
    amp_dtype = autocast_dtype(device, config.precision)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.peak_lr,
                                  betas=(0.9, 0.95), weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    total = cap = planned_steps(config.steps, config.tokens, config.tokens_per_step)
    run = TrainingRun(model, teacher_model, windows, optimizer, scaler, config, total, device, amp_dtype, shared,
                      hidden)

    log: list[dict] = []
    step, seconds, checkpoint = 0, 0.0, None
    recent: deque[float] = deque(maxlen=RECENT_STEPS)  # durations of the last steps, for the time re-plan
    if resumed is not None:
        log = load_training_checkpoint(Path(config.resume), model, optimizer, scaler)
        step, seconds, checkpoint = int(resumed["step"]), float(resumed["train_seconds"]), config.resume
        if config.max_seconds:  # the schedule re-planned for the time limit before the interruption
            total = run.total_steps = int(resumed["total_steps"])
    if work_dir is not None:
        write_jsonl(work_dir / LOG_FILE, log)

    def save(at_step: int, rng: dict) -> str | None:
        if work_dir is None:
            return checkpoint
        state = {"fingerprint": fingerprint, "mode": config.mode, "micro_step": at_step * config.grad_accum,
                 "tokens_seen": at_step * config.tokens_per_step, "train_seconds": seconds,
                 "ppl_before": ppl_before, "total_steps": total, "config": config.model_dump()}
        return str(save_training_checkpoint(work_dir, at_step, model, optimizer, scaler, state, log, rng))

    interrupted = False
    boundary_rng = rng_states()
    bar = tqdm(total=total, initial=step, desc=f"heal ({config.mode})", unit="step", disable=not config.progress)
    try:
        while step < total and not (config.max_seconds and seconds >= config.max_seconds):
            started = time.perf_counter()
            try:
                record = train_step(run, step)
            except NonFiniteLossError as exc:
                kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written"
                raise NonFiniteLossError(f"{exc}; stopped ({kept}); lower --lr or --max-grad-norm, "
                                         "or check the data") from None
            duration = time.perf_counter() - started
            seconds += duration
            recent.append(duration)
            step += 1
            if resumed is None and step >= FIRST_PROBE and config.max_seconds:
                total = run.total_steps = time_limited_steps(cap, step, seconds, config.max_seconds,
                                                             statistics.median(recent))
                bar.total = total
            boundary_rng = rng_states()
            record = {"step": step, **record, "tokens": step * config.tokens_per_step, "seconds": round(seconds, 3)}
            log.append(record)
            if config.eval_every and step % config.eval_every == 0 and held_out is not None:
                # peft injects LoRA into loaded.model's own layers, so the plain model includes it
                record["eval_ppl"] = held_out_perplexity(loaded.model, held_out, eval_batch)
            if work_dir is not None:
                append_jsonl(work_dir / LOG_FILE, record)
            bar.update(1)
            bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "lr", "eval_ppl") if k in record})
            if config.save_every and step % config.save_every == 0:
                checkpoint = save(step, boundary_rng)
    except KeyboardInterrupt:
        interrupted = True
        optimizer.zero_grad(set_to_none=True)
        checkpoint = save(step, boundary_rng)
    finally:
        bar.close()
        for hooks in (shared, hidden):
            if hooks is not None:
                hooks.close()

    model.eval()
    if config.mode == "lora":
        loaded.model = merge_lora(model)
    ppl_after = None if interrupted else held_out_perplexity(loaded.model, held_out, eval_batch)
    if work_dir is not None and log:
        write_jsonl(work_dir / LOG_FILE, log)
        plot_loss_curve(log, work_dir / CURVE_FILE, f"layercut heal ({config.mode}) of {loaded.source}")
    teacher_name = config.teacher or (teacher.source if teacher is not None else None)
    return HealResult(mode=config.mode, steps=step, total_steps=total, tokens=step * config.tokens_per_step,
                      final_loss=log[-1]["loss"] if log else None, ppl_before=ppl_before, ppl_after=ppl_after,
                      train_seconds=round(seconds, 3),
                      tokens_per_second=round(step * config.tokens_per_step / seconds, 1) if seconds else 0.0,
                      interrupted=interrupted, checkpoint=checkpoint, teacher=teacher_name,
                      train_from=first_block, hidden_pairs=hidden.pairs if hidden else [])


def heal_step_record(config: HealConfig, result: HealResult) -> dict[str, Any]:
    """The history entry (and model-card section) describing a healing run."""
    params: dict[str, Any] = {"mode": config.mode, "steps": result.steps, "tokens": result.tokens,
                              "lr": config.peak_lr, "warmup": config.warmup, "batch_size": config.batch_size,
                              "grad_accum": config.grad_accum, "seq_len": config.seq_len,
                              "max_grad_norm": config.max_grad_norm, "seed": config.seed,
                              "train_from_block": result.train_from}
    if config.mode == "lora":
        params.update(lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, lora_merged=True)
    if result.teacher:
        params.update(teacher=result.teacher, kd_weight=config.kd_weight, kd_temperature=config.kd_temperature)
    if result.hidden_pairs:
        params.update(hidden_kd_weight=config.hidden_kd_weight, hidden_kd_match=config.hidden_kd_match,
                      hidden_kd_blocks=[{"student": s, "teacher": t} for s, t in result.hidden_pairs])
    ppl = ""
    if result.ppl_before is not None and result.ppl_after is not None:
        ppl = f"; held-out perplexity {result.ppl_before:.2f} -> {result.ppl_after:.2f}"
    return {
        "command": "heal", "method": f"layerchop-{config.mode}",
        "summary": f"{result.steps} {config.mode} training steps on {result.tokens:,} tokens{ppl}",
        "params": params,
        "calibration": {"source": config.data, "seq_len": config.seq_len, "text_field": config.text_field},
        "result": {"ppl_before": result.ppl_before, "ppl_after": result.ppl_after, "ppl_source": config.ppl,
                   "final_loss": result.final_loss, "tokens_per_second": result.tokens_per_second},
    }


def export_healed(loaded: LoadedModel, config: HealConfig, result: HealResult, out: str | Path,
                  overwrite: bool = False) -> Path:
    """Save the healed model to `out` as a plain checkpoint with its model card, atomically.

    When `out` is also the training work directory, its checkpoints, log and loss curve are
    carried into the new output.
    """
    target = Path(out).expanduser()
    carries_work = bool(config.work_dir) and Path(config.work_dir).expanduser().resolve() == target.resolve()
    ensure_output_free(target, overwrite or carries_work)
    staging = target.with_name(f".{target.name}.heal-export")
    if staging.exists():
        shutil.rmtree(staging)
    save_checkpoint(loaded, staging, heal_step_record(config, result), overwrite=True)
    if carries_work:
        for path in [*target.glob(f"{CHECKPOINT_PREFIX}*"), target / LOG_FILE, target / CURVE_FILE]:
            if path.exists():
                path.rename(staging / path.name)
    atomic_replace_dir(staging, target)
    return target
