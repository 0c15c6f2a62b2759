"""A progress bar for generating the toy benchmark: images done, images/s, time left.

Generation takes about half a minute on two idle cores and several minutes on a loaded laptop;
a bar that moves (and says how fast) tells the user nothing is stuck. Used by `udaseg make-toy`
and by the first use of a `toy://` root.
"""

from __future__ import annotations

import sys
from typing import Any


class GenerationProgress:
    """A `progress(done, total)` callback for `generate_toy` / `ensure_toy`, drawn with tqdm.

    Args:
        description: the bar's label, e.g. "make-toy".
        announce: a line printed once before the bar (e.g. where the cache is).
    """

    def __init__(self, description: str, announce: str | None = None) -> None:
        self.description = description
        self.announce = announce
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            if self.announce:
                print(self.announce, file=sys.stderr, flush=True)
            self.bar = tqdm(
                total=total,
                desc=self.description,
                unit="img",
                file=sys.stderr,
                dynamic_ncols=True,
                # In a log file, a line every 10 s rather than one per chunk.
                mininterval=0.5 if sys.stderr.isatty() else 10.0,
            )
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
