"""LLM-Streamline: training lowers the span error, both replacement kinds export as plain checkpoints."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_saved_reload_matches, random_windows, tiny_loaded
from layercut.methods.base import PruneRequest, resolve_options
from layercut.methods.streamline import (StreamlineSettings, apply_replacement, build_replacement, capture_block_call,
                                         hidden_store, install_replacement)
from layercut.prune import prune


def _request(method: str, **options) -> PruneRequest:
    return PruneRequest(method=method, cut=3, select="cosine", progress=False, options={"epochs": 3, **options})


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def test_trained_ffn_beats_identity_on_heldout_tokens():
    loaded = tiny_loaded("llama")
    outcome = prune(loaded, random_windows(20, 16), _request("streamline-ffn", epochs=6, lr=2e-3))
    record = outcome.details["streamline"]
    assert record["heldout_windows"] == 2
    assert record["best_heldout_mse"] < record["identity_heldout_mse"]
    assert record["best_heldout_mse"] <= record["initial_heldout_mse"]
    assert loaded.num_layers == 4 and outcome.removed == [k + 1 for k in outcome.span_starts] + \
        [k + 2 for k in outcome.span_starts]


def test_exported_zero_attention_block_equals_ffn(family):
    loaded = tiny_loaded(family)
    windows = random_windows(2, 12)
    module = build_replacement(loaded, 2, "ffn")
    _perturb(module)
    call = capture_block_call(loaded, windows, 2)
    install_replacement(loaded, 2, 3, module, "ffn")
    block = loaded.adapter.blocks(loaded.model)[2]
    hidden = torch.randn(1, 12, loaded.model.config.hidden_size)
    with torch.no_grad():
        expected = module(hidden)
        got = block(hidden, *call.args, **call.kwargs)
    got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_installed_layer_is_called_like_in_training(family):
    """The layer kind is trained with the kwargs the model passes to the block; inside the pruned
    model it must compute the same function of its input."""
    loaded = tiny_loaded(family)
    windows = random_windows(2, 12)
    module = build_replacement(loaded, 1, "layer")
    _perturb(module)
    call = capture_block_call(loaded, windows, 1)
    install_replacement(loaded, 1, 3, module, "layer")
    seen = {}
    blocks = loaded.adapter.blocks(loaded.model)
    hooks = [blocks[1].register_forward_pre_hook(lambda m, a, k: seen.update(x=(a[0] if a else k["hidden_states"])),
                                                 with_kwargs=True),
             blocks[1].register_forward_hook(lambda m, a, out: seen.update(y=out[0] if isinstance(out, tuple)
                                                                           else out))]
    with torch.no_grad():
        loaded.model(input_ids=windows[:1], use_cache=False)
        expected = apply_replacement(module, seen["x"], call)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(seen["y"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["streamline-ffn", "streamline-layer"])
def test_reload_with_plain_transformers_gives_same_logits(tmp_path, method):

    loaded = tiny_loaded("qwen2")
    windows = random_windows(10, 16)
    prune(loaded, windows, _request(method, epochs=1))
    assert_saved_reload_matches(loaded, tmp_path / "out", windows, 4, method)


def test_same_seed_same_model_and_disk_store_matches_memory():
    windows = random_windows(10, 16)
    states = []
    for memory_gib in (2.0, 0.0):
        loaded = tiny_loaded("llama")
        outcome = prune(loaded, windows, _request("streamline-layer", epochs=2, memory_gib=memory_gib))
        assert outcome.details["streamline"]["streamed_from_disk"] is (memory_gib == 0.0)
        states.append(loaded.model.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=0, atol=0)


def test_hidden_store_goes_to_disk_above_budget():
    windows = random_windows(4, 8)
    with hidden_store(windows, 64, memory_gib=0.0) as store:
        store.inputs[1] = 3.0
        assert store.on_disk and float(store.inputs[1].mean()) == 3.0
    with hidden_store(windows, 64, memory_gib=1.0) as store:
        assert not store.on_disk and store.inputs.shape == (4, 8, 64)


def test_lm_loss_stage_trains_only_the_replacement():
    loaded = tiny_loaded("llama")
    before = {name: value.clone() for name, value in loaded.model.state_dict().items()}
    outcome = prune(loaded, random_windows(8, 16), _request("streamline-ffn", epochs=1, lm_loss_steps=2))
    record = outcome.details["streamline"]
    assert len(record["lm_loss"]) == 2
    start = outcome.span_starts[0]
    assert torch.equal(loaded.model.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    out_proj = loaded.adapter.attn_out_proj(loaded.adapter.blocks(loaded.model)[start])
    assert float(out_proj.weight.detach().abs().sum()) == 0.0


def test_settings_validate_and_name_the_flag():
    assert resolve_options(StreamlineSettings, {"epochs": "2", "lr": "1e-3"}).epochs == 2
    assert resolve_options(StreamlineSettings, {"streamline_memory": 0.5}).memory_gib == 0.5
    from layercut.errors import ConfigError

    with pytest.raises(ConfigError, match="--epochs"):
        resolve_options(StreamlineSettings, {"epochs": 0})
    with pytest.raises(ConfigError, match="--laco-layers is not an option"):
        resolve_options(StreamlineSettings, {"laco_layers": 2})


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_post_norm_ffn_wraps_the_mlp_in_both_norms(family):
    """In Gemma 2/3 the FFN replacement is x + post_ffn_norm(MLP(pre_ffn_norm(x))), trained norms included."""
    loaded = tiny_loaded(family)
    block = loaded.adapter.blocks(loaded.model)[2]
    module = build_replacement(loaded, 2, "ffn")
    torch.testing.assert_close(module.norm.weight, block.pre_feedforward_layernorm.weight)
    torch.testing.assert_close(module.post_norm.weight, block.post_feedforward_layernorm.weight)
    _perturb(module)
    call = capture_block_call(loaded, random_windows(2, 12), 2)
    install_replacement(loaded, 2, 3, module, "ffn")
    hidden = torch.randn(1, 12, 64)
    with torch.no_grad():
        expected = hidden + module.post_norm(module.mlp(module.norm(hidden)))
        torch.testing.assert_close(module(hidden), expected)
        got = block(hidden, *call.args, **call.kwargs)
    torch.testing.assert_close(got[0] if isinstance(got, tuple) else got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_zero_attention_output_is_zero_through_post_attention_norm(family):
    """A zeroed o_proj makes Gemma's attention branch, post_attention_layernorm included, exactly zero."""
    loaded = tiny_loaded(family)
    block = loaded.adapter.blocks(loaded.model)[1]
    with torch.no_grad():
        loaded.adapter.attn_out_proj(block).weight.zero_()
        branch = block.post_attention_layernorm(torch.zeros(3, 64))
    assert float(branch.abs().max()) == 0.0


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_post_norm_ffn_reloads_with_same_logits(tmp_path, family):

    loaded = tiny_loaded(family)
    windows = random_windows(10, 16)
    prune(loaded, windows, _request("streamline-ffn", epochs=2, lr=2e-3))
    assert_saved_reload_matches(loaded, tmp_path / "out", windows, 4, "streamline-ffn")


@pytest.mark.parametrize("method,module", [("streamline-ffn", "FFN"), ("streamline-layer", "decoder layer")])
def test_summary_names_the_replaced_span(method, module):
    """The one-line summary counts the replaced block too: cut n replaces n blocks, removes n - 1."""
    from layercut.commands.prune import describe_removal

    loaded = tiny_loaded("llama")
    outcome = prune(loaded, random_windows(10, 16), _request(method, epochs=1))
    start = outcome.span_starts[0]
    assert describe_removal(outcome, "block") == (
        f"replaced blocks {start}-{start + 2} by one trained {module} (removed blocks {[start + 1, start + 2]})")
