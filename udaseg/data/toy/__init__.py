"""The embedded toy benchmark: a synthetic GTA5/SYNTHIA -> Cityscapes domain gap on a CPU.

Procedural street scenes (`scene.py`, `objects.py`, drawn into a part map by `canvas.py`) are
rendered in two styles (`styles.py`, `render.py`): a "game-like" source with flat colours and
a "real-like" target with photo textures, another palette, a colour cast, gamma, blur and
noise, plus a mild layout shift. `generate.py` writes them in the real datasets' layouts so
that the GTA5, SYNTHIA and Cityscapes readers load them unchanged; `preview.py` draws a grid.

    from udaseg.data.toy import ensure_toy, dataset_configs
    root = ensure_toy()                 # cached in $UDASEG_CACHE/toy/<hash>
    sections = dataset_configs(root)    # data.source / data.target / data.val
"""

from udaseg.data.toy.generate import (
    DEFAULT_NUM_SOURCE,
    DEFAULT_NUM_TARGET,
    DEFAULT_NUM_VAL,
    DEFAULT_SIZE,
    dataset_configs,
    ensure_toy,
    generate_toy,
    read_manifest,
    render_sample,
)
from udaseg.data.toy.preview import preview_grid, write_preview
from udaseg.data.toy.styles import TargetStyle

__all__ = [
    "DEFAULT_NUM_SOURCE",
    "DEFAULT_NUM_TARGET",
    "DEFAULT_NUM_VAL",
    "DEFAULT_SIZE",
    "TargetStyle",
    "dataset_configs",
    "ensure_toy",
    "generate_toy",
    "preview_grid",
    "read_manifest",
    "render_sample",
    "write_preview",
]
