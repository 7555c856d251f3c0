"""Clones as data: :class:`CloneResult`, :func:`load_clone` and the line-table format.

A clone is saved as an astropy ECSV line table whose raw-parameter columns
(``center_ref``, ``center_shift``, ``ln_amplitude``, ``ln_sigma``, ``ln_gamma``) rebuild
the :class:`~blase_specutils.core.lineforest.LineForest` bit for bit, plus an optional
``<stem>.spectrum.ecsv`` with the native grid, the flattened target and the continuum.
Reading never executes code.

The pieces live below this module, which imports them one way only: the file format in
:mod:`~blase_specutils.astro.clone_files`, the :class:`CloneResult` container beside the
functions its views call, in :mod:`~blase_specutils.astro.results`. The names are
re-exported here, where they have always been importable from.
"""

from __future__ import annotations

import time
from pathlib import Path

import astropy.units as u
import numpy as np
import torch

from ..core.train import TrainingHistory
from .clone_files import (
    INTEGRITY_KEYS,
    PairMismatch,
    column_values,
    forest_from_table,
    forest_to_table,
    lines_digest,
    load_clone_spectrum,
    read_ecsv,
)
from .results import CloneResult

__all__ = ["CloneResult", "forest_to_table", "forest_from_table", "load_clone"]


def load_clone(path, *, device=None, dtype: torch.dtype | None = None) -> CloneResult:
    """Read a clone written by :meth:`CloneResult.save`. Never executes code.

    Parameters
    ----------
    path : path-like
        The ECSV line table.
    device : str or torch.device, optional
        Where to put the forest (default CPU).
    dtype : torch.dtype, optional
        Override the saved dtype.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If a file cannot be read, is truncated or altered (its checksum fails), holds
        values, units or metadata a clone cannot have (see :func:`forest_from_table`), or
        the spectrum file beside it belongs to another save.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no clone at {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a clone line table (*.ecsv)")
    # A save replaces the spectrum and then the table: a read between the two renames
    # sees one file of each save. Read again before calling the pair mismatched.
    for attempt in range(3):
        try:
            return _load_clone_once(path, device, dtype)
        except PairMismatch:
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _load_clone_once(path: Path, device, dtype) -> CloneResult:
    table = read_ecsv(path, "the clone table")
    what = f"the clone table {path}"
    forest = forest_from_table(table, device=device, dtype=dtype, _what=what)
    saved_digest = table.meta.get("lines_sha256")
    if saved_digest is not None:
        n_saved = table.meta.get("n_lines_saved")
        if n_saved is not None and int(n_saved) != len(table):
            raise ValueError(
                f"{what} has {len(table)} lines but {n_saved} were saved: the file is "
                "truncated or rows were removed (to keep a subset of lines, build a new "
                "clone from them and save that)"
            )
        if lines_digest(table) != saved_digest:
            raise ValueError(
                f"{what} does not match the checksum written with it: the file was "
                "altered or corrupted after it was saved"
            )
    meta = {
        k: v
        for k, v in table.meta.items()
        if not k.startswith("history_") and k not in INTEGRITY_KEYS
    }
    history = TrainingHistory(
        loss=list(table.meta.get("history_loss", [])),
        epochs=int(table.meta.get("history_epochs", 0)),
        wall_time=float(table.meta.get("history_wall_time", 0.0)),
        stop_reason=str(table.meta.get("history_stop_reason", "")),
    )
    initial = None
    if "amplitude_init" in table.colnames:
        initial = {
            k[:-5]: column_values(table, k, what, None if k == "depth_init" else u.AA)
            for k in table.colnames
            if k.endswith("_init")
        }
        if "found_in_pass" in table.colnames:
            initial["found_in_pass"] = np.asarray(table["found_in_pass"], dtype=np.int64)
    wavelength, target, continuum = load_clone_spectrum(path, table, saved_digest)
    return CloneResult(forest, wavelength, target, continuum, history, initial, meta)
