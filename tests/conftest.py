"""Shared pytest fixtures: the real example data folder and a headless matplotlib.

The example data are found as :mod:`blase_specutils.datasets` finds them for a user:
the folder named by ``BLASE_SPECUTILS_DATA`` when that variable is set (``.ci/run``
and ``tox.ini`` set it), otherwise the checksum-verified copies in the astropy cache,
downloaded on first use. If neither works the tests that need the data fail with a
message saying what to set.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

_LAYOUT_HINT = (
    "set BLASE_SPECUTILS_DATA to a folder laid out like shared/data (phoenix/, hpf/, "
    "igrins/, wasp69/; see shared/data/README.md), or give this machine network access "
    "so that blase_specutils.datasets can download the files into the astropy cache"
)


@functools.cache
def example_data_dir() -> Path:
    """Folder holding ``phoenix/``, ``hpf/``, ``igrins/`` and ``wasp69/`` (real files).

    Returns
    -------
    pathlib.Path
        The ``BLASE_SPECUTILS_DATA`` folder, or the astropy cache folder the files
        were downloaded into.

    Raises
    ------
    RuntimeError
        With a message naming what to set, when the files cannot be found or fetched.
    """
    from blase_specutils import datasets

    try:
        mirror = datasets.mirror_folder()
    except datasets.DataFolderError as error:
        raise RuntimeError(str(error)) from None
    if mirror is not None:
        missing = [name for name in datasets.list_files() if not (mirror / name).is_file()]
        if missing:
            raise RuntimeError(
                f"the example data folder {mirror} (BLASE_SPECUTILS_DATA) lacks "
                f"{', '.join(missing)}; {_LAYOUT_HINT}"
            )
        return mirror
    try:
        paths = [datasets.get_path(name) for name in datasets.list_files()]
    except (datasets.DataUnavailableError, datasets.ChecksumError, OSError) as error:
        raise RuntimeError(
            f"BLASE_SPECUTILS_DATA is not set and the example data could not be "
            f"downloaded ({error}); {_LAYOUT_HINT}"
        ) from None
    # datasets keeps the files as <cache>/files/<folder>/<file>: the same layout
    return paths[0].parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder holding ``phoenix/``, ``hpf/``, ``igrins/`` and ``wasp69/`` (real files)."""
    try:
        return example_data_dir()
    except RuntimeError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)
