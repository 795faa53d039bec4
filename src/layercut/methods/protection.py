"""The blocks a depth method leaves alone, and why: blocks before `--min-start` (by default the first
block), the last block (cutting next to the output hurts most: Gemma-3-270m's perplexity x50 at
cut 4) unless `--allow-last`, and, for ReplaceMe, the blocks that create massive activations.

The model card and `layercut prune`'s summary list them, and when the best span by the scan's
score covers one of them, `explain_choice` says which block moved the cut and which flag allows it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from layercut.errors import ConfigError


@dataclass(frozen=True)
class Guard:
    """Why one block is kept (`why` reads after "block k"), and the flag that would let a method cut
    it (empty when none can)."""

    why: str
    allow: str = ""


def protected_blocks(num_layers: int, min_start: int | None, allow_last: bool,
                     massive: Iterable[int] = (), first_needed: str = "") -> dict[int, Guard]:
    """Block index -> `Guard` for every block a method may not cut.

    `min_start=None` keeps block 0 only; `first_needed` says why block 0 can never be cut by this
    method (ReplaceMe folds its map into the block before a span), which no flag lifts."""
    lowest = 1 if min_start is None else min_start
    guards = {block: Guard("is the first block", "--min-start 0") if min_start is None
              else Guard(f"lies before --min-start {min_start}", "a lower --min-start")
              for block in range(min(lowest, num_layers))}
    if first_needed and num_layers:
        guards[0] = Guard(f"is the first block ({first_needed})")
    if not allow_last and num_layers:
        guards.setdefault(num_layers - 1, Guard("is the last block", "--allow-last"))
    for block in massive:
        guards.setdefault(block, Guard("creates massive activations", "--allow-massive-cut"))
    return dict(sorted(guards.items()))


def protection_record(guards: dict[int, Guard]) -> list[dict[str, Any]]:
    """The guards as the model card records them."""
    return [{"block": block, "why": guard.why, **({"allow": guard.allow} if guard.allow else {})}
            for block, guard in guards.items()]


def guard_reason(guard: Guard) -> str:
    """`is the last block (--allow-last to cut it)`."""
    return f"{guard.why} ({guard.allow} to cut it)" if guard.allow else guard.why


def describe_protection(guards: dict[int, Guard]) -> str:
    """One line for the summary: every protected block and why."""
    return "; ".join(f"block {block} {guard_reason(guard)}" for block, guard in guards.items())


def span_text(start: int, span_len: int) -> str:
    """`11..18`, or `11` for a single block."""
    return f"{start}..{start + span_len - 1}" if span_len > 1 else str(start)


def explain_choice(best: list[int], chosen: list[int], span_len: int, score: str,
                   guards: dict[int, Guard]) -> str | None:
    """Why the cut differs from the best spans by `score` alone, or None when it does not:
    `best angular span 11..18 contains block 11, which creates massive activations
    (--allow-massive-cut to cut it); cut 12..19 instead`."""
    if sorted(best) == sorted(chosen):
        return None
    reasons = []
    for start in best:
        inside = [block for block in range(start, start + span_len) if block in guards]
        if inside:
            reason = guard_reason(guards[inside[0]])
            reasons.append(f"block {start} {reason}" if span_len == 1 else
                           f"{span_text(start, span_len)} contains block {inside[0]}, which {reason}")
    noun = "span" if span_len > 1 else "block"
    best_text = ", ".join(span_text(start, span_len) for start in sorted(best))
    chosen_text = ", ".join(span_text(start, span_len) for start in sorted(chosen))
    if len(best) == 1 and span_len > 1 and reasons:
        because = " " + reasons[0].split(" ", 1)[1]
    else:
        because = ": " + "; ".join(reasons) if reasons else " would touch another span"
    return f"best {score} {noun}{'s' if len(best) > 1 else ''} {best_text}{because}; cut {chosen_text} instead"


def protection_details(guards: dict[int, Guard], note: str | None = None) -> dict[str, Any]:
    """What a method's outcome records about the blocks it kept (the model card and layercut.json
    show it, `layercut prune` prints it) and, when the best span by score was moved, why."""
    return {"protected": protection_record(guards), "protected_summary": describe_protection(guards),
            **({"protection_note": note} if note else {})}


def check_forced_span(start: int, span_len: int, guards: dict[int, Guard]) -> None:
    """Refuse a `--start` span that covers a protected block, naming the flag that allows it."""
    inside = [block for block in range(start, start + span_len) if block in guards]
    if inside:
        raise ConfigError(f"--start {start} with a span of {span_len} blocks covers block {inside[0]}, which "
                          f"{guard_reason(guards[inside[0]])}; choose another --start")
