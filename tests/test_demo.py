"""`udaseg demo` end to end on a tiny toy benchmark: the closing guide and the picture."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from udaseg.cli import main
from udaseg.commands.demo import (
    PICTURE_COLUMNS,
    PICTURE_GAP,
    PICTURE_NAME,
    PICTURE_ROWS,
    PICTURE_TITLE_HEIGHT,
)

# As tests/test_cli.py's TINY_TOY: 4 val images of 64x128.
TINY_TOY = "--size 64x128 --num-source 8 --num-target 6 --num-val 4 --workers 1".split()
VAL_HEIGHT, VAL_WIDTH = 64, 128

# Not the smallest budget the trainer takes: after 3 steps both models still paint nearly every
# pixel with one class, and the test wants their predictions to differ visibly. 10 steps of a
# width-4 model take about a second per run on one core.
STEPS = 10
TINY_DEMO = [
    f"train.steps={STEPS}",
    f"train.checkpoint_every={STEPS}",
    "model.width=4",
    "data.batch_size=2",
    "data.num_workers=0",
    "train.progress_bar=false",
    "train.tensorboard=false",
]


@pytest.mark.slow
def test_demo_ends_with_a_guide_and_a_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toy = tmp_path / "toy"
    assert main(["make-toy", "--out", str(toy), *TINY_TOY]) == 0
    out = tmp_path / "demo"
    # One process (--parallel 1): the test stays on its one core and in this interpreter.
    arguments = ["demo", "--toy-dir", str(toy), "--out", str(out), "--parallel", "1"]
    arguments += ["--device", "cpu"]
    for override in TINY_DEMO:
        arguments += ["--set", override]
    capsys.readouterr()  # drop make-toy's output
    assert main(arguments) == 0
    text = capsys.readouterr().out
    closing = text[text.index("What the two models are") :]

    source_only = out / "seed0" / "source_only"
    oracle = out / "seed0" / "oracle"
    assert f"source-only run    {source_only}\n" in closing
    assert f"target oracle run  {oracle}\n" in closing
    assert "a ceiling no adaptation method is expected to pass" in closing
    assert re.search(r"The gap between them, -?\d+\.\d mIoU19 points here", closing)

    # The toy data: its folder and a size on disk (du-like, a few hundred KiB here).
    match = re.search(rf"toy data +{re.escape(str(toy))} \((\d+\.\d) KiB on disk\)", closing)
    assert match, closing
    files = [path for path in toy.rglob("*") if path.is_file()]
    assert float(match.group(1)) * 1024 >= sum(path.stat().st_size for path in files) * 0.9

    # What to try next: copy-pastable commands, reading the same toy data and model size.
    roots = (
        f"data.source.root={toy / 'source'} data.target.root={toy / 'target'} "
        f"data.val.root={toy / 'target'}"
    )
    assert f"udaseg train toy/adaptsegnet_single.yaml train.steps={STEPS}" in closing
    assert (
        f"udaseg train toy/adabn.yaml init.segmentor={source_only}/checkpoints/last.pt" in closing
    )
    assert f"udaseg eval --checkpoint {oracle}/checkpoints/last.pt" in closing
    assert "udaseg recipe recipes/toy_self_training.yaml" in closing
    assert closing.count(roots) == 3  # the two training commands and the recipe
    assert (source_only / "checkpoints" / "last.pt").is_file()

    # The picture: a row per val image, a column per PICTURE_COLUMNS, titles above.
    picture = out / PICTURE_NAME
    assert f"picture            {picture}\n" in closing
    pixels = np.asarray(Image.open(picture).convert("RGB"))
    columns = len(PICTURE_COLUMNS)
    assert pixels.shape == (
        PICTURE_TITLE_HEIGHT + PICTURE_ROWS * VAL_HEIGHT + (PICTURE_ROWS - 1) * PICTURE_GAP,
        columns * VAL_WIDTH + (columns - 1) * PICTURE_GAP,
        3,
    )
    tiles = pixels[PICTURE_TITLE_HEIGHT:]
    column = {
        title: tiles[
            :, index * (VAL_WIDTH + PICTURE_GAP) : index * (VAL_WIDTH + PICTURE_GAP) + VAL_WIDTH
        ]
        for index, title in enumerate(PICTURE_COLUMNS)
    }
    differing = (column["source-only"] != column["target oracle"]).any(axis=-1).mean()
    assert differing > 0.05, f"only {differing:.1%} of the prediction pixels differ"
    # Titles are drawn: dark ink in the title strip of every column.
    for index in range(columns):
        left = index * (VAL_WIDTH + PICTURE_GAP)
        assert (pixels[:PICTURE_TITLE_HEIGHT, left : left + VAL_WIDTH] < 128).any()
