"""`udaseg recipe RECIPE.yaml [key=value ...] [--dir DIR] [--from STAGE]`

Runs a multi-stage recipe (udaseg/recipes.py): training stages, pseudo-labelling stages, each
reading earlier stages' outputs, into one recipe directory. Finished stages are skipped, an
interrupted one resumes, so the same command run again after a kill finishes the recipe with the
result of an uninterrupted run. Overrides apply to every stage's config (e.g. `seed=1`).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (a path, or a name under udaseg/configs)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides applied to every stage's config, e.g. seed=1",
    )
    parser.add_argument("--dir", help="recipe directory (default: the recipe's `dir:`)")
    parser.add_argument(
        "--from",
        dest="start_from",
        metavar="STAGE",
        help="redo this stage and every later one (earlier outputs are moved aside, not deleted)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def run(args: argparse.Namespace) -> int:
    from udaseg.engine.distributed import init_distributed
    from udaseg.recipes import format_results, load_recipe, run_recipe

    recipe = load_recipe(args.recipe, args.dir)
    results = run_recipe(recipe, args.overrides, args.start_from, args.device)
    if init_distributed(args.device).is_main:
        print(format_results(results, metric=None))
        print(f"recipe directory {recipe.directory}", file=sys.stderr)
    return 0
