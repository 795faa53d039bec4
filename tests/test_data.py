"""Calibration data: sources, windows, determinism and errors."""

import json

import pytest
import torch

from conftest import make_tokenizer
from layercut.data import builtin_text, calibration_windows, read_text, split_windows, tokenize_text
from layercut.errors import DataError


def test_windows_are_deterministic_and_non_overlapping(text_file):
    tokenizer = make_tokenizer()
    a = calibration_windows(tokenizer, str(text_file), 16, 32, seed=1)
    b = calibration_windows(tokenizer, str(text_file), 16, 32, seed=1)
    c = calibration_windows(tokenizer, str(text_file), 16, 32, seed=2)
    assert a.shape == (16, 32) and torch.equal(a, b) and not torch.equal(a, c)
    ids = tokenize_text(tokenizer, text_file.read_text())
    all_windows = split_windows(ids, 32, None)
    assert all(any(torch.equal(w, row) for row in all_windows) for w in a)


def test_a_mix_of_sources_shares_the_samples_evenly(text_file, tmp_path):
    tokenizer = make_tokenizer()
    other = tmp_path / "other.txt"
    other.write_text(" ".join(f"word{i % 97} thing{i % 13}" for i in range(4000)))
    mixed = calibration_windows(tokenizer, [str(text_file), str(other)], 7, 32, seed=3)
    first = calibration_windows(tokenizer, str(text_file), 4, 32, seed=3)
    second = calibration_windows(tokenizer, str(other), 3, 32, seed=3)
    assert torch.equal(mixed, torch.cat([first, second]))
    assert torch.equal(calibration_windows(tokenizer, [str(text_file)], 5, 32), calibration_windows(
        tokenizer, str(text_file), 5, 32))
    with pytest.raises(DataError, match="--samples 1 is fewer than the 2 calibration sources"):
        calibration_windows(tokenizer, [str(text_file), str(other)], 1, 32)


def test_bos_windows():
    windows = split_windows(torch.arange(10, 30), 5, bos=0)
    assert windows.shape == (5, 5) and (windows[:, 0] == 0).all()
    assert windows[0, 1:].tolist() == [10, 11, 12, 13]


def test_jsonl_source_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"content": "hello"}) + "\n\n" + json.dumps({"content": "world"}) + "\n")
    assert read_text(str(path), "content") == "hello\n\nworld"
    with pytest.raises(DataError, match="d.jsonl:1: no field 'text'"):
        read_text(str(path))
    path.write_text('{"text": "a"}\n{broken\n')
    with pytest.raises(DataError, match="d.jsonl:2: invalid JSON"):
        read_text(str(path))


def test_empty_and_short_text(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="is empty"):
        read_text(str(empty))
    short = tmp_path / "short.txt"
    short.write_text("a few words only")
    with pytest.raises(DataError, match="lower --samples"):
        calibration_windows(make_tokenizer(), str(short), 4, 64)
    with pytest.raises(DataError, match="does not exist"):
        read_text(str(tmp_path / "missing.txt"))


def test_builtin_halves_are_disjoint():
    calib, evaluation = builtin_text("builtin:pydoc-calib"), builtin_text("builtin:pydoc-eval")
    assert len(calib) > 100_000 and len(evaluation) > 100_000
    assert calib[:2000] not in evaluation


def test_repeated_calib_flags_reach_the_card_as_a_list():
    import argparse

    from layercut.commands.common import calib_description
    from layercut.commands.flags import add_calib_args, calib_sources

    parser = argparse.ArgumentParser()
    add_calib_args(parser)
    parser.add_argument("--seed", type=int, default=0)  # from add_model_args in the real commands
    assert calib_sources(parser.parse_args([])) == ["builtin:pydoc-calib"]
    one = parser.parse_args(["--calib", "a.txt"])
    assert calib_description(one)["source"] == "a.txt"
    two = parser.parse_args(["--calib", "a.txt", "--calib", "builtin:pydoc-calib", "--samples", "8"])
    assert calib_description(two) == {"source": ["a.txt", "builtin:pydoc-calib"], "samples": 8, "seq_len": 256,
                                      "seed": 0}
