"""The scan and prune commands end to end on a tiny saved model, and their one-line errors."""

import json

import pytest
from transformers import AutoModelForCausalLM

from layercut.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_scan_writes_json_and_plot(tiny_dir, text_file, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "scan", "--model", str(tiny_dir), "--calib", str(text_file), "--samples", "4",
                           "--seq-len", "32", "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png"))
    assert code == 0 and "best spans of 2 block(s)" in out
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["num_layers"] == 6 and len(record["block_influence"]) == 6
    assert record["span_angular"][0][0] is None and 0 <= record["span_angular"][1][2] <= 1
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_prune_cli_writes_loadable_checkpoint(tiny_dir, text_file, tmp_path, capsys):
    out_dir = tmp_path / "pruned"
    code, out, _ = run_cli(capsys, "prune", "--model", str(tiny_dir), "--method", "replaceme-lstsq", "--cut", "2",
                           "--calib", str(text_file), "--samples", "8", "--seq-len", "32", "--out", str(out_dir))
    assert code == 0 and "6 -> 4 layers" in out
    assert AutoModelForCausalLM.from_pretrained(out_dir).config.num_hidden_layers == 4
    card = (out_dir / "README.md").read_text()
    assert "replaceme-lstsq" in card and str(text_file) in card


@pytest.mark.parametrize("case", ["missing-model", "corrupt-gguf", "cut-too-large", "empty-calib", "output-exists"])
def test_bad_input_is_one_line_exit_2(case, tiny_dir, text_file, tmp_path, capsys):
    out_dir = tmp_path / "out"
    args = {"--model": str(tiny_dir), "--calib": str(text_file), "--cut": "2", "--out": str(out_dir)}
    expected = {"missing-model": "does not exist", "corrupt-gguf": "not a GGUF", "cut-too-large": "out of range",
                "empty-calib": "is empty", "output-exists": "already exists"}[case]
    if case == "missing-model":
        args["--model"] = str(tmp_path / "no-such-model")
    elif case == "corrupt-gguf":
        bad = tmp_path / "model.gguf"
        bad.write_bytes(b"\x00" * 64)
        args["--model"] = str(bad)
    elif case == "cut-too-large":
        args["--cut"] = "6"
    elif case == "empty-calib":
        empty = tmp_path / "empty.txt"
        empty.write_text("")
        args["--calib"] = str(empty)
    elif case == "output-exists":
        out_dir.mkdir()
        (out_dir / "keep.txt").write_text("precious")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["prune", "--method", "replaceme-lstsq", "--samples", "4", "--seq-len", "16"]
    for key, value in args.items():
        argv += [key, value]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("layercut: error:") and expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "output-exists":
        assert (out_dir / "keep.txt").read_text() == "precious"


def test_building_the_parser_imports_no_torch():
    """`layercut --help` and argument errors answer at once: the parser comes from light modules only."""
    import subprocess
    import sys

    code = ("import sys; from layercut.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_light_method_table_matches_the_registry():
    from layercut.commands.export import GGUF_TYPES
    from layercut.gguf_export import GGUF_TYPES as WRITTEN_TYPES
    from layercut.methods.settings import DEPTH_METHODS
    from layercut.prune import METHODS

    assert {name: spec.options for name, spec in METHODS.items()} == DEPTH_METHODS
    assert GGUF_TYPES == WRITTEN_TYPES
