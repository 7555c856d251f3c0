"""The clone file format: the ECSV line table and the spectrum file beside it.

A clone is saved as an astropy ECSV line table whose raw-parameter columns
(``center_ref``, ``center_shift``, ``ln_amplitude``, ``ln_sigma``, ``ln_gamma``) rebuild
the :class:`~blase_specutils.core.lineforest.LineForest` bit for bit, plus an optional
``<stem>.spectrum.ecsv`` with the native grid, the flattened target and the continuum.
Reading never executes code.

The table codec (:func:`forest_to_table`, :func:`forest_from_table`), the checksums and
the atomic pair write live here, below both :class:`~blase_specutils.astro.results.CloneResult`
(which saves through them) and :func:`~blase_specutils.astro.clones.load_clone` (which
reads through them); this module imports neither.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import torch
from astropy.table import QTable

from ..core.components import ComponentForest
from ..core.lineforest import LOG_BOUNDS, MAX_HALF_WIDTH, WING_BOUNDS, LineForest
from ..core.profiles import pseudo_voigt_peak

__all__ = [
    "forest_to_table",
    "forest_from_table",
    "column_values",
    "load_clone_spectrum",
    "lines_digest",
    "read_ecsv",
    "spectrum_path",
    "spectrum_summary",
    "table_digest",
    "write_atomically",
    "PairMismatch",
]

CLONE_FORMAT = "blase_specutils.clone"
CLONE_FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Meta keys that tie a saved line table to its file and its spectrum (CloneResult.save).
INTEGRITY_KEYS = ("lines_sha256", "n_lines_saved", "spectrum")
RAW_COLUMNS = ("center_ref", "center_shift", "ln_amplitude", "ln_sigma", "ln_gamma")
#: Columns of a clone whose broad lines carry the wing correction (all or none of them).
WING_COLUMNS = ("wing", "wing_alpha", "ln_wing_offset", "ln_wing_scale")
# Loadable ranges of the log parameters: the training bounds of the forest
# (core.lineforest.LOG_BOUNDS, which every optimiser step clamps to) widened by a factor
# of ten each way. Outside them a file is damaged or hand-edited (ln_sigma = 30 would be
# a line 10¹³ Å wide and a NaN spectrum later).
LOADABLE_LOG_RANGE = {
    name: (lo - math.log(10.0), hi + math.log(10.0)) for name, (lo, hi) in LOG_BOUNDS.items()
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
    depth = np.where(forest.linear_lines(), strength, -np.expm1(-strength))
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
    if isinstance(forest, ComponentForest):
        table["component"] = props["component"].astype(np.int64)
    if forest.has_wings:
        # the wing correction of the broad lines (Appendix C.4): raw values, bit-exact
        wings = forest.wing_properties()
        table["wing"] = wings["wing"]
        with torch.no_grad():
            for name in WING_COLUMNS[1:]:
                table[name] = getattr(forest, name).detach().cpu().numpy()
    if initial is not None:
        for key, value in initial.items():
            if key == "found_in_pass":  # provenance, not a starting value
                table[key] = np.asarray(value, dtype=np.int64)
                continue
            table[f"{key}_init"] = np.asarray(value) * (u.AA if key != "depth" else 1)
    if meta:
        # a loaded clone's meta may hold another file's integrity keys: never copy them
        table.meta.update({k: v for k, v in meta.items() if k not in INTEGRITY_KEYS})
    # the forest's own description wins over stale copies in ``meta``
    table.meta.update(
        {
            "format": CLONE_FORMAT,
            "format_version": CLONE_FORMAT_VERSION,
            "mode": forest.mode,
            "profile": forest.profile,
            "dtype": str(forest.dtype).replace("torch.", ""),
            "trainable": list(forest.trainable),
        }
    )
    if isinstance(forest, ComponentForest):
        # a telluric model by molecule: the components' names and modes, in order (the
        # ``component`` column indexes them)
        table.meta["components"] = [
            {"name": name, "mode": mode} for name, mode in zip(forest.names, forest.modes)
        ]
    else:
        table.meta.pop("components", None)
    # the window cap is written only when it is not the default, so files of clones
    # without broad lines stay as they were
    table.meta.pop("max_half_width", None)
    if forest.max_half_width != MAX_HALF_WIDTH:
        table.meta["max_half_width"] = float(forest.max_half_width)
    return table


def _check_meta(table: QTable, what: str) -> torch.dtype:
    """Validate a clone table's format, version, dtype and mode; its saved dtype."""
    meta = table.meta
    if meta.get("format") != CLONE_FORMAT:
        raise ValueError(
            f"{what} is not a blase_specutils clone table (meta['format'] is "
            f"{meta.get('format')!r}, expected {CLONE_FORMAT!r})"
        )
    version = meta.get("format_version", CLONE_FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise ValueError(
            f"{what} has clone format version {version!r}, which is not an integer "
            "(the file is damaged or was edited by hand)"
        )
    if not 1 <= int(version) <= CLONE_FORMAT_VERSION:
        raise ValueError(
            f"{what} has clone format version {version}; this blase_specutils reads "
            f"version{'s 1 to' if CLONE_FORMAT_VERSION > 1 else ''} {CLONE_FORMAT_VERSION} "
            "(a newer blase_specutils wrote it, or the file is damaged)"
        )
    name = meta.get("dtype", "float32")
    if name not in DTYPES:
        raise ValueError(
            f"{what} has dtype {name!r} in its metadata; expected one of {sorted(DTYPES)}"
        )
    mode = meta.get("mode", "linear")
    if mode not in ("linear", "log") and not (mode == "mixed" and "components" in meta):
        raise ValueError(f"{what} has mode {mode!r} in its metadata; expected 'linear' or 'log'")
    return DTYPES[name]


def column_values(table: QTable, name: str, what: str, unit: u.UnitBase | None) -> np.ndarray:
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
    required = (*RAW_COLUMNS, "emission")
    missing = [c for c in required if c not in table.colnames]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")
    if len(table) == 0:
        raise ValueError(f"{what} has no lines")
    dtype = dtype or saved_dtype
    values = {
        name: column_values(table, name, what, u.AA if name.startswith("center") else None)
        for name in RAW_COLUMNS
    }
    for name, column in values.items():
        if not np.all(np.isfinite(column)):
            raise ValueError(f"{what}: column {name!r} has non-finite values")
    for name, (lo, hi) in LOADABLE_LOG_RANGE.items():
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

    common = {
        "emission": emission.astype(bool),
        "profile": table.meta.get("profile", "pseudo_voigt"),
        "trainable": table.meta.get("trainable", ("amplitude", "sigma", "gamma")),
        "dtype": dtype,
        "device": device,
    }
    ones = np.ones(len(table))
    try:
        if "components" in table.meta:
            forest = _component_forest(table, values["center_ref"], ones, common, what)
        else:
            forest = LineForest(
                values["center_ref"], ones, ones, ones,
                mode=table.meta.get("mode", "linear"), **common,
            )  # fmt: skip
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: {err}") from err
    with torch.no_grad():
        for name in RAW_COLUMNS[1:]:
            column = torch.as_tensor(values[name], device=forest.center_ref.device)
            getattr(forest, name).copy_(column.to(dtype))
    cap = table.meta.get("max_half_width", MAX_HALF_WIDTH)
    if (
        isinstance(cap, (bool, np.bool_))
        or not isinstance(cap, (int, float, np.number))
        or not (np.isfinite(cap) and cap > 0)
    ):
        raise ValueError(
            f"{what} has max_half_width {cap!r} in its metadata; expected a window "
            "half-width in Å (a finite number > 0)"
        )
    forest.max_half_width = float(cap)
    present = [c for c in WING_COLUMNS if c in table.colnames]
    if present:
        _read_wings(forest, table, present, what, dtype)
        forest.set_trainable(table.meta.get("trainable", ("amplitude", "sigma", "gamma")))
    return forest


def _component_forest(table: QTable, center, ones, common: dict, what: str) -> ComponentForest:
    """The :class:`ComponentForest` of a table with ``meta["components"]``."""
    components = table.meta["components"]
    if not isinstance(components, list) or not all(
        isinstance(c, dict) and "name" in c and "mode" in c for c in components
    ):
        raise ValueError(
            f"{what}: meta['components'] must list {{'name': ..., 'mode': ...}} entries"
        )
    if "component" not in table.colnames:
        raise ValueError(f"{what} lists components but lacks the column 'component'")
    index = np.asarray(getattr(table["component"], "value", table["component"]))
    if index.dtype.kind not in "iu":
        raise ValueError(f"{what}: column 'component' must hold integers")
    return ComponentForest(
        center, ones, ones, ones, component=index.astype(np.int64),
        names=[str(c["name"]) for c in components], modes=[str(c["mode"]) for c in components],
        **common,
    )  # fmt: skip


def _read_wings(forest: LineForest, table: QTable, present, what: str, dtype) -> None:
    """Restore the wing correction of ``forest`` from the table's wing columns."""
    if len(present) != len(WING_COLUMNS):
        missing = sorted(set(WING_COLUMNS) - set(present))
        raise ValueError(f"{what} has wing columns but lacks {missing}")
    mask = np.asarray(table["wing"])
    if mask.dtype != bool and not np.all(np.isin(mask, (0, 1))):
        raise ValueError(f"{what}: column 'wing' must hold booleans")
    raw = {name: column_values(table, name, what, None) for name in WING_COLUMNS[1:]}
    for name, column in raw.items():
        lo, hi = WING_BOUNDS[name]
        if not np.all(np.isfinite(column)) or np.any((column < lo) | (column > hi)):
            raise ValueError(
                f"{what}: column {name!r} has values that are not finite or outside "
                f"[{lo:.3g}, {hi:.3g}]; the file is damaged or was edited by hand"
            )
    forest.set_wings(mask.astype(bool), offset=1.0, scale=1.0)
    with torch.no_grad():
        for name, column in raw.items():
            tensor = torch.as_tensor(column, device=forest.center_ref.device)
            getattr(forest, name).copy_(tensor.to(dtype))


def spectrum_path(path: Path) -> Path:
    return path.with_name(path.stem + ".spectrum.ecsv")


def table_digest(table: QTable) -> str:
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


def lines_digest(table: QTable) -> str:
    return table_digest(table)


def spectrum_summary(spec: QTable) -> dict:
    wl = spec["wavelength"].to_value(u.AA)
    return {
        "sha256": table_digest(spec),
        "n_pixels": int(len(spec)),
        "wavelength_min": float(wl[0]) if wl.size else None,
        "wavelength_max": float(wl[-1]) if wl.size else None,
    }


def write_atomically(pairs: list[tuple[Path, QTable]]) -> None:
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


class PairMismatch(ValueError):
    """The line table and the spectrum file are not from one save (read them again)."""


def read_ecsv(path: Path, what: str) -> QTable:
    try:
        return QTable.read(path, format="ascii.ecsv")
    except Exception as err:  # noqa: BLE001 - astropy raises many kinds on a bad file
        raise ValueError(
            f"cannot read {what} {path}: it is not an ECSV table, or it is damaged or "
            f"truncated ({type(err).__name__}: {err})"
        ) from err


def load_clone_spectrum(path: Path, table: QTable, saved_lines_digest: str | None):
    """The native spectrum beside a clone table, checked against the table."""
    empty = np.array([], dtype=np.float64)
    spath = spectrum_path(path)
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
    spec = read_ecsv(spath, "the clone spectrum file")
    if spec.meta.get("format") != CLONE_FORMAT + ".spectrum":
        raise ValueError(
            f"{what} is not a blase_specutils clone spectrum (meta['format'] is "
            f"{spec.meta.get('format')!r})"
        )
    missing = [c for c in ("wavelength", "target_flux", "continuum") if c not in spec.colnames]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")
    if getattr(spec["wavelength"], "unit", None) is None:
        raise ValueError(f"{what}: column 'wavelength' has no unit (expected Å)")
    wavelength = column_values(spec, "wavelength", what, u.AA)
    target = column_values(spec, "target_flux", what, None)
    continuum = column_values(spec, "continuum", what, None)
    mismatch = (
        f"the clone table {path} and its spectrum file {spath} do not belong together "
        "(they were written by different saves, or one of them was replaced, truncated "
        "or altered): save the clone again"
    )
    if isinstance(summary, dict):
        if len(spec) != summary.get("n_pixels") or table_digest(spec) != summary.get("sha256"):
            raise PairMismatch(mismatch)
        if saved_lines_digest is not None and spec.meta.get("lines_sha256") != saved_lines_digest:
            raise PairMismatch(mismatch)
    if wavelength.size and (
        not np.all(np.isfinite(wavelength)) or np.any(np.diff(wavelength) <= 0)
    ):
        raise ValueError(f"{what}: the wavelengths are not finite and strictly increasing")
    return wavelength, target, continuum
