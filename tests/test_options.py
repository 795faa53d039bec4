"""Each method's options are declared once; the CLI flags, the recipe keys and the card derive from them."""

from __future__ import annotations

import argparse

import pytest

from layercut.commands import compare as compare_command
from layercut.commands import prune as prune_command
from layercut.commands import slim as slim_command
from layercut.errors import ConfigError, RecipeError
from layercut.methods.base import PruneRequest
from layercut.methods.settings import SLIM_METHODS
from layercut.methods.laco import LacoSettings
from layercut.prune import METHODS
from layercut.recipe import PruneStep, SlimStep, validate_recipe


def _parser(command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    return parser


def _defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    subparser = next(iter(parser._subparsers._group_actions[0].choices.values()))
    return {action.dest: action.default for action in subparser._actions}


@pytest.mark.parametrize("command, registry, step", [(prune_command, METHODS, PruneStep),
                                                     (compare_command, METHODS, None),
                                                     (slim_command, SLIM_METHODS, SlimStep)])
def test_every_option_is_a_flag_with_its_default_and_a_recipe_key(command, registry, step) -> None:
    defaults = _defaults(_parser(command))
    for entry in registry.values():
        options_type = getattr(entry, "options", entry)
        for key, name in options_type.keys().items():
            assert defaults[key] == options_type.model_fields[name].default
            assert step is None or key in step.model_fields


def test_flags_become_the_methods_validated_options() -> None:
    args = _parser(prune_command).parse_args(["prune", "--method", "laco", "--cut", "2", "--out", "x",
                                              "--laco-layers", "3", "--laco-threshold", "0.5"])
    request = prune_command.request_from_args(args)
    assert request.options == LacoSettings(layers=3, threshold=0.5)
    card = request.to_dict()
    assert card["laco_layers"] == 3 and card["laco_samples"] == 4 and "alpha" not in card and "epochs" not in card


def test_recipe_checks_an_option_with_its_declared_constraint() -> None:
    data = {"model": "smollm2-135m", "work_dir": "runs/x", "steps": [{"prune": {"method": "laco", "cut": 2, "laco_layers": 1}}]}
    with pytest.raises(RecipeError, match=r"steps\[0\].prune.laco_layers: Input should be greater than or equal to 2"):
        validate_recipe(data, None, "recipe.yaml")


def test_request_takes_options_by_key_or_field_name() -> None:
    by_key = PruneRequest(method="laco", cut=2, options={"laco_layers": 3}).method_options()
    by_name = PruneRequest(method="laco", cut=2, options={"layers": 3}).method_options()
    assert by_key == by_name == LacoSettings(layers=3)


def test_a_bad_option_names_its_flag() -> None:
    with pytest.raises(ConfigError, match="invalid --laco-layers 1: Input should be greater than or equal to 2"):
        PruneRequest(method="laco", cut=2, options={"laco_layers": 1}).method_options()
    with pytest.raises(ConfigError, match="--alpha is not an option of this method"):
        PruneRequest(method="laco", cut=2, options={"alpha": 0.1}).method_options()
