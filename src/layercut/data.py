"""Text sources and token windows for calibration, training and perplexity.

A text source is a local `.txt`/`.md` file (read whole), a `.jsonl`/`.json` file (one record
per line, the text under `text_field`), the built-in `builtin:pydoc-calib` / `builtin:pydoc-eval`
(English documentation text that ships inside Python's standard library, split into two
disjoint halves), or, when online, a Hugging Face dataset written `hf:NAME[:CONFIG][:SPLIT]`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layercut.errors import DataError
from layercut.hub import hub_reachable, use_offline_datasets

BUILTIN_SOURCES = ("builtin:pydoc-calib", "builtin:pydoc-eval")
MAX_GARBAGE_SHARE = 0.05  # of characters (undecodable or control) or of tokens (byte fallback)
_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def builtin_text(name: str) -> str:
    """Python's own reference-manual topics (`pydoc_data.topics`), alternating topics per half.

    Even-numbered topics (sorted by name) form the calibration half, odd ones the evaluation
    half, so the two never share text.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DataError("this Python has no pydoc_data module; pass --calib/--ppl with a text file") from None
    names = sorted(topics)
    offset = 0 if name == "builtin:pydoc-calib" else 1
    return "\n\n".join(topics[key].strip() for key in names[offset::2])


def _read_jsonl(path: Path, text_field: str) -> str:
    pieces = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: invalid JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(record, dict) or text_field not in record:
                raise DataError(f"{path}:{number}: no field '{text_field}'; pass --text-field with the field holding the text")
            pieces.append(str(record[text_field]))
    return "\n\n".join(pieces)


def load_hf_dataset(spec: str, default_split: str = "train") -> Any:
    """The split of a Hugging Face dataset named `hf:NAME[:CONFIG][:SPLIT]` (needs `datasets`, online)."""
    parts = spec[len("hf:"):].split(":")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), \
        (parts[2] if len(parts) > 2 else default_split)
    if importlib.util.find_spec("datasets") is None:
        raise DataError("reading Hugging Face datasets needs the 'datasets' package: pip install 'layercut[hub]'")
    offline = not hub_reachable()
    if offline:
        use_offline_datasets()
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # network and hub errors come in many types
        if offline:
            raise DataError(f"cannot load dataset '{name}': the Hub is unreachable (offline) and it is not in the "
                            "local datasets cache; pass a local text or JSONL file instead") from None
        raise DataError(f"cannot load dataset '{name}': {str(exc).splitlines()[0][:200]}; "
                        "pass a local text or JSONL file instead") from None


def _read_hf_dataset(spec: str, text_field: str) -> str:
    dataset = load_hf_dataset(spec)
    name = spec[len("hf:"):].split(":")[0]
    if text_field not in dataset.column_names:
        raise DataError(f"dataset '{name}' has no column '{text_field}' (columns: {', '.join(dataset.column_names)}); "
                        "pass --text-field")
    return "\n\n".join(str(t) for t in dataset[text_field])


def read_text(source: str, text_field: str = "text") -> str:
    """All text of a source as one string; empty or missing sources are a `DataError`."""
    if source in BUILTIN_SOURCES:
        text = builtin_text(source)
    elif source.startswith("hf:"):
        text = _read_hf_dataset(source, text_field)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"text file '{source}' does not exist; pass a .txt or .jsonl file "
                            f"(or {BUILTIN_SOURCES[0]}, or hf:NAME when online)")
        if path.suffix in (".jsonl", ".json"):
            text = _read_jsonl(path, text_field)
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"text source '{source}' is empty; pass a file with text in it")
    check_is_text(source, text)
    return text


def garbage_share(text: str) -> float:
    """The share of characters that are undecodable bytes (U+FFFD) or control characters other
    than whitespace: near 0 for real text, large for binary data read as text."""
    if not text:
        return 0.0
    bad = sum(1 for char in text if char == "\ufffd" or (ord(char) < 32 and char not in "\n\r\t\f\v"))
    return bad / len(text)


def byte_fallback_share(tokenizer: Any, ids: torch.Tensor, sample: int = 200_000) -> float:
    """The share of tokens (of the first `sample`) that are SentencePiece byte-fallback pieces
    (`<0x41>`): a tokenizer spells text it cannot read one byte at a time."""
    head = ids[:sample].tolist()
    if not head:
        return 0.0
    pieces = tokenizer.convert_ids_to_tokens(head)
    return sum(1 for piece in pieces if isinstance(piece, str) and _BYTE_FALLBACK.match(piece)) / len(head)


