"""`layercut run recipe.yaml`: run a whole pipeline from one YAML recipe, step by step, through the
same command code the command line runs (see layercut/recipe.py and examples/*.yaml)."""

from __future__ import annotations

import argparse
import shlex

from layercut.errors import RecipeError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run a YAML recipe: scan -> prune -> slim -> heal -> eval -> export",
                                   description=__doc__)
    parser.add_argument("recipe", help="recipe file (YAML)")
    parser.add_argument("--work-dir", default=None,
                        help="run with this work_dir instead of the recipe's (every {work_dir} follows it)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the commands without running them")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from layercut.distributed import rank_and_world
    from layercut.export import ensure_output_free
    from layercut.recipe import load_recipe, plan

    if rank_and_world()[1] > 1:
        raise RecipeError("recipes run in one process (heal, slim and export are not data-parallel); "
                          "use torchrun with layercut prune or layercut scan")
    recipe, steps = load_recipe(args.recipe)
    if args.work_dir:
        recipe.work_dir = args.work_dir
    planned = plan(recipe, steps, args.recipe)
    if args.dry_run:
        for step in planned:
            print("layercut " + shlex.join(step.argv))
        return 0
    for step in planned:
        overwrite = "--overwrite" in step.argv
        for output in step.outputs:
            ensure_output_free(output, overwrite)
    for number, step in enumerate(planned, start=1):
        print(f"== step {number}/{len(planned)}: layercut {shlex.join(step.argv)}", flush=True)
        step_args = args.cli_parser.parse_args(step.argv)
        code = int(step_args.run(step_args) or 0)
        if code != 0:
            raise RecipeError(f"step {number} ({step.command}) stopped with exit code {code}; "
                              "fix it and run the recipe again (finished steps need overwrite: true)")
    return 0
