"""Bad input and faults answered in one line with exit code 2, nothing written: binary calibration
text, NaN weights, damaged heal checkpoints; outputs follow the umask; killed runs' staging is cleaned."""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest
import torch

from layercut.cli import main
from layercut.data import builtin_text, garbage_share
from layercut.errors import NonFiniteError
from layercut.export import make_staging_dir, remove_stale_staging, save_checkpoint
from layercut.finite import first_non_finite, require_finite_value
from tests.conftest import save_tiny, tiny_loaded


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("layercut:")]
    assert len(lines) == 1 and lines[0].startswith("layercut: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_garbage_share_counts_undecodable_and_control_characters():
    assert garbage_share("plain text,\nwith\ttabs.") == 0.0
    assert garbage_share("ab\ufffd\x01") == pytest.approx(0.5)


def test_random_bytes_as_calibration_text_are_refused(tiny_dir, tmp_path, capsys):
    junk = tmp_path / "junk.txt"
    junk.write_bytes(os.urandom(200_000))
    out = tmp_path / "out"
    code, err = run_cli(capsys, "prune", "--model", str(tiny_dir), "--method", "angular", "--cut", "1",
                        "--calib", str(junk), "--samples", "4", "--seq-len", "32", "--out", str(out))
    assert code == 2
    assert_one_line_error(err, "junk.txt", "does not look like text", "UTF-8")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_nan_weights_are_refused_by_eval_with_the_tensor_name(tmp_path, capsys):
    loaded = tiny_loaded("llama")
    with torch.no_grad():
        loaded.model.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
    loaded.model.save_pretrained(tmp_path / "nan")
    loaded.tokenizer.save_pretrained(tmp_path / "nan")
    text = tmp_path / "eval.txt"
    text.write_text(builtin_text("builtin:pydoc-eval")[:20_000])
    code, err = run_cli(capsys, "eval", "--model", str(tmp_path / "nan"), "--ppl", str(text), "--max-tokens", "256",
                        "--seq-len", "64", "--json", str(tmp_path / "e.json"))
    assert code == 2
    assert_one_line_error(err, "model.layers.2.mlp.down_proj.weight", "NaN or Inf")
    assert not (tmp_path / "e.json").exists()


def test_a_non_finite_model_is_never_saved(tmp_path):
    loaded = tiny_loaded("llama")
    with torch.no_grad():
        loaded.model.lm_head.weight[3, 1] = float("inf")
    assert first_non_finite(loaded.model) == "lm_head.weight"
    with pytest.raises(NonFiniteError, match="lm_head.weight"):
        save_checkpoint(loaded, tmp_path / "out", {"command": "test"})
    assert list(tmp_path.iterdir()) == []


def test_a_non_finite_score_names_the_problem():
    assert require_finite_value(3.5, "perplexity") == 3.5
    with pytest.raises(NonFiniteError, match="perplexity is nan"):
        require_finite_value(float("nan"), "perplexity")


@pytest.mark.parametrize("damage", ["trainer_state.json", "optimizer.pt", "rng.pt", "trainable.safetensors"])
def test_resume_from_a_damaged_checkpoint_is_one_line(damage, tmp_path, capsys):
    model_dir = save_tiny(tmp_path / "tiny")
    data = tmp_path / "train.txt"
    data.write_text(builtin_text("builtin:pydoc-calib")[:40_000])
    base = ["heal", "--model", str(model_dir), "--data", str(data), "--seq-len", "32", "--batch-size", "2",
            "--lr", "3e-3", "--warmup", "1", "--no-progress"]
    out = tmp_path / "healed"
    assert main([*base, "--steps", "2", "--save-every", "2", "--out", str(out)]) == 0
    checkpoint = out / "checkpoint-000002"
    (checkpoint / damage).write_bytes(b"\x00garbage{" * 10)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    capsys.readouterr()
    code, err = run_cli(capsys, *base, "--steps", "4", "--resume", str(checkpoint), "--out", str(out))
    assert code == 2
    assert_one_line_error(err, "checkpoint-000002", "damaged", damage.split(".")[0])
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        out = save_checkpoint(tiny_loaded("llama"), tmp_path / "out", {"command": "test"})
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "layercut.json").stat().st_mode & 0o777 == 0o644
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_killed_runs_staging_directory_is_removed_by_the_next_run(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.tmp-{int(dead.stdout)}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    live = tmp_path / f".model.tmp-{os.getpid()}-def456"
    live.mkdir()
    other = tmp_path / ".unrelated.tmp-1-x"
    other.mkdir()
    assert remove_stale_staging(tmp_path, "model") == [stale]
    assert not stale.exists() and live.exists() and other.exists()
    staging = make_staging_dir(tmp_path / "model")
    assert staging.name.startswith(f".model.tmp-{os.getpid()}-") and staging.is_dir()


def test_save_checkpoint_writes_a_provenance_record(tmp_path):
    out = save_checkpoint(tiny_loaded("llama"), tmp_path / "out", {"command": "test"})
    assert json.loads((out / "layercut.json").read_text())["steps"][-1]["command"] == "test"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_offline_hub_ids_and_datasets_fail_fast_in_one_line(monkeypatch, capsys, tmp_path):
    import layercut.data
    import layercut.loading

    monkeypatch.setattr(layercut.loading, "hub_reachable", lambda: False)
    monkeypatch.setattr(layercut.data, "hub_reachable", lambda: False)
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, os.environ.get(name, "0"))
    started = time.perf_counter()
    code, err = run_cli(capsys, "eval", "--model", "someorg/no-such-model", "--ppl", "builtin:pydoc-eval")
    assert code == 2
    assert_one_line_error(err, "someorg/no-such-model", "unreachable", "local directory")
    assert "Retry" not in err
    pytest.importorskip("datasets")
    code, err = run_cli(capsys, "prune", "--model", str(save_tiny(tmp_path / "tiny")), "--method", "angular",
                        "--cut", "1", "--calib", "hf:no-such-dataset-xyz", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line_error(err, "no-such-dataset-xyz", "unreachable")
    assert time.perf_counter() - started < 60


def test_unwritable_output_locations_are_refused_before_work(tmp_path):
    from layercut.errors import OutputLocationError
    from layercut.export import check_output_location

    assert check_output_location(tmp_path / "new" / "deeper" / "out") == tmp_path / "new" / "deeper" / "out"
    with pytest.raises(OutputLocationError, match="cannot be written"):
        check_output_location("/proc/layercut-out")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputLocationError, match="is a file"):
        check_output_location(blocker / "out")


