"""Protected blocks: every depth method keeps the first block (unless --min-start 0) and the last
block (unless --allow-last), says so in the outcome, and explains a cut moved off the best span."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import random_windows, tiny_loaded
from layercut.cli import main
from layercut.errors import ConfigError
from layercut.methods.protection import Guard, explain_choice, protected_blocks
from layercut.prune import PruneRequest, prune

LAYERS = 6


def test_protected_blocks_by_default_and_with_flags():
    assert protected_blocks(LAYERS, None, False) == {0: Guard("is the first block", "--min-start 0"),
                                                      5: Guard("is the last block", "--allow-last")}
    assert protected_blocks(LAYERS, 0, True) == {}
    assert list(protected_blocks(LAYERS, 2, True)) == [0, 1]
    guards = protected_blocks(LAYERS, 0, False, massive=[3], first_needed="folds before the span")
    assert guards[0] == Guard("is the first block (folds before the span)")
    assert guards[3] == Guard("creates massive activations", "--allow-massive-cut") and 5 in guards


def test_explain_choice_names_the_block_and_the_flag():
    guards = protected_blocks(30, None, False, massive=[11])
    assert explain_choice([11], [12], 8, "angular", guards) == (
        "best angular span 11..18 contains block 11, which creates massive activations "
        "(--allow-massive-cut to cut it); cut 12..19 instead")
    assert explain_choice([12], [12], 8, "angular", guards) is None
    assert "block 29 is the last block (--allow-last to cut it)" in explain_choice([3, 29], [3, 4], 1, "bi", guards)


def identity_last_block() -> object:
    """A tiny Llama whose last block passes its input through (zero output projections): every score
    (angular, cosine, Block Influence, perplexity) makes the last block the most redundant one."""
    loaded = tiny_loaded("llama", num_layers=LAYERS)
    last = loaded.adapter.blocks(loaded.model)[-1]
    with torch.no_grad():
        loaded.adapter.attn_out_proj(last).weight.zero_()
        loaded.adapter.down_proj(last).weight.zero_()
    return loaded


def cut_blocks(outcome) -> list[int]:
    """The blocks a method removed, or replaced (streamline: one trained layer stands for the span)."""
    return outcome.details.get("streamline", {}).get("replaced_blocks") or outcome.removed


SPAN_METHODS = [("angular", {}), ("replaceme-lstsq", {}), ("bi-span", {}), ("ppl", {"ppl_samples": 2}),
                ("shortgpt", {}), ("streamline-layer", {"epochs": 1, "train_samples": 2})]


@pytest.mark.parametrize("method, options", SPAN_METHODS)
def test_span_methods_keep_the_last_block_unless_allowed(method, options):
    windows = random_windows(4, 16)
    kept = prune(identity_last_block(), windows, PruneRequest(method=method, cut=1, batch_size=4, progress=False,
                                                              options=options))
    assert LAYERS - 1 not in cut_blocks(kept) and 0 not in cut_blocks(kept)
    assert {guard["block"] for guard in kept.details["protected"]} >= {0, LAYERS - 1}
    if method != "ppl":  # ppl never scores a protected span, so it has no best span to compare with
        assert "is the last block (--allow-last to cut it)" in kept.details["protection_note"]
    allowed = prune(identity_last_block(), windows, PruneRequest(method=method, cut=1, batch_size=4, progress=False,
                                                                 allow_last=True, options=options))
    if method == "ppl":  # a random model's perplexity may favour another cut: check the candidates
        assert LAYERS - 1 in allowed.scores["span_perplexity"] and LAYERS - 1 not in kept.scores["span_perplexity"]
    else:
        assert cut_blocks(allowed) == [LAYERS - 1] and "protection_note" not in allowed.details


def test_laco_merges_below_the_last_block_unless_allowed():
    windows = random_windows(4, 16)
    options = {"laco_threshold": -1.0, "laco_layers": 2}
    kept = prune(tiny_loaded("llama"), windows, PruneRequest(method="laco", cut=2, progress=False, options=options))
    assert LAYERS - 1 not in kept.removed and 0 not in kept.removed
    allowed = prune(tiny_loaded("llama"), windows, PruneRequest(method="laco", cut=2, progress=False,
                                                                allow_last=True, options=options))
    assert LAYERS - 1 in allowed.removed


def test_a_forced_start_on_the_last_block_is_refused():
    with pytest.raises(ConfigError, match="covers block 5, which is the last block"):
        prune(tiny_loaded("llama"), random_windows(2, 8), PruneRequest(method="angular", cut=2, start=4,
                                                                        progress=False))


def test_prune_summary_and_card_say_what_was_protected(tmp_path, capsys):
    loaded = identity_last_block()
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(tmp_path / "model"), "--method", "angular", "--cut", "1", "--calib",
                 str(calib), "--samples", "4", "--seq-len", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "protected: block 0 is the first block (--min-start 0 to cut it); block 5 is the last block" in printed
    assert "best angular block 5: block 5 is the last block (--allow-last to cut it); cut" in printed
    record = json.loads((out / "layercut.json").read_text())
    result = record["steps"][-1]["result"] if "steps" in record else record["result"]
    assert [guard["block"] for guard in result["protected"]] == [0, 5]
    assert "block 5 is the last block" in (out / "README.md").read_text()
