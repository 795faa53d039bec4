"""What `layercut shrink` chooses between: a candidate is one method applied to one span of blocks.

Kept apart from the search (`shrink.py`) and the report (`shrink_report.py`), which both name and
describe candidates the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

STREAMLINE = "streamline-layer"
METHODS = ("drop", "replaceme-lstsq", STREAMLINE)


def span_blocks(method: str, cut: int) -> int:
    """Blocks a candidate that removes `cut` blocks replaces: one more for Streamline, whose trained
    layer stands in for the whole span."""
    return cut + 1 if method == STREAMLINE else cut


def candidate_name(method: str, start: int, cut: int) -> str:
    """'method first-last' over the blocks a candidate replaces."""
    return f"{method} {start}-{start + span_blocks(method, cut) - 1}"


@dataclass
class Candidate:
    """One way to reach the target: a method and the first removed block of its span."""

    method: str
    start: int
    cut: int
    params: int
    predicted: float | None  # None: a trained replacement, measured only
    heldout_ppl: float | None = None

    @property
    def name(self) -> str:
        return candidate_name(self.method, self.start, self.cut)