def test_an_output_without_room_is_refused(tmp_path, monkeypatch):
    import shutil as shutil_module

    from layercut.errors import OutputLocationError
    from layercut.export import check_output_location

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=100 * 2**20))
    check_output_location(tmp_path / "out", needed_bytes=50 * 2**20)
    with pytest.raises(OutputLocationError, match="needs about 539 MiB but only 100 MiB are free"):
        check_output_location(tmp_path / "out", needed_bytes=539 * 2**20)


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3"])
def test_checkpoint_size_estimate_matches_a_saved_checkpoint(family, tmp_path):
    from layercut.loading import estimate_checkpoint_bytes, peek_config

    directory = save_tiny(tmp_path / family, family)
    config = peek_config(str(directory))
    weights = sum(path.stat().st_size for path in directory.glob("*.safetensors"))
    estimate = estimate_checkpoint_bytes(config)
    assert abs(estimate - weights) / weights < 0.02


def test_peek_config_reads_an_alias_and_refuses_missing_paths(tmp_path):
    from layercut.errors import ModelLoadError
    from layercut.loading import peek_config

    assert peek_config("smollm2-135m").num_hidden_layers == 30
    with pytest.raises(ModelLoadError, match="does not exist"):
        peek_config(str(tmp_path / "missing"))


@pytest.mark.parametrize("argv, fragments", [
    (["prune", "--method", "nope", "--cut", "2", "--out", "x"], ["--method", "invalid choice 'nope'", "angular"]),
    (["prunex"], ["invalid choice 'prunex'", "scan"]),
    (["prune", "--method", "angular", "--cut", "2", "--samples", "0", "--out", "x"], ["--samples", "at least 1"]),
    (["eval", "--ppl", "builtin:pydoc-eval", "--seq-len", "1"], ["--seq-len", "at least 2"]),
    (["eval", "--limit", "many"], ["--limit", "not a whole number"]),
])
def test_argument_errors_are_one_line_before_anything_loads(argv, fragments, capsys, tmp_path, monkeypatch):
    import layercut.loading

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(layercut.loading, "load_model", lambda *a, **k: pytest.fail("no model may load"))
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "--help" in lines[0], lines
    for fragment in fragments:
        assert fragment in lines[0]
    assert list(tmp_path.iterdir()) == []


