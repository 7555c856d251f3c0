"""Repository-wide pytest setup: headless matplotlib and the real example data folder.

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
