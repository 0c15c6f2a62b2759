"""Test-wide settings.

The suite runs as two pytest-xdist workers on two cores; each worker uses one intra-op thread,
because OpenMP threads that outnumber the cores spin against each other and make tiny CPU
trainings many times slower.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
