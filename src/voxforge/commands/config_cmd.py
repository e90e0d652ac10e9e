"""`voxforge config show RECIPE [key=value ...]`: print the resolved, validated recipe."""

from __future__ import annotations

import argparse

from voxforge.config.core import dump_yaml
from voxforge.recipe import BUILTIN_RECIPES, load_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="inspect recipes")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = csub.add_parser("show", help="print a recipe with defaults filled in and overrides applied")
    show.add_argument("recipe", help="recipe YAML file or built-in recipe name")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    show.set_defaults(func=show_recipe)
    lst = csub.add_parser("list", help="list the built-in recipes")
    lst.set_defaults(func=list_recipes)


def show_recipe(args: argparse.Namespace) -> int:
    print(dump_yaml(load_recipe(args.recipe, args.overrides)), end="")
    return 0


def list_recipes(args: argparse.Namespace) -> int:
    for path in sorted(BUILTIN_RECIPES.glob("*.yaml")):
        print(path.stem)
    return 0
