"""`udaseg print-config CONFIG [key=value ...]`"""

from __future__ import annotations

import argparse

from udaseg.config import dump_yaml, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (a path, or a name under udaseg/configs)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")


def run(args: argparse.Namespace) -> int:
    print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0
