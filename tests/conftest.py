"""Shared pytest fixtures: the real example data folder and a headless matplotlib."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

#: Folder of the real example data (``shared/data`` beside the checkout by default).
DATA_DIR = Path(
    os.environ.get("BLASE_SPECUTILS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
# Code under test that calls ``blase_specutils.datasets`` finds the files here
# instead of downloading them.
os.environ.setdefault("BLASE_SPECUTILS_DATA", str(DATA_DIR))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder holding ``phoenix/``, ``hpf/``, ``igrins/`` and ``wasp69/`` (real files)."""
    expected = ("phoenix", "hpf", "igrins", "wasp69")
    missing = [name for name in expected if not (DATA_DIR / name).is_dir()]
    if missing:
        pytest.fail(
            f"example data folder {DATA_DIR} lacks {missing}; set BLASE_SPECUTILS_DATA to a "
            "folder laid out like shared/data (see shared/data/README.md)",
            pytrace=False,
        )
    return DATA_DIR
