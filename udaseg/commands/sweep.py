"""`udaseg sweep CONFIG --seeds 0 1 2 [key=value ...] [--out DIR] [--parallel N --threads T]`

Trains CONFIG once per seed (`udaseg train` subprocesses into `DIR/seed<N>`, logs in
`DIR/logs/`, N at a time with T intra-op threads each), then writes the papers' table (per class
and per mIoU subset: each seed and mean ± std) as `DIR/table.md` and `DIR/table.json`, and the
HTML report into `DIR/report`. Finished seeds are reused and interrupted ones resumed, so a
sweep run again after a kill completes the missing seeds only. See docs/reports.md.
"""

from __future__ import annotations

import argparse

from udaseg.commands import add_config_arguments, config_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides for every seed"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", help="output folder (default: runs/sweep/<config name>)")
    parser.add_argument("--parallel", type=int, default=1, help="training processes at a time")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument(
        "--samples", type=int, default=3, help="val images predicted in the report (0: none)"
    )
    parser.add_argument("--no-report", action="store_true", help="write the tables only")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from udaseg.config import load_config
    from udaseg.errors import ConfigError
    from udaseg.evaluation.metrics import to_json_safe
    from udaseg.files import check_output_folder
    from udaseg.reporting import format_seed_table, load_run, run_seeds, seed_table, write_report

    config = config_path(args)
    overrides = list(args.overrides)
    for override in overrides:
        key = override.partition("=")[0].strip()
        if key in ("seed", "run_dir"):
            raise ConfigError(f"{override}: sweep sets {key} itself (use --seeds / --out)")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds {args.seeds}: a seed is repeated")
    if args.parallel < 1 or args.threads < 1:
        raise ConfigError("--parallel and --threads must be at least 1")
    load_config(config, overrides)  # a wrong key is one line now, not N failed runs later
    out = Path(args.out) if args.out else Path("runs") / "sweep" / Path(config).stem
    check_output_folder(out, "--out")
    out.mkdir(parents=True, exist_ok=True)

    def done(result: dict) -> None:
        print(f"seed {result['seed']}: {result['run_dir']} done", flush=True)

    results = run_seeds(
        config, args.seeds, out, overrides, args.parallel, args.threads, on_done=done
    )
    runs = [load_run(result["run_dir"]) for result in results]
    table = seed_table(runs)
    markdown = format_seed_table(table, title=f"{config} ({', '.join(overrides) or 'as is'})")
    (out / "table.md").write_text(markdown + "\n", encoding="utf-8")
    data = {
        "config": config,
        "overrides": overrides,
        "runs": [str(run.run_dir) for run in runs],
        "seconds": {str(r["seed"]): r["seconds"] for r in results},
        **table,
    }
    (out / "table.json").write_text(
        json.dumps(to_json_safe(data), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    print(markdown)
    print(f"tables: {out / 'table.md'}, {out / 'table.json'}")
    if not args.no_report:
        page = write_report(
            [run.run_dir for run in runs],
            out / "report",
            samples=args.samples,
            overwrite=True,
            title=f"udaseg sweep: {config}",
        )
        print(f"report: {page}")
    return 0
