"""Clone results as data: the line-table format, :class:`CloneResult` and its ECSV I/O.

A clone is saved as an astropy ECSV line table whose raw-parameter columns
(``center_ref``, ``center_shift``, ``ln_amplitude``, ``ln_sigma``, ``ln_gamma``) rebuild
the :class:`~blase_specutils.core.lineforest.LineForest` bit for bit, plus an optional
``<stem>.spectrum.ecsv`` with the native grid, the flattened target and the continuum.
Reading never executes code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
import torch
from astropy.table import QTable

from .._validation import ascending_angstrom, check_grid
from ..core.lineforest import LineForest
from ..core.profiles import pseudo_voigt_peak
from ..core.train import TrainingHistory

__all__ = ["CloneResult", "forest_to_table", "forest_from_table", "load_clone"]

_FORMAT = "blase_specutils.clone"
_FORMAT_VERSION = 1


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
    if meta:
        table.meta.update(meta)
    return table


def forest_from_table(
    table: QTable, *, device=None, dtype: torch.dtype | None = None
) -> LineForest:
    """Rebuild a :class:`LineForest` from :func:`forest_to_table` output (bit-exact)."""
    if table.meta.get("format") != _FORMAT:
        raise ValueError(
            "this table is not a blase_specutils clone table (meta['format'] is "
            f"{table.meta.get('format')!r}, expected {_FORMAT!r})"
        )
    required = ("center_ref", "center_shift", "ln_amplitude", "ln_sigma", "ln_gamma", "emission")
    missing = [c for c in required if c not in table.colnames]
    if missing:
        raise ValueError(f"clone table lacks column(s) {missing}")
    dtype = dtype or getattr(torch, table.meta.get("dtype", "float32"))

    def column(name):
        col = table[name]
        return np.asarray(
            col.to_value(u.AA) if hasattr(col, "unit") and col.unit is not None else col
        )

    forest = LineForest(
        column("center_ref"),
        np.ones(len(table)),
        np.ones(len(table)),
        np.ones(len(table)),
        emission=np.asarray(table["emission"], dtype=bool),
        mode=table.meta.get("mode", "linear"),
        profile=table.meta.get("profile", "pseudo_voigt"),
        trainable=table.meta.get("trainable", ("amplitude", "sigma", "gamma")),
        dtype=dtype,
        device=device,
    )
    with torch.no_grad():
        for name in ("center_shift", "ln_amplitude", "ln_sigma", "ln_gamma"):
            values = torch.as_tensor(column(name), device=forest.center_ref.device)
            if not bool(torch.all(torch.isfinite(values))):
                raise ValueError(f"clone table column {name!r} has non-finite values")
            getattr(forest, name).copy_(values.to(dtype))
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

        Parameters
        ----------
        path : path-like
            The line table, ``*.ecsv``. With ``include_spectrum`` the native grid, target
            and continuum go to ``<stem>.spectrum.ecsv`` beside it.
        overwrite : bool
            Replace existing files.
        include_spectrum : bool
            Also write the native-resolution spectrum.

        Returns
        -------
        pathlib.Path
            The line table's path.
        """
        path = Path(path)
        meta = dict(self.meta)
        meta["history_loss"] = [float(x) for x in self.history.loss]
        meta["history_epochs"] = int(self.history.epochs)
        meta["history_wall_time"] = float(self.history.wall_time)
        meta["history_stop_reason"] = self.history.stop_reason
        table = forest_to_table(self.forest, initial=self.initial, meta=meta)
        table.write(path, format="ascii.ecsv", overwrite=overwrite)
        if include_spectrum:
            spec = QTable()
            spec["wavelength"] = self.wavelength * u.AA
            spec["target_flux"] = self.target_flux
            spec["continuum"] = self.continuum
            spec.meta["format"] = _FORMAT + ".spectrum"
            spec.write(_spectrum_path(path), format="ascii.ecsv", overwrite=overwrite)
        return path


def _spectrum_path(path: Path) -> Path:
    return path.with_name(path.stem + ".spectrum.ecsv")


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
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no clone at {path}")
    table = QTable.read(path, format="ascii.ecsv")
    forest = forest_from_table(table, device=device, dtype=dtype)
    meta = {k: v for k, v in table.meta.items() if not k.startswith("history_")}
    history = TrainingHistory(
        loss=list(table.meta.get("history_loss", [])),
        epochs=int(table.meta.get("history_epochs", 0)),
        wall_time=float(table.meta.get("history_wall_time", 0.0)),
        stop_reason=str(table.meta.get("history_stop_reason", "")),
    )
    initial = None
    if "amplitude_init" in table.colnames:
        initial = {
            k[:-5]: np.asarray(table[k].value if hasattr(table[k], "unit") else table[k])
            for k in table.colnames
            if k.endswith("_init")
        }
        if "found_in_pass" in table.colnames:
            initial["found_in_pass"] = np.asarray(table["found_in_pass"], dtype=np.int64)
    spath = _spectrum_path(path)
    if spath.exists():
        spec = QTable.read(spath, format="ascii.ecsv")
        wavelength = spec["wavelength"].to_value(u.AA)
        target = np.asarray(spec["target_flux"], dtype=np.float64)
        continuum = np.asarray(spec["continuum"], dtype=np.float64)
    else:
        wavelength = np.array([], dtype=np.float64)
        target = np.array([], dtype=np.float64)
        continuum = np.array([], dtype=np.float64)
    return CloneResult(forest, wavelength, target, continuum, history, initial, meta)