def forbid_loading(monkeypatch) -> None:
    """Fail the test if any command loads weights (refusals must come from the config and arguments)."""
    import layercut.commands.common
    import layercut.loading

    def fail(*args, **kwargs):
        pytest.fail("no model may load before this refusal")
    for module in (layercut.loading, layercut.commands.common):
        monkeypatch.setattr(module, "load_model", fail)


def gemma3_config_only(directory: Path) -> Path:
    """A Gemma 3 text model directory holding only its config (no weights: nothing may load them)."""
    from transformers import Gemma3TextConfig

    Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("argv, fragments", [
    (["prune", "--method", "replaceme-lstsq", "--cut", "2"],
     ["--method replaceme-lstsq does not work on gemma3 models", "post_feedforward_layernorm"]),
    (["compare", "--methods", "angular,replaceme-cosine", "--cut", "2", "--ppl", "builtin:pydoc-eval"],
     ["--method replaceme-cosine does not work on gemma3"]),
    (["prune", "--method", "angular", "--cut", "6"], ["--cut 6 is out of range", "6 layers"]),
    (["prune", "--method", "laco", "--cut", "2", "--laco-layers", "1"], ["--laco-layers", "greater than or equal to 2"]),
    (["compare", "--methods", "angular,replaceme-cosine", "--cut", "2", "--ppl", "builtin:pydoc-eval",
      "--cosine-epochs", "0"],
     ["--cosine-epochs"]),
])
def test_refusals_decided_from_the_config_load_no_weights(argv, fragments, tmp_path, capsys, monkeypatch):
    forbid_loading(monkeypatch)
    model = gemma3_config_only(tmp_path / "gemma3")
    out = tmp_path / "out"
    extra = ["--out", str(out)] if argv[0] == "prune" else ["--json", str(out)]
    code, err = run_cli(capsys, *argv, "--model", str(model), *extra)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert "gemma2" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["prune", "--method", "angular", "--cut", "2", "--out", "{out}"],
    ["slim", "--ratio", "0.5", "--out", "{out}"],
    ["heal", "--data", "builtin:pydoc-calib", "--steps", "1", "--out", "{out}"],
    ["export", "--out", "{out}"],
    ["export", "--gguf", "{out}"],
])
def test_an_output_without_room_is_refused_before_loading(argv, tiny_dir, tmp_path, capsys, monkeypatch):
    import shutil as shutil_module

    forbid_loading(monkeypatch)
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=2**10))
    out = tmp_path / "out"
    code, err = run_cli(capsys, *[part.format(out=out) for part in argv], "--model", str(tiny_dir))
    assert code == 2
    assert_one_line_error(err, f"'{out}' needs about", "free some space")
    assert not out.exists()


def test_an_unwritable_output_is_refused_before_loading(tiny_dir, capsys, monkeypatch):
    forbid_loading(monkeypatch)
    code, err = run_cli(capsys, "prune", "--model", str(tiny_dir), "--method", "angular", "--cut", "2",
                        "--out", "/proc/layercut-out")
    assert code == 2
    assert_one_line_error(err, "cannot be written")


@pytest.mark.parametrize("argv, fragments", [
    (["prune", "--method", "angular", "--cut", "0", "--out", "x"], ["--cut", "at least 1", "nothing to do"]),
    (["compare", "--cut", "0"], ["--cut", "nothing to do"]),
    (["prune", "--method", "angular", "--cut", "2", "--min-start", "-1", "--out", "x"], ["--min-start", "at least 0"]),
    (["scan", "--top", "0"], ["--top", "at least 1"]),
])
def test_count_arguments_are_refused_at_parse_time(argv, fragments, capsys, tmp_path, monkeypatch):
    forbid_loading(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(fragment in lines[0] for fragment in fragments), lines
    assert list(tmp_path.iterdir()) == []


def test_slim_options_are_checked_before_loading(tiny_dir, tmp_path, capsys, monkeypatch):
    forbid_loading(monkeypatch)
    code, err = run_cli(capsys, "slim", "--model", str(tiny_dir), "--ratio", "0.5", "--lr", "0",
                        "--out", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "--lr")
    assert not (tmp_path / "out").exists()