def check_is_text(source: str, text: str) -> None:
    """Refuse binary or mostly undecodable input before it silently calibrates or trains a model."""
    share = garbage_share(text[:1_000_000])
    if share > MAX_GARBAGE_SHARE:
        raise DataError(f"'{source}' does not look like text: {share:.0%} of its characters are undecodable bytes "
                        "or control characters; pass a UTF-8 text file")


def tokenize_text(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of the whole text as one 1-D tensor, without special tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def tokenize_source(tokenizer: Any, source: str, text_field: str = "text") -> torch.Tensor:
    """Read a text source and tokenize it, refusing text the tokenizer can only spell byte by byte."""
    ids = tokenize_text(tokenizer, read_text(source, text_field))
    share = byte_fallback_share(tokenizer, ids)
    if share > 4 * MAX_GARBAGE_SHARE:
        raise DataError(f"'{source}' is {share:.0%} byte-fallback tokens for this model's tokenizer (it cannot read "
                        "the text); pass text in a language and encoding the model knows")
    return ids


def starts_with_bos(tokenizer: Any) -> bool:
    """True when the tokenizer puts its BOS token in front of a text."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id


def bos_id(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer puts one at the start of a sequence (Gemma, Llama-2...), else None."""
    return int(tokenizer.bos_token_id) if starts_with_bos(tokenizer) else None


def split_windows(ids: torch.Tensor, seq_len: int, bos: int | None) -> torch.Tensor:
    """Cut a token stream into non-overlapping windows of `seq_len`; with a BOS id, each window
    holds BOS + seq_len - 1 text tokens. The incomplete tail is dropped."""
    body = seq_len - 1 if bos is not None else seq_len
    if body < 1:
        raise DataError(f"--seq-len {seq_len} is too short; use at least 2")
    count = ids.numel() // body
    windows = ids[: count * body].view(count, body)
    if bos is not None:
        windows = torch.cat([torch.full((count, 1), bos, dtype=torch.long), windows], dim=1)
    return windows


def as_sources(source: str | Sequence[str]) -> list[str]:
    """One text source or several, as a list."""
    return [source] if isinstance(source, str) else list(source)


def share_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts that differ by at most one, the larger ones first."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def source_windows(tokenizer: Any, source: str, seq_len: int, text_field: str = "text") -> torch.Tensor:
    """Every non-overlapping window of `seq_len` tokens of one source (BOS first where the model wants it)."""
    return split_windows(tokenize_source(tokenizer, source, text_field), seq_len, bos_id(tokenizer))


def seeded_groups(windows: torch.Tensor, counts: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Disjoint groups of `counts[i]` rows of `windows`, taken one after the other from one seeded
    random order; each group is kept in text order."""
    order = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(seed))
    groups, start = [], 0
    for count in counts:
        groups.append(windows[order[start:start + count].sort().values])
        start += count
    return groups


def calibration_windows(tokenizer: Any, source: str | Sequence[str], samples: int, seq_len: int, seed: int = 0,
                        text_field: str = "text") -> torch.Tensor:
    """`samples` windows of `seq_len` tokens, shape [samples, seq_len].

    Windows are non-overlapping; when the text holds more than needed, a seeded random subset
    is taken (kept in text order), so the same seed always gives the same windows. Several
    sources share the samples evenly (a mix: a cut calibrated on one domain can lose another).
    """
    if samples < 1 or seq_len < 2:
        raise DataError("--samples must be >= 1 and --seq-len >= 2")
    sources = as_sources(source)
    if samples < len(sources):
        raise DataError(f"--samples {samples} is fewer than the {len(sources)} calibration sources; "
                        "raise --samples or give fewer --calib sources")
    parts = []
    for name, count in zip(sources, share_evenly(samples, len(sources))):
        windows = source_windows(tokenizer, name, seq_len, text_field)
        if windows.shape[0] < count:
            raise DataError(f"'{name}' gives only {windows.shape[0]} windows of {seq_len} tokens but "
                            f"{count} were asked; lower --samples or --seq-len, or give more text")
        parts.append(seeded_groups(windows, [count], seed)[0])
    return torch.cat(parts)
