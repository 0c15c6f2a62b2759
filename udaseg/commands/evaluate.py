"""`udaseg eval (--checkpoint CKPT | CONFIG --weights FILE) [key=value ...] [--json FILE]`"""

from __future__ import annotations

import argparse
import sys
import time

from udaseg.commands import add_config_arguments
from udaseg.commands import config_path as chosen_config
from udaseg.engine.distributed import init_distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser, required=False, help="config naming the model and data (with --weights)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.val.root=..."
    )
    parser.add_argument("--checkpoint", help="a udaseg checkpoint (its config is used)")
    parser.add_argument(
        "--weights", help="released weights in the original repositories' key layout"
    )
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def run(args: argparse.Namespace) -> int:
    from udaseg.data.datasets import build_dataset
    from udaseg.data.loaders import eval_loader
    from udaseg.engine.loading import load_for_inference
    from udaseg.errors import ConfigError
    from udaseg.evaluation.evaluate import evaluate
    from udaseg.evaluation.report import format_table, write_json
    from udaseg.files import check_output_file

    if args.json:
        # Before the evaluation, not after it: a bad path must not cost the whole run.
        check_output_file(args.json, "--json", args.overwrite)
    config_path = chosen_config(args)  # may give back an override the positional swallowed
    overrides = list(args.overrides)
    context = init_distributed(args.device)
    loaded = load_for_inference(
        args.checkpoint, config_path, args.weights, overrides, context.device
    )
    config = loaded.config
    if config.data.val is None:
        raise ConfigError("config key data.val: missing; set it to the labelled target val set")
    dataset = build_dataset(
        config.data.val, loaded.label_space, "val", image_size=config.eval.input_size
    )
    loader = eval_loader(
        dataset,
        config.eval.batch_size,
        context.rank,
        context.world_size,
        config.data.num_workers,
        pin_memory=context.device.type == "cuda",
    )
    started = time.time()
    result = evaluate(
        loaded.method.predict,
        loader,
        loaded.label_space,
        config.eval,
        context.device,
        progress=context.is_main,
    )
    result.protocol["weights"] = loaded.description
    if context.is_main:
        print(format_table({loaded.title: result}))
        print(
            f"{result.num_images} images in {time.time() - started:.1f} s; weights: {loaded.description}",
            file=sys.stderr,
        )
        if args.json:
            write_json(args.json, result)
    return 0
