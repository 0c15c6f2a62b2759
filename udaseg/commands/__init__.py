"""CLI subcommands: each module has `add_arguments(parser)` and `run(args) -> int`."""

import argparse as _argparse


def add_config_arguments(
    parser: _argparse.ArgumentParser,
    required: bool = True,
    help: str = "YAML config (a path, or a name under udaseg/configs)",
) -> None:
    """CONFIG as the first positional argument or as `--config CONFIG`: every command that
    reads a config accepts both forms (`udaseg predict` has always taken `--config`)."""
    parser.add_argument("config", nargs="?", help=f"{help}; --config CONFIG also works")
    parser.add_argument("--config", dest="config_option", metavar="CONFIG", help=_argparse.SUPPRESS)
    parser.set_defaults(_config_required=required)


def config_path(args: _argparse.Namespace) -> str | None:
    """The config the user named in either form; a ConfigError for both or (if required) none."""
    from udaseg.errors import ConfigError

    positional, option = args.config, args.config_option
    if positional is not None and "=" in positional:
        # `udaseg eval --checkpoint X a.b=1`: the optional positional took the first override.
        args.overrides.insert(0, positional)
        positional = None
    if positional is not None and option is not None:
        raise ConfigError(f"two configs ({positional} and --config {option}): give one")
    chosen = positional if positional is not None else option
    if chosen is None and args._config_required:
        raise ConfigError("no config: give CONFIG (or --config CONFIG)")
    return chosen
