"""`udaseg report RUN_DIR [RUN_DIR ...] --out DIR`

One static HTML page (`DIR/index.html`) with PNGs beside it, relative links only: the per-class
IoU table and bar chart (mean ± std over runs that are seeds of one config), confusion-matrix
heatmaps, training curves from metrics.jsonl and sample val predictions. Needs matplotlib
(`pip install 'udaseg[plot]'`). See docs/reports.md.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    parser.add_argument("--out", required=True, help="output folder for index.html and PNGs")
    parser.add_argument(
        "--samples", type=int, default=3, help="val images predicted per configuration (0: none)"
    )
    parser.add_argument("--title", default="udaseg report", help="the page's title")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")


def run(args: argparse.Namespace) -> int:
    from udaseg.reporting import write_report

    page = write_report(
        args.run_dirs,
        args.out,
        samples=args.samples,
        device=args.device,
        overwrite=args.overwrite,
        title=args.title,
    )
    print(f"report: {page}")
    return 0
