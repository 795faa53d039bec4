"""Recipes: validation errors name the line, steps map one to one onto commands, and a tiny
pipeline runs end to end with the recipe embedded in the final model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layercut.cli import build_parser, main
from layercut.errors import RecipeError
from layercut.recipe import STEP_TYPES, load_recipe, plan

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))

VALID = """\
model: smollm2-135m
seed: 3
work_dir: runs/x
steps:
  - scan: {samples: 8}
  - prune:
      method: replaceme-lstsq
      cut: 4
  - eval:
      ppl: builtin:pydoc-eval
      tasks: [piqa, arc_easy]
  - export:
      out: runs/x/final
"""


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("      cut: 4\n", "      cut: 4\n      cutt: 5\n", "recipe.yaml:9: steps[1].prune: unknown key 'cutt'; did you mean 'cut'?"),
    ("      cut: 4\n", "      cutt: 4\n", "recipe.yaml:8: steps[1].prune: unknown key 'cutt'; did you mean 'cut'?"),
    ("      cut: 4\n", "      cut: 0\n", "recipe.yaml:8: steps[1].prune.cut: Input should be greater than 0"),
    ("model: smollm2-135m\n", "", "recipe.yaml:1: missing required key 'model'; add `model: smollm2-135m`"),
    ("method: replaceme-lstsq", "method: replacemee", "recipe.yaml:7: steps[1].prune.method: unknown method 'replacemee'"),
    ("      cut: 4\n", "", "recipe.yaml:6: steps[1].prune: missing required key 'cut'"),
    ("  - scan: {samples: 8}", "  - scna: {samples: 8}", "recipe.yaml:5: steps[0]: each step is one of scan, prune"),
    ("seed: 3", "seed: 3\nsede: 4", "recipe.yaml:3: unknown key 'sede'; did you mean 'seed'?"),
    ("seed: 3", "seed: 3\nzzz: 4", "recipe.yaml:3: unknown key 'zzz' (allowed: "),
    ("work_dir: runs/x\n", "", "recipe.yaml:1: missing required key 'work_dir'"),
    ("  - scan: {samples: 8}", "  - scan: {samples: 8", "recipe.yaml:6: invalid YAML"),
    ("      cut: 4\n", "      cut: 4\n      cut: 5\n", "recipe.yaml:9: key 'cut' appears twice"),
    ("      out: runs/x/final", "      gguf_type: q4", "recipe.yaml:13: steps[3].export.gguf_type: Input should be 'f16' or 'f32'"),
])
def test_errors_name_the_line(tmp_path: Path, old: str, new: str, expected: str):
    assert old in VALID
    assert _error(tmp_path, VALID.replace(old, new)).startswith(str(tmp_path / expected))


def test_bad_recipe_is_one_line_and_exit_code_2(tmp_path: Path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(VALID.replace("cut: 4", "cut: four"))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ":8: steps[1].prune.cut:" in err


def test_plan_chains_models_and_shares_model_and_seed(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text(VALID)
    recipe, steps = load_recipe(path)
    planned = plan(recipe, steps, path)
    assert [step.command for step in planned] == ["scan", "prune", "eval", "export"]
    assert planned[0].argv[:5] == ["scan", "--model", "smollm2-135m", "--seed", "3"]
    assert "--out" in planned[1].argv and planned[1].argv[planned[1].argv.index("--out") + 1] == "runs/x/02-prune"
    assert planned[2].argv[2] == "runs/x/02-prune" and "piqa,arc_easy" in planned[2].argv
    assert planned[3].argv[-2:] == ["--recipe", str(path)]


@pytest.mark.parametrize("command", sorted(STEP_TYPES))
def test_every_step_key_is_a_flag_of_its_command(command: str):
    parser = build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001
    flags = {option for action in subparser._actions for option in action.option_strings}
    for name, field in STEP_TYPES[command].model_fields.items():
        assert "--" + (field.alias or name).replace("_", "-") in flags, (command, name)


SHARED_FLAGS = {"--model", "--dtype", "--device", "--device-map", "--trust-remote-code", "--seed", "--help"}


@pytest.mark.parametrize("command", sorted(STEP_TYPES))
def test_every_flag_of_a_command_is_a_step_key(command: str):
    """Recipe steps mirror the commands one for one: a new flag needs a key in layercut/recipe.py."""
    subparser = build_parser()._subparsers._group_actions[0].choices[command]  # noqa: SLF001
    keys = {"--" + (field.alias or name).replace("_", "-") for name, field in STEP_TYPES[command].model_fields.items()}
    flags = {option for action in subparser._actions for option in action.option_strings if option.startswith("--")}
    set_by_runner = {"--recipe"} if command == "export" else set()
    assert flags - SHARED_FLAGS - set_by_runner - keys == set()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_examples_validate(example: Path, capsys):
    assert main(["run", str(example), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("layercut ")


def test_tiny_pipeline_runs_and_embeds_the_recipe(tiny_dir: Path, text_file: Path, tmp_path: Path):
    work = tmp_path / "work"
    recipe_text = f"""\
model: {tiny_dir}
seed: 0
device: cpu
work_dir: {work}
steps:
  - prune:
      method: replaceme-lstsq
      cut: 2
      calib: {text_file}
      samples: 8
      seq_len: 32
  - slim:
      method: magnitude
      ratio: 0.5
  - eval:
      ppl: {text_file}
      max_tokens: 256
      seq_len: 64
      json: {work}/eval.json
  - export:
      out: {work}/final
      gguf: {work}/model.gguf
      gguf_type: f32
"""
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_text)
    assert main(["run", str(path)]) == 0
    config = json.loads((work / "final" / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["intermediate_size"] == 64
    history = json.loads((work / "final" / "layercut.json").read_text())["steps"]
    assert [step["command"] for step in history] == ["prune", "slim", "export"]
    assert history[-1]["recipe"] == recipe_text
    assert "```yaml\n" + recipe_text.rstrip() in (work / "final" / "README.md").read_text()
    assert (work / "model.gguf").read_bytes()[:4] == b"GGUF" and (work / "eval.json").is_file()
    assert main(["run", str(path)]) == 2  # outputs exist: refused before any step runs


def test_work_dir_placeholder_follows_the_work_dir_flag(tmp_path: Path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: smollm2-135m\nwork_dir: runs/a\nsteps:\n  - heal: {data: [a.txt, b.txt], steps: 2, max_minutes: 1.5}\n"
                    "  - eval: {ppl: builtin:pydoc-eval, json: '{work_dir}/eval.json'}\n")
    recipe, steps = load_recipe(path)
    planned = plan(recipe, steps, path)
    assert planned[0].argv.count("--data") == 2 and planned[0].argv[-2:] == ["--out", "runs/a/01-heal"]
    assert planned[1].outputs == ["runs/a/eval.json"]
    assert main(["run", str(path), "--work-dir", str(tmp_path / "b"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"--json {tmp_path / 'b'}/eval.json" in printed and "runs/a" not in printed
