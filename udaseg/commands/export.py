"""`udaseg export --checkpoint CKPT --format onnx [--dynamic] [--half] [--output logits|argmax]
--out FILE.onnx`

Writes an ONNX model of the evaluated network (the method's `predict`, the segmentor's main
logits) with the input normalisation inside: float32 RGB 0..255 images [B, 3, H, W] in, logits
at the output stride (or, with `--output argmax`, the per-pixel class at the input size) out.
See `udaseg.export` and docs/export.md.
"""

from __future__ import annotations

import argparse
import sys

FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a udaseg checkpoint")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="export format")
    parser.add_argument("--out", required=True, help="the model file to write (FILE.onnx)")
    parser.add_argument(
        "--output",
        choices=["logits", "argmax"],
        default="logits",
        help="logits at the output stride (default), or the argmax upsampled to the input size",
    )
    parser.add_argument(
        "--dynamic", action="store_true", help="dynamic batch size and spatial size"
    )
    parser.add_argument(
        "--half", action="store_true", help="fp16 weights and computation (float32 in and out)"
    )
    parser.add_argument(
        "--size",
        help="example input size HxW traced (the fixed size without --dynamic; default: the "
        "config's eval.input_size, else 512x1024)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value")


def run(args: argparse.Namespace) -> int:
    from udaseg.commands.predict import _parse_size
    from udaseg.export import export_checkpoint

    result = export_checkpoint(
        args.checkpoint,
        args.out,
        output=args.output,
        dynamic=args.dynamic,
        half=args.half,
        example_size=_parse_size(args.size),
        overrides=args.overrides,
        opset=args.opset,
        overwrite=args.overwrite,
    )
    meta = result.metadata
    shape = "dynamic" if args.dynamic else meta["input_size"]
    print(
        f"exported {meta['method']} ({meta['label_space']}, {meta['num_classes']} classes, "
        f"{meta['precision']}, output {meta['output']}, input {shape}) to {result.path} "
        f"({result.size_bytes / 1e6:.1f} MB) in {result.seconds:.1f} s",
        file=sys.stderr,
    )
    return 0
