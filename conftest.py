"""Repository-wide pytest setup: headless matplotlib, the real example data folder, Triton.

Tests and the doctested pages under ``docs/`` read the real files in ``shared/data``
beside the checkout (or wherever ``BLASE_SPECUTILS_DATA`` points) instead of
downloading them.
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault(
    "BLASE_SPECUTILS_DATA", str(Path(__file__).resolve().parent.parent / "shared" / "data")
)
# The Triton kernels are checked on the CPU through Triton's interpreter; the variable
# must be set before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
