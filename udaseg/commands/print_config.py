"""`udaseg print-config CONFIG [key=value ...]`"""

from __future__ import annotations

import argparse

from udaseg.commands import add_config_arguments, config_path
from udaseg.config import dump_yaml, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")


def run(args: argparse.Namespace) -> int:
    print(dump_yaml(load_config(config_path(args), args.overrides)), end="")
    return 0
