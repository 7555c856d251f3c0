"""Clone results as data: the line-table format, :class:`CloneResult` and its ECSV I/O.

A clone is saved as an astropy ECSV line table whose raw-parameter columns
(``center_ref``, ``center_shift``, ``ln_amplitude``, ``ln_sigma``, ``ln_gamma``) rebuild
the :class:`~blase_specutils.core.lineforest.LineForest` bit for bit, plus an optional
``<stem>.spectrum.ecsv`` with the native grid, the flattened target and the continuum.
Reading never executes code.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
import torch
from astropy.table import QTable

from .._validation import ascending_angstrom, check_grid
from ..core.lineforest import _LOG_BOUNDS, LineForest
from ..core.profiles import pseudo_voigt_peak
from ..core.train import TrainingHistory

__all__ = ["CloneResult", "forest_to_table", "forest_from_table", "load_clone"]

_FORMAT = "blase_specutils.clone"
_FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Meta keys that tie a saved line table to its file and its spectrum (CloneResult.save).
_INTEGRITY_KEYS = ("lines_sha256", "n_lines_saved", "spectrum")
_RAW_COLUMNS = ("center_ref", "center_shift", "ln_amplitude", "ln_sigma", "ln_gamma")
# Loadable ranges of the log parameters: the training bounds of the forest
# (core.lineforest._LOG_BOUNDS, which every optimiser step clamps to) widened by a factor
# of ten each way. Outside them a file is damaged or hand-edited (ln_sigma = 30 would be
# a line 10¹³ Å wide and a NaN spectrum later).
_LOADABLE_LOG_RANGE = {
    name: (lo - math.log(10.0), hi + math.log(10.0)) for name, (lo, hi) in _LOG_BOUNDS.items()
}


# ---------------------------------------------------------------------------
# Line tables
# ---------------------------------------------------------------------------
def forest_to_table(
    forest: LineForest, *, initial: dict | None = None, meta: dict | None = None
) -> QTable:
    """Line properties of ``forest`` as an astropy QTable with units.

    Columns: ``center``, ``amplitude``, ``sigma``, ``gamma``, ``fwhm`` (Å),
    ``lorentz_fraction``, ``depth`` (single-line depth at the centre), ``emission``,
    the raw parameters ``ln_amplitude``, ``ln_sigma``, ``ln_gamma``, ``center_shift``
    (stored in the forest's dtype so a reload is bit-exact) and, when ``initial`` is
    given, the initial values ``*_init`` and, for clones, ``found_in_pass`` (0: found
    by prominence; k: added from the residual by the k-th refinement pass).
    """
    props = forest.line_properties()
    with torch.no_grad():
        peak = pseudo_voigt_peak(
            torch.as_tensor(props["sigma"]), torch.as_tensor(props["gamma"])
        ).numpy()
    strength = props["amplitude"] * peak
    depth = strength if forest.mode == "linear" else -np.expm1(-strength)
    table = QTable()
    table["center"] = props["center"] * u.AA
    table["amplitude"] = props["amplitude"] * u.AA
    table["sigma"] = props["sigma"] * u.AA
    table["gamma"] = props["gamma"] * u.AA
    table["fwhm"] = props["fwhm"] * u.AA
    table["lorentz_fraction"] = props["eta"]
    table["depth"] = np.where(props["emission"], -depth, depth)
    table["emission"] = props["emission"]
    table["center_ref"] = forest.center_ref.cpu().numpy() * u.AA
    with torch.no_grad():
        for name in ("center_shift", "ln_amplitude", "ln_sigma", "ln_gamma"):
            table[name] = getattr(forest, name).detach().cpu().numpy()
    table["center_shift"].unit = u.AA
    if initial is not None:
        for key, value in initial.items():
            if key == "found_in_pass":  # provenance, not a starting value
                table[key] = np.asarray(value, dtype=np.int64)
                continue
            table[f"{key}_init"] = np.asarray(value) * (u.AA if key != "depth" else 1)
    if meta:
        # a loaded clone's meta may hold another file's integrity keys: never copy them
        table.meta.update({k: v for k, v in meta.items() if k not in _INTEGRITY_KEYS})
    # the forest's own description wins over stale copies in ``meta``
    table.meta.update(
        {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "mode": forest.mode,
            "profile": forest.profile,
            "dtype": str(forest.dtype).replace("torch.", ""),
            "trainable": list(forest.trainable),
        }
    )
    return table


def _check_meta(table: QTable, what: str) -> torch.dtype:
    """Validate a clone table's format, version, dtype and mode; its saved dtype."""
    meta = table.meta
    if meta.get("format") != _FORMAT:
        raise ValueError(
            f"{what} is not a blase_specutils clone table (meta['format'] is "
            f"{meta.get('format')!r}, expected {_FORMAT!r})"
        )
    version = meta.get("format_version", _FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise ValueError(
            f"{what} has clone format version {version!r}, which is not an integer "
            "(the file is damaged or was edited by hand)"
        )
    if not 1 <= int(version) <= _FORMAT_VERSION:
        raise ValueError(
            f"{what} has clone format version {version}; this blase_specutils reads "
            f"version{'s 1 to' if _FORMAT_VERSION > 1 else ''} {_FORMAT_VERSION} "
            "(a newer blase_specutils wrote it, or the file is damaged)"
        )
    name = meta.get("dtype", "float32")
    if name not in _DTYPES:
        raise ValueError(
            f"{what} has dtype {name!r} in its metadata; expected one of {sorted(_DTYPES)}"
        )
    mode = meta.get("mode", "linear")
    if mode not in ("linear", "log"):
        raise ValueError(f"{what} has mode {mode!r} in its metadata; expected 'linear' or 'log'")
    return _DTYPES[name]


def _column_values(table: QTable, name: str, what: str, unit: u.UnitBase | None) -> np.ndarray:
    """A column as float64, in Å when ``unit`` is Å (a length unit required, converted);
    unitless when ``unit`` is None (any unit but dimensionless one is an error)."""
    col = table[name]
    col_unit = getattr(col, "unit", None)
    if unit is None:
        if col_unit is not None and col_unit != u.dimensionless_unscaled:
            raise ValueError(
                f"{what}: column {name!r} must be unitless, but it has unit {col_unit} "
                "(the file was edited; a unit here would silently rescale the value)"
            )
        values = col.value if hasattr(col, "value") else col
    elif col_unit is None:
        values = col  # unitless: taken as Å, as tables built by hand often are
    else:
        if col_unit.physical_type != unit.physical_type:
            raise ValueError(
                f"{what}: column {name!r} has unit {col_unit}; expected a {unit.physical_type} "
                f"({unit})"
            )
        quantity = col if isinstance(col, u.Quantity) else col.quantity
        values = quantity.to_value(unit) if col_unit != unit else quantity.value
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: column {name!r} is not numeric ({err})") from err


def forest_from_table(
    table: QTable, *, device=None, dtype: torch.dtype | None = None, _what: str | None = None
) -> LineForest:
    """Rebuild a :class:`LineForest` from :func:`forest_to_table` output (bit-exact).

    Raises
    ------
    ValueError
        If the table is not a clone table, or its format version, dtype, mode, units or
        values are not ones a clone can have: ``center_ref`` and ``center_shift`` in a
        length unit (or unitless, taken as Å), the ``ln_*`` columns unitless, finite and
        within ten times the forest's training bounds.
    """
    what = _what or "the clone table"
    saved_dtype = _check_meta(table, what)
    required = (*_RAW_COLUMNS, "emission")
    missing = [c for c in required if c not in table.colnames]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")
    if len(table) == 0:
        raise ValueError(f"{what} has no lines")
    dtype = dtype or saved_dtype
    values = {
        name: _column_values(table, name, what, u.AA if name.startswith("center") else None)
        for name in _RAW_COLUMNS
    }
    for name, column in values.items():
        if not np.all(np.isfinite(column)):
            raise ValueError(f"{what}: column {name!r} has non-finite values")
    for name, (lo, hi) in _LOADABLE_LOG_RANGE.items():
        bad = (values[name] < lo) | (values[name] > hi)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(
                f"{what}: column {name!r} has {int(bad.sum())} value(s) outside the physical "
                f"range [{lo:.1f}, {hi:.1f}] (row {i}: {values[name][i]:.6g}); the file is "
                "damaged or was edited by hand"
            )
    if np.any(values["center_ref"] <= 0):
        raise ValueError(f"{what}: column 'center_ref' has non-positive wavelengths")
    emission = np.asarray(table["emission"])
    if emission.dtype != bool and not np.all(np.isin(emission, (0, 1))):
        raise ValueError(f"{what}: column 'emission' must hold booleans")

    try:
        forest = LineForest(
            values["center_ref"],
            np.ones(len(table)),
            np.ones(len(table)),
            np.ones(len(table)),
            emission=emission.astype(bool),
            mode=table.meta.get("mode", "linear"),
            profile=table.meta.get("profile", "pseudo_voigt"),
            trainable=table.meta.get("trainable", ("amplitude", "sigma", "gamma")),
            dtype=dtype,
            device=device,
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: {err}") from err
    with torch.no_grad():
        for name in _RAW_COLUMNS[1:]:
            column = torch.as_tensor(values[name], device=forest.center_ref.device)
            getattr(forest, name).copy_(column.to(dtype))
    return forest


# ---------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------
@dataclass
class CloneResult:
    """A trained clone of a synthetic spectrum.

    Attributes
    ----------
    forest : LineForest
        The trained line forest (the emulator).
    wavelength : numpy.ndarray
        Native wavelength grid, Å.
    target_flux : numpy.ndarray
        The continuum-flattened input spectrum.
    continuum : numpy.ndarray
        The continuum divided out (black body × smooth fit), same units as the input flux;
        ``target_flux * continuum`` restores the input.
    history : TrainingHistory
        Loss per epoch and stopping information.
    initial : dict
        Initial line properties (Å) from the line finder, and ``found_in_pass`` per
        line (0: the prominence search; k: the k-th refinement pass).
    meta : dict
        Settings (prominence, teff, mode, profile, …).
    """

    forest: LineForest
    wavelength: np.ndarray
    target_flux: np.ndarray
    continuum: np.ndarray
    history: TrainingHistory = field(default_factory=TrainingHistory)
    initial: dict | None = None
    meta: dict = field(default_factory=dict)
    _model_flux: np.ndarray | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        # The arrays hold ~10⁵ samples: summarise rather than print them.
        span = (
            f"{self.wavelength[0]:.2f}–{self.wavelength[-1]:.2f} Å, {self.wavelength.size} px"
            if self.wavelength.size
            else "no samples"
        )
        teff = self.meta.get("teff")
        return (
            f"CloneResult(n_lines={self.n_lines}, {span}, profile={self.forest.profile!r}, "
            f"teff={teff}, epochs={self.history.epochs}, "
            f"stop_reason={self.history.stop_reason!r})"
        )

    @property
    def n_lines(self) -> int:
        """Number of lines in the clone."""
        return self.forest.n_lines

    def _require_spectrum(self, what: str) -> None:
        if self.wavelength.size == 0:
            raise ValueError(
                f"{what} needs the cloned spectrum, and this clone was loaded without it "
                "(saved with include_spectrum=False, or its .spectrum.ecsv file is missing); "
                "evaluate the lines on a grid of your own with clone.evaluate(wavelength)"
            )

    @property
    def model_flux(self) -> np.ndarray:
        """The emulator evaluated on :attr:`wavelength` (flattened units)."""
        if self._model_flux is None:
            self._require_spectrum("model_flux")
            self._model_flux = self.evaluate(self.wavelength)
        return self._model_flux

    @property
    def residual(self) -> np.ndarray:
        """``target_flux − model_flux``."""
        self._require_spectrum("residual")
        return self.target_flux - self.model_flux

    @property
    def rms(self) -> float:
        """Root-mean-square residual at native resolution (fraction of the continuum)."""
        return float(np.sqrt(np.mean(self.residual**2)))

    @property
    def lines(self) -> QTable:
        """Line properties as a QTable (Å), with initial values."""
        return forest_to_table(self.forest, initial=self.initial, meta=self.meta)

    @property
    def line_table(self) -> QTable:
        """Line table with equivalent widths, flags and provenance (see
        :func:`blase_specutils.astro.results.line_table`)."""
        from . import results

        return results.line_table(self)

    @property
    def spectrum(self):
        """The clone at native resolution as a :class:`specutils.Spectrum` (flattened flux)."""
        from . import results

        return results.template_spectrum(self)

    def to_spectrum(self, wavelength=None, *, absolute: bool = False):
        """The clone as a :class:`specutils.Spectrum` on ``wavelength`` (default: native grid);
        ``absolute=True`` multiplies by the stored continuum."""
        from . import results

        return results.template_spectrum(self, wavelength, absolute=absolute)

    def plot(self, region=None, **kwargs):
        """Target, clone and residual (a matplotlib Figure)."""
        from . import results

        return results.plot_clone(self, region, **kwargs)

    def lines_per_100_angstrom(self) -> float:
        """Mean line density over the cloned range, lines per 100 Å."""
        if self.wavelength.size:
            span = float(self.wavelength[-1] - self.wavelength[0])
        elif "wavelength_min" in self.meta and "wavelength_max" in self.meta:
            span = float(self.meta["wavelength_max"]) - float(self.meta["wavelength_min"])
        else:
            self._require_spectrum("lines_per_100_angstrom")
        return 100.0 * self.n_lines / span

    def evaluate(self, wavelength, velocity_kms: float = 0.0) -> np.ndarray:
        """Evaluate the clone on any grid (Å or Quantity), optionally Doppler shifted.

        The grid may be a frequency or wavenumber Quantity in either order; the flux comes
        back in the order of the grid given. A single wavelength gives a float.
        """
        scalar = np.ndim(wavelength) == 0
        wl, reversed_axis = ascending_angstrom(np.atleast_1d(wavelength), "wavelength")
        v = None if velocity_kms == 0 else float(velocity_kms)
        if wl.size < 3:
            # A point or two: every line on every sample (cheap, and no wing is cut off;
            # on a grid the windows truncate each line's wings below `tolerance`).
            check_grid(wl, min_size=1)
            with torch.no_grad():
                flux = self.forest.dense_flux(wl, v).double().cpu().numpy()
            return float(flux[0]) if scalar else flux
        check_grid(wl)
        with torch.no_grad():
            layout = self.forest.make_layout(wl)
            flux = self.forest(layout, v).double().cpu().numpy()
        # on a frequency or wavenumber grid, in the order of the grid given
        return flux[::-1].copy() if reversed_axis else flux

    def save(self, path, *, overwrite: bool = False, include_spectrum: bool = True) -> Path:
        """Write the clone as an ECSV line table (plus the spectrum beside it).

        The two files are written atomically as a pair: each goes first to a uniquely
        named temporary file in the same folder, and only once both are complete are they
        renamed into place, so a failed write (a full disk, …) leaves the previous files
        and no temporary ones. The line table records a SHA-256 of its own columns and of
        the spectrum (with its number of pixels and wavelength range), and the spectrum
        one of the lines: :func:`load_clone` checks them, so a truncated or altered file,
        or a table and a spectrum from two different saves, is an error, never a clone.

        Parameters
        ----------
        path : path-like
            The line table, ``*.ecsv``. With ``include_spectrum`` the native grid, target
            and continuum go to ``<stem>.spectrum.ecsv`` beside it.
        overwrite : bool
            Replace existing files. Without it, nothing is written when either file exists.
        include_spectrum : bool
            Also write the native-resolution spectrum.

        Returns
        -------
        pathlib.Path
            The line table's path.

        Raises
        ------
        FileExistsError
            If ``overwrite`` is False and the table or its spectrum file exists.
        OSError
            If a file cannot be written (the message names it).
        """
        path = Path(path)
        spath = _spectrum_path(path)
        targets = [path, spath] if include_spectrum else [path]
        existing = [str(p) for p in targets if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"{' and '.join(existing)} exist{'s' if len(existing) == 1 else ''}; "
                "pass overwrite=True to replace, nothing was written"
            )
        meta = dict(self.meta)
        meta["history_loss"] = [float(x) for x in self.history.loss]
        meta["history_epochs"] = int(self.history.epochs)
        meta["history_wall_time"] = float(self.history.wall_time)
        meta["history_stop_reason"] = self.history.stop_reason
        table = forest_to_table(self.forest, initial=self.initial, meta=meta)
        lines_digest = _lines_digest(table)
        table.meta["lines_sha256"] = lines_digest
        table.meta["n_lines_saved"] = len(table)
        pairs = [(path, table)]
        if include_spectrum:
            spec = QTable()
            spec["wavelength"] = np.asarray(self.wavelength, dtype=np.float64) * u.AA
            spec["target_flux"] = np.asarray(self.target_flux, dtype=np.float64)
            spec["continuum"] = np.asarray(self.continuum, dtype=np.float64)
            spec.meta["format"] = _FORMAT + ".spectrum"
            spec.meta["lines_sha256"] = lines_digest
            table.meta["spectrum"] = _spectrum_summary(spec)
            pairs.insert(0, (spath, spec))
        else:
            table.meta["spectrum"] = None  # lines only: a spectrum file beside is not ours
        _write_atomically(pairs)
        return path


def _spectrum_path(path: Path) -> Path:
    return path.with_name(path.stem + ".spectrum.ecsv")


def _digest(table: QTable) -> str:
    """SHA-256 of a table's columns: names, units and float64 values."""
    h = hashlib.sha256()
    for name in table.colnames:
        col = table[name]
        unit = getattr(col, "unit", None)
        values = np.asarray(col.value if hasattr(col, "value") else col)
        h.update(f"{name}|{unit}|{values.shape}|".encode())
        if values.dtype.kind in "biuf":
            h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
        else:
            h.update("\x1f".join(map(str, values.ravel())).encode())
    return h.hexdigest()


def _lines_digest(table: QTable) -> str:
    return _digest(table)


def _spectrum_summary(spec: QTable) -> dict:
    wl = spec["wavelength"].to_value(u.AA)
    return {
        "sha256": _digest(spec),
        "n_pixels": int(len(spec)),
        "wavelength_min": float(wl[0]) if wl.size else None,
        "wavelength_max": float(wl[-1]) if wl.size else None,
    }


def _write_atomically(pairs: list[tuple[Path, QTable]]) -> None:
    """Write each table to a unique temporary file beside its target, then rename all."""
    temporary: list[str] = []
    try:
        for target, table in pairs:
            try:
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
                )
            except OSError as err:
                raise OSError(f"cannot write {target}: {err}") from err
            os.close(fd)
            temporary.append(tmp)
            try:
                table.write(tmp, format="ascii.ecsv", overwrite=True)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
            except OSError as err:
                raise OSError(f"could not write {target} ({err}); nothing was replaced") from err
        for (target, _), tmp in zip(pairs, temporary):
            os.replace(tmp, target)
    finally:
        for tmp in temporary:
            Path(tmp).unlink(missing_ok=True)


class _PairMismatch(ValueError):
    """The line table and the spectrum file are not from one save."""


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
        except _PairMismatch:
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _read_ecsv(path: Path, what: str) -> QTable:
    try:
        return QTable.read(path, format="ascii.ecsv")
    except Exception as err:  # noqa: BLE001 - astropy raises many kinds on a bad file
        raise ValueError(
            f"cannot read {what} {path}: it is not an ECSV table, or it is damaged or "
            f"truncated ({type(err).__name__}: {err})"
        ) from err


def _load_clone_once(path: Path, device, dtype) -> CloneResult:
    table = _read_ecsv(path, "the clone table")
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
        if _lines_digest(table) != saved_digest:
            raise ValueError(
                f"{what} does not match the checksum written with it: the file was "
                "altered or corrupted after it was saved"
            )
    meta = {
        k: v
        for k, v in table.meta.items()
        if not k.startswith("history_") and k not in _INTEGRITY_KEYS
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
            k[:-5]: _column_values(table, k, what, None if k == "depth_init" else u.AA)
            for k in table.colnames
            if k.endswith("_init")
        }
        if "found_in_pass" in table.colnames:
            initial["found_in_pass"] = np.asarray(table["found_in_pass"], dtype=np.int64)
    wavelength, target, continuum = _load_spectrum(path, table, saved_digest)
    return CloneResult(forest, wavelength, target, continuum, history, initial, meta)


def _load_spectrum(path: Path, table: QTable, lines_digest: str | None):
    """The native spectrum beside a clone table, checked against the table."""
    empty = np.array([], dtype=np.float64)
    spath = _spectrum_path(path)
    # absent ("unknown") in files written before the checksums: nothing to check against
    summary = table.meta.get("spectrum", "unknown")
    if summary is None:  # saved with include_spectrum=False
        return empty, empty.copy(), empty.copy()
    if not spath.exists():
        if isinstance(summary, dict):
            warnings.warn(
                f"the spectrum file {spath} of the clone {path} is missing; loaded the "
                "lines only (model_flux, residual and plots need it)",
                UserWarning,
                stacklevel=4,
            )
        return empty, empty.copy(), empty.copy()
    what = f"the clone spectrum file {spath}"
    spec = _read_ecsv(spath, "the clone spectrum file")
    if spec.meta.get("format") != _FORMAT + ".spectrum":
        raise ValueError(
            f"{what} is not a blase_specutils clone spectrum (meta['format'] is "
            f"{spec.meta.get('format')!r})"
        )
    missing = [c for c in ("wavelength", "target_flux", "continuum") if c not in spec.colnames]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")
    if getattr(spec["wavelength"], "unit", None) is None:
        raise ValueError(f"{what}: column 'wavelength' has no unit (expected Å)")
    wavelength = _column_values(spec, "wavelength", what, u.AA)
    target = _column_values(spec, "target_flux", what, None)
    continuum = _column_values(spec, "continuum", what, None)
    mismatch = (
        f"the clone table {path} and its spectrum file {spath} do not belong together "
        "(they were written by different saves, or one of them was replaced, truncated "
        "or altered): save the clone again"
    )
    if isinstance(summary, dict):
        if len(spec) != summary.get("n_pixels") or _digest(spec) != summary.get("sha256"):
            raise _PairMismatch(mismatch)
        if lines_digest is not None and spec.meta.get("lines_sha256") != lines_digest:
            raise _PairMismatch(mismatch)
    if wavelength.size and (
        not np.all(np.isfinite(wavelength)) or np.any(np.diff(wavelength) <= 0)
    ):
        raise ValueError(f"{what}: the wavelengths are not finite and strictly increasing")
    return wavelength, target, continuum
