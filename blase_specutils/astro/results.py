"""Results as astropy/specutils objects: line tables, spectra, parameters, plots, files.

Plain functions over a :class:`CloneResult` or a :class:`FitResult` (the result classes
expose them as thin properties):

* :func:`line_table` — per-line properties as a `~astropy.table.QTable` with
  equivalent widths, their uncertainties, flags and provenance;
* :func:`equivalent_widths` — the analytic (linear mode) or numerically integrated
  (log mode) equivalent width of each line taken alone;
* :func:`template_spectrum` — a clone at native resolution as a `specutils.Spectrum`;
* :func:`fit_spectra`, :func:`fit_parameters` — a fit's data, model, residual and
  telluric spectra, and its global parameters with units;
* :func:`plot_fit`, :func:`plot_clone` — two-panel figures;
* :func:`write_fit` / :func:`read_fit` — one ASDF file per fit (no pickles), read back
  as a :class:`FitResult`; :func:`write_line_table` / :func:`read_line_table` — ECSV.

Equivalent widths follow the specutils sign convention: positive for absorption,
``EW = ∫ (1 − F/F_c) dλ``.

The :class:`CloneResult` and :class:`FitResult` containers are defined here too, beside
the functions their views call, so that the import graph has no cycle (``astro.clones``
re-exports the first and adds :func:`~blase_specutils.astro.clones.load_clone`,
``fitting`` re-exports the second; the clone file format is
:mod:`~blase_specutils.astro.clone_files`, below both).
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import astropy.units as u
import numpy as np
import torch
from astropy.table import QTable, Table
from specutils import SpectralRegion, Spectrum, SpectrumList

from .._version import __version__
from ..core.components import ComponentForest
from ..core.lineforest import SPEED_OF_LIGHT_KMS, LineForest
from ..core.profiles import pseudo_voigt, tch_fwhm_and_eta, voigt
from ..core.train import TrainingHistory
from .adapters import arrays_to_spectrum
from .clone_files import (
    CLONE_FORMAT,
    forest_from_table,
    forest_to_table,
    lines_digest,
    spectrum_path,
    spectrum_summary,
    write_atomically,
)
from .inputs import (
    ascending_angstrom,
    check_grid,
    check_input_file,
    check_numbers,
    check_output_file,
)

if TYPE_CHECKING:
    from ..core.forward import ForwardModel

__all__ = [
    "line_table",
    "equivalent_widths",
    "cayrel_equivalent_width_uncertainty",
    "template_spectrum",
    "fit_spectra",
    "fit_parameters",
    "plot_fit",
    "plot_clone",
    "write_fit",
    "read_fit",
    "FitResult",
    "StoredFit",
    "LoadedFit",
    "telluric_settings",
    "write_line_table",
    "read_line_table",
    "SATURATION_DEPTH",
    "FIT_FILE_FORMAT",
]

#: Single-line depth above which a line is flagged ``saturated``.
SATURATION_DEPTH = 0.95
#: ``format`` tag of the ASDF files written by :func:`write_fit`.
FIT_FILE_FORMAT = "blase_specutils.fit"
FIT_FILE_FORMAT_VERSION = 1
#: Cayrel (1988) coefficient of σ_EW ≈ 1.5 √(FWHM δλ) / SNR.
CAYREL_COEFFICIENT = 1.5
#: Linear-mode transmission clip of the forest (1 − aV is clamped at 1e-6).
_LINEAR_CLIP = 1.0 - 1e-6
# Integration grid for log-mode equivalent widths: x = FWHM · 0.5 sinh(t), t uniform.
_EW_GRID_POINTS = 1601
_EW_GRID_REACH_FWHM = 400.0
_EW_CHUNK_ELEMENTS = 2_000_000


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
_KMS = u.km / u.s


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """Numpy scalars/arrays → Python types, so metadata writes to YAML (ECSV) and ASDF."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _number(value: Any, unit: u.UnitBase = u.one) -> float:
    """A float from a float or a Quantity (converted to ``unit``: km/s for velocities)."""
    if isinstance(value, u.Quantity):
        return float(value.to_value(unit))
    return float(value)


def _is_fit(obj: Any) -> bool:
    return isinstance(obj, FitResult)


def _listify(values: Any) -> list[np.ndarray]:
    if isinstance(values, list):
        return [np.asarray(v) for v in values]
    return [np.asarray(values)]


def _orders_of(result: Any) -> list[dict[str, np.ndarray]]:
    """Per-order arrays of a fit (FitResult) as a list of dicts.

    Keys: ``wavelength`` (Å), ``flux``, ``uncertainty``, ``good`` (bool), ``model``,
    ``continuum``, ``telluric``, ``telluric_corrected``, ``residual`` (data − model,
    NaN where not good).
    """
    if not _is_fit(result):
        raise TypeError(f"expected a FitResult, not {type(result).__name__}")
    if result.stored is not None:
        return result.stored.orders
    names = {
        "wavelength": "wavelength",
        "flux": "flux",
        "uncertainty": "uncertainty",
        "good": "good",
        "model": "model_flux",
        "continuum": "continuum_flux",
        "telluric": "telluric_flux",
        "telluric_corrected": "telluric_corrected_flux",
        "residual": "residual",
    }
    columns = {key: _listify(getattr(result, attr)) for key, attr in names.items()}
    n_orders = len(columns["wavelength"])
    orders = []
    for k in range(n_orders):
        order = {
            key: np.array(values[k], dtype=bool if key == "good" else np.float64)
            for key, values in columns.items()
        }
        orders.append(order)
    return orders


def _has_telluric(result: Any) -> bool:
    return result.has_telluric


def telluric_settings(fit_result: Any) -> dict | None:
    """How a fit's trained telluric clone is observed, or None without a telluric clone.

    Parameters
    ----------
    fit_result : FitResult
        The fit.

    Returns
    -------
    dict or None
        ``ln_scale`` (the trained ln optical-depth scale: the transmission is
        ``T^exp(ln_scale)``), ``shift_kms`` (the telluric velocity shift, km/s) and
        ``shift_applied`` (whether the model applies it: only when it was fitted),
        ``relativistic`` (the forest's Doppler formula), ``resolving_power``,
        ``step_kms`` (the fine grid's velocity step), ``grid_anchor`` (the fine grid's
        first wavelength, Å: a grid ``anchor · exp(k · step / c)`` samples the clone where
        the fit did), ``tolerance`` (the sparse windows' wing tolerance) and ``ranges``
        (``[[λ_min, λ_max], ...]`` in Å, vacuum:
        the pixels of each fitted order, where the clone was learned). Numbers are the
        float64 values of the model's parameters, so a stored copy is exact. For a
        telluric model by molecule, ``components`` lists the molecules' names and
        ``ln_scale`` is a list, one ln scale per molecule in that order (the
        transmission is ``∏_m T_m^exp(ln_scale[m])``).
    """
    if not _is_fit(fit_result):
        raise TypeError(f"expected a FitResult, not {type(fit_result).__name__}")
    if fit_result.stored is not None:
        settings = fit_result.stored.telluric_settings
        return None if settings is None else _plain(dict(settings))
    model = fit_result.forward_model
    forest = model.telluric
    if forest is None:
        return None
    ranges = [
        [float(np.min(o["wavelength"])), float(np.max(o["wavelength"]))]
        for o in _orders_of(fit_result)
    ]
    ln_scale = model.ln_telluric_scale.detach().cpu().double()
    by_molecule = {}
    if isinstance(forest, ComponentForest):
        by_molecule = {"components": list(forest.names)}
        ln_scale = [float(v) for v in ln_scale]
    else:
        ln_scale = float(ln_scale)
    return {
        **by_molecule,
        "ln_scale": ln_scale,
        "shift_kms": float(model.telluric_shift.detach().cpu().double()),
        "shift_applied": bool(model.telluric_shift.requires_grad),
        "relativistic": bool(forest.relativistic),
        "resolving_power": float(model.instrument.resolving_power.detach().cpu().double()),
        "step_kms": float(model.step_kms),
        "tolerance": float(model.tolerance),
        "grid_anchor": float(model.fine_wavelength[0].detach().cpu()),
        "ranges": ranges,
    }


def _region_bounds(region: Any) -> tuple[float, float] | None:
    """(lo, hi) in Å from None, a SpectralRegion, a 2-sequence of Quantities or of Å floats."""
    if region is None:
        return None
    if isinstance(region, SpectralRegion):
        lo, hi = region.lower, region.upper
    elif isinstance(region, u.Quantity) and region.shape == (2,):
        lo, hi = region[0], region[1]
    elif isinstance(region, Sequence) and not isinstance(region, str) and len(region) == 2:
        lo, hi = region
    else:
        raise TypeError(
            "region must be a SpectralRegion, a (lo, hi) pair of spectral Quantities, or a "
            f"(lo, hi) pair of wavelengths in Å; got {region!r}"
        )
    bounds = []
    for value in (lo, hi):
        if isinstance(value, u.Quantity):
            try:
                value = value.to_value(u.AA, equivalencies=u.spectral())
            except u.UnitConversionError as err:
                raise u.UnitConversionError(
                    f"region bound {value} is not a spectral quantity (wavelength, frequency or "
                    "wavenumber)"
                ) from err
        bounds.append(float(value))
    lo_aa, hi_aa = sorted(bounds)  # frequency → wavelength reverses the order
    if not (np.isfinite(lo_aa) and np.isfinite(hi_aa)) or hi_aa <= lo_aa:
        raise ValueError(f"region must have a positive, finite width; got {lo_aa}–{hi_aa} Å")
    return lo_aa, hi_aa


def _as_line_values(value: Any, n_lines: int, name: str, unit: u.UnitBase | None) -> np.ndarray:
    """A scalar or per-line array (optionally a Quantity in ``unit``) broadcast to ``n_lines``."""
    if isinstance(value, u.Quantity):
        if unit is None:
            value = value.to_value(u.dimensionless_unscaled)
        else:
            value = value.to_value(unit)
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n_lines, float(array))
    if array.shape != (n_lines,):
        raise ValueError(
            f"{name} must be a scalar or have one value per line ({n_lines}), "
            f"got shape {array.shape}"
        )
    return array


# ---------------------------------------------------------------------------
# Equivalent widths
# ---------------------------------------------------------------------------
def _ew_grid() -> tuple[np.ndarray, np.ndarray]:
    """Offsets in units of the FWHM and their trapezoid weights (dx/dt · dt)."""
    t_max = math.asinh(2.0 * _EW_GRID_REACH_FWHM)
    t = np.linspace(-t_max, t_max, _EW_GRID_POINTS)
    dt = t[1] - t[0]
    offsets = 0.5 * np.sinh(t)
    weights = 0.5 * np.cosh(t) * dt
    weights[[0, -1]] *= 0.5
    return offsets, weights


def equivalent_widths(
    amplitude,
    sigma,
    gamma,
    *,
    mode: str = "linear",
    profile: str = "pseudo_voigt",
    emission=None,
) -> np.ndarray:
    """Equivalent width of each line taken alone, Å (positive for absorption).

    Linear mode, ``F = 1 − s a V``: the profile ``V`` is area-normalised, so
    ``EW = s a`` exactly (``s = +1`` absorption, ``−1`` emission), except for
    absorption lines whose centre would go below zero flux, where the forest's clip
    ``F ≥ 10⁻⁶`` is integrated numerically. Log mode, ``F = exp(−s a V)``:
    ``EW = s a − ∫ (e^{−s a V} − 1 + s a V) dλ``; the correction decays like the
    square of the wings, so it is integrated on a local grid of ±400 FWHM
    (sinh-spaced, trapezoid rule, converges exponentially for these smooth
    integrands) and the analytic ``s a`` carries the far Lorentzian wings exactly.

    Parameters
    ----------
    amplitude : array_like
        Line amplitudes ``a`` (area of ``a V``), Å.
    sigma : array_like
        Gaussian standard deviations, Å.
    gamma : array_like
        Lorentzian half widths at half maximum, Å.
    mode : {"linear", "log"}
        Forest mode.
    profile : {"pseudo_voigt", "voigt"}
        Line shape.
    emission : array_like of bool, optional
        True for emission lines (negative equivalent width).

    Returns
    -------
    numpy.ndarray
        Equivalent widths, Å (float64).
    """
    amplitude = np.asarray(amplitude, dtype=np.float64).ravel()
    sigma = np.asarray(sigma, dtype=np.float64).ravel()
    gamma = np.asarray(gamma, dtype=np.float64).ravel()
    n = amplitude.size
    if sigma.size != n or gamma.size != n:
        raise ValueError(
            "amplitude, sigma and gamma must have the same length; "
            f"got {n}, {sigma.size}, {gamma.size}"
        )
    if mode not in ("linear", "log"):
        raise ValueError(f"mode must be 'linear' or 'log', not {mode!r}")
    if profile not in ("pseudo_voigt", "voigt"):
        raise ValueError(f"profile must be 'pseudo_voigt' or 'voigt', not {profile!r}")
    sign = (
        np.ones(n) if emission is None else np.where(np.asarray(emission, bool).ravel(), -1.0, 1.0)
    )
    if sign.size != n:
        raise ValueError(f"emission must have one entry per line ({n}), got {sign.size}")
    ew = sign * amplitude
    if n == 0:
        return ew
    shape = pseudo_voigt if profile == "pseudo_voigt" else voigt
    sig_t = torch.as_tensor(sigma)
    gam_t = torch.as_tensor(gamma)
    with torch.no_grad():
        peak = amplitude * shape(torch.zeros(n, dtype=torch.float64), sig_t, gam_t).numpy()
        fwhm = tch_fwhm_and_eta(sig_t, gam_t)[0].numpy()
    if mode == "linear":
        needs = np.flatnonzero((sign > 0) & (peak > _LINEAR_CLIP))
    else:
        needs = np.arange(n)
    if needs.size == 0:
        return ew
    offsets, weights = _ew_grid()
    chunk = max(1, _EW_CHUNK_ELEMENTS // offsets.size)
    off_t = torch.as_tensor(offsets)
    w_t = torch.as_tensor(weights)
    with torch.no_grad():
        for start in range(0, needs.size, chunk):
            idx = needs[start : start + chunk]
            width = torch.as_tensor(fwhm[idx])[:, None]
            dx = off_t[None, :] * width
            y = torch.as_tensor(amplitude[idx])[:, None] * shape(
                dx, sig_t[idx][:, None], gam_t[idx][:, None]
            )
            if mode == "linear":
                integrand = torch.clamp(y - _LINEAR_CLIP, min=0.0)
            else:
                s = torch.as_tensor(sign[idx])[:, None]
                z = torch.clamp(-s * y, max=700.0)
                # e^z − 1 − z, accurate for small |z| via expm1.
                integrand = torch.expm1(z) - z
            correction = (integrand * w_t[None, :]).sum(1) * width[:, 0]
            ew[idx] = ew[idx] - correction.numpy()
    return ew


def cayrel_equivalent_width_uncertainty(fwhm_observed, pixel_size, snr) -> np.ndarray:
    """Cayrel (1988) 1-σ equivalent-width uncertainty, ``1.5 √(FWHM δλ) / SNR``.

    Parameters
    ----------
    fwhm_observed : array_like
        Observed line FWHM (intrinsic ⊕ instrumental), Å.
    pixel_size : array_like
        Data pixel size δλ, Å.
    snr : array_like
        Continuum signal-to-noise ratio per pixel (dimensionless).

    Returns
    -------
    numpy.ndarray
        σ_EW, Å (NaN where the SNR is not positive and finite).
    """
    fwhm_observed = np.asarray(fwhm_observed, dtype=np.float64)
    pixel_size = np.asarray(pixel_size, dtype=np.float64)
    snr = np.asarray(snr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = CAYREL_COEFFICIENT * np.sqrt(fwhm_observed * pixel_size) / snr
    return np.where(np.isfinite(snr) & (snr > 0), sigma, np.nan)


def _data_noise_at_lines(result: Any, centers_rest: np.ndarray, rv_kms: float):
    """Continuum SNR and pixel size of the data at each (Doppler-shifted) line centre, and
    whether the centre lies inside an order's good data at all."""
    observed = centers_rest * (1.0 + rv_kms / SPEED_OF_LIGHT_KMS)
    snr = np.full(centers_rest.size, np.nan)
    pixel = np.full(centers_rest.size, np.nan)
    covered = np.zeros(centers_rest.size, dtype=bool)
    for order in _orders_of(result):
        wl = order["wavelength"]
        good = order["good"] & np.isfinite(order["uncertainty"]) & (order["uncertainty"] > 0)
        if good.sum() < 2:
            continue
        covered |= (observed >= wl[good][0]) & (observed <= wl[good][-1])
        inside = (observed >= wl[good][0]) & (observed <= wl[good][-1]) & np.isnan(snr)
        if not inside.any():
            continue
        snr_pixels = np.abs(order["continuum"][good]) / order["uncertainty"][good]
        snr[inside] = np.interp(observed[inside], wl[good], snr_pixels)
        pixel[inside] = np.interp(observed[inside], wl, np.gradient(wl))
    return snr, pixel, covered


def _initial_dict(initial: Any, n_lines: int) -> dict | None:
    if initial is None:
        return None
    found_in_pass = None
    if isinstance(initial, CloneResult):
        # which pass of the cloning found each line travels with the clone's values
        found_in_pass = (initial.initial or {}).get("found_in_pass")
        initial = initial.forest
    if isinstance(initial, LineForest):
        props = initial.line_properties()
        initial = {k: props[k] for k in ("center", "amplitude", "sigma", "gamma", "fwhm")}
        if found_in_pass is not None and np.shape(found_in_pass) == (n_lines,):
            initial["found_in_pass"] = found_in_pass
    if not isinstance(initial, Mapping):
        raise TypeError(
            "initial must be a dict of per-line arrays, a LineForest or a CloneResult, "
            f"not {type(initial).__name__}"
        )
    out = {}
    for key, value in initial.items():
        array = np.asarray(
            value.to_value(u.AA) if isinstance(value, u.Quantity) and key != "depth" else value,
            dtype=np.float64,
        )
        if array.shape != (n_lines,):
            raise ValueError(
                f"initial[{key!r}] has shape {array.shape} but the forest has {n_lines} lines"
            )
        out[key] = array
    return out


# ---------------------------------------------------------------------------
# Line table
# ---------------------------------------------------------------------------
def line_table(
    forest_or_result: Any,
    *,
    initial: Any = None,
    data_snr: Any = None,
    resolution_fwhm: Any = None,
    pixel_size: Any = None,
) -> QTable:
    """Per-line properties with equivalent widths, flags and provenance.

    Parameters
    ----------
    forest_or_result : LineForest, CloneResult, FitResult
        Whose lines to tabulate. For a fit, the transfer-learned template's lines,
        with the data's SNR, pixel size and the fitted resolving power used for the
        equivalent-width uncertainties unless given below.
    initial : dict, LineForest or CloneResult, optional
        Initial line properties (Å; ``depth`` dimensionless) written as ``*_init``
        columns, plus ``equivalent_width_init`` when amplitude, σ and γ are known.
        Default: the line finder's values stored in the clone.
    data_snr : float or array_like, optional
        Continuum signal-to-noise ratio per pixel of the data at each line
        (dimensionless). Without it (and for clones) the EW uncertainty is NaN.
    resolution_fwhm : float, array_like or Quantity, optional
        Instrumental FWHM λ/R at each line, Å (default 0 when ``data_snr`` is given).
    pixel_size : float, array_like or Quantity, optional
        Data pixel size δλ at each line, Å; required with ``data_snr``.

    Returns
    -------
    astropy.table.QTable
        One row per line: ``center``, ``amplitude``, ``sigma``, ``gamma``, ``fwhm`` [Å],
        ``lorentz_fraction``, ``depth``, ``equivalent_width`` and
        ``equivalent_width_uncertainty`` [Å], flags ``emission``, ``saturated``
        (depth > 0.95), ``blended`` (another line closer than this line's FWHM), for fits
        ``in_data`` (the observed centre lies inside the fitted data; other lines keep
        their cloned values, unconstrained), the
        raw parameters (``center_ref``, ``center_shift``, ``ln_*``; enough for
        :func:`~blase_specutils.cloning.forest_from_table` to rebuild the forest
        bit-exactly) and ``*_init`` columns. ``meta`` holds the package version, mode,
        profile, date and what is known of the template (teff, prominence, …) and fit.

    Raises
    ------
    TypeError
        If ``forest_or_result`` is none of the accepted types.
    ValueError
        If per-line inputs have the wrong length, or ``data_snr`` comes without
        ``pixel_size``.
    """
    source_meta: dict = {}
    fit_meta: dict = {}
    derived_noise = None
    in_data = None  # known for fits only
    if isinstance(forest_or_result, LineForest):
        forest = forest_or_result
        source = "forest"
    elif isinstance(forest_or_result, CloneResult):
        forest = forest_or_result.forest
        source = "clone"
        source_meta = dict(forest_or_result.meta)
        if initial is None:
            initial = forest_or_result.initial
    elif _is_fit(forest_or_result):
        template = forest_or_result.template
        forest = template.forest
        source = "fit"
        source_meta = dict(template.meta)
        if initial is None:
            initial = template.initial
        fit_meta = {
            "fit_rv_kms": _number(forest_or_result.rv, _KMS),
            "fit_vsini_kms": _number(forest_or_result.vsini, _KMS),
            "fit_resolving_power": _number(forest_or_result.resolving_power, u.one),
            "fit_chi2_reduced": float(forest_or_result.chi2_reduced),
        }
        if data_snr is None:
            centers = forest.line_properties()["center"]
            snr, pix, in_data = _data_noise_at_lines(
                forest_or_result, centers, _number(forest_or_result.rv, _KMS)
            )
            derived_noise = (snr, pix, centers / _number(forest_or_result.resolving_power, u.one))
    else:
        raise TypeError(
            "line_table expects a LineForest, CloneResult, FitResult, not "
            f"{type(forest_or_result).__name__}"
        )
    n_lines = forest.n_lines
    initial_values = _initial_dict(initial, n_lines)
    source_meta = {k: v for k, v in source_meta.items() if not k.startswith("history_")}
    table = forest_to_table(forest, initial=initial_values, meta=_plain(source_meta))

    fwhm = table["fwhm"].to_value(u.AA)
    ew = equivalent_widths(
        table["amplitude"].to_value(u.AA),
        table["sigma"].to_value(u.AA),
        table["gamma"].to_value(u.AA),
        mode=forest.mode,
        profile=forest.profile,
        emission=np.asarray(table["emission"]),
    )
    if derived_noise is not None:
        snr, pix, instrument_fwhm = derived_noise
    elif data_snr is not None:
        if pixel_size is None:
            raise ValueError(
                "data_snr needs pixel_size (the data's pixel width δλ in Å) for the Cayrel formula"
            )
        snr = _as_line_values(data_snr, n_lines, "data_snr", None)
        pix = _as_line_values(pixel_size, n_lines, "pixel_size", u.AA)
        instrument_fwhm = (
            np.zeros(n_lines)
            if resolution_fwhm is None
            else _as_line_values(resolution_fwhm, n_lines, "resolution_fwhm", u.AA)
        )
    else:
        snr = pix = instrument_fwhm = np.full(n_lines, np.nan)
    fwhm_observed = np.hypot(fwhm, instrument_fwhm)
    table["equivalent_width"] = ew * u.AA
    ew_sigma = cayrel_equivalent_width_uncertainty(fwhm_observed, pix, snr)
    ln_a_sigma = getattr(forest_or_result, "line_ln_amplitude_uncertainty", None)
    if ln_a_sigma is not None and len(ln_a_sigma) == n_lines:
        # The fit's own errors where the amplitude trained: σ(ln a) from the Fisher matrix
        # (globals and continua marginalised, Birge-scaled), carried to the EW through
        # dEW/d ln a (a finite difference of the same EW integral: sublinear when saturated).
        ln_a_sigma = np.asarray(ln_a_sigma, dtype=np.float64)
        amplitude = table["amplitude"].to_value(u.AA)
        step = 0.01
        ew_up, ew_down = (
            equivalent_widths(
                amplitude * np.exp(sign * step),
                table["sigma"].to_value(u.AA),
                table["gamma"].to_value(u.AA),
                mode=forest.mode,
                profile=forest.profile,
                emission=np.asarray(table["emission"]),
            )
            for sign in (1.0, -1.0)
        )
        slope = np.abs(ew_up - ew_down) / (2 * step)
        trained = np.isfinite(ln_a_sigma)
        ew_sigma = np.where(trained, slope * ln_a_sigma, ew_sigma)
        table["ln_amplitude_uncertainty"] = ln_a_sigma
        table["amplitude_uncertainty"] = amplitude * ln_a_sigma * u.AA
    table["equivalent_width_uncertainty"] = ew_sigma * u.AA
    velocity = getattr(forest_or_result, "line_velocity", None)
    velocity_sigma = getattr(forest_or_result, "line_velocity_uncertainty", None)
    if velocity is not None and len(velocity) == n_lines:
        # each line's own velocity and error (line-by-line template matching, §8.1)
        table["velocity"] = np.asarray(velocity, dtype=np.float64) * _KMS
        table["velocity_uncertainty"] = np.asarray(velocity_sigma, dtype=np.float64) * _KMS
    if initial_values is not None and all(
        k in initial_values for k in ("amplitude", "sigma", "gamma")
    ):
        table["equivalent_width_init"] = (
            equivalent_widths(
                initial_values["amplitude"],
                initial_values["sigma"],
                initial_values["gamma"],
                mode=forest.mode,
                profile=forest.profile,
                emission=np.asarray(table["emission"]),
            )
            * u.AA
        )
    depth = np.asarray(table["depth"], dtype=np.float64)
    table["saturated"] = depth > SATURATION_DEPTH
    table["blended"] = _blended(table["center"].to_value(u.AA), fwhm)
    if in_data is not None:
        # lines of the clone the data never covered keep their cloned values
        table["in_data"] = in_data
    added_meta = (getattr(forest_or_result, "meta", None) or {}).get("added_lines")
    if source == "fit" and added_meta:
        # lines from the user's list (fit(add_lines=...)), with their labels
        added = np.zeros(n_lines, dtype=bool)
        index = np.asarray(added_meta["index"], dtype=np.int64)
        added[index] = True
        table["added"] = added
        for name in ("label", "species"):
            values = added_meta.get(name)
            if values is not None:
                column = np.full(n_lines, "", dtype=object)
                column[index] = [str(v) for v in values]
                table[name] = column.astype(str)

    descriptions = {
        "center": "line centre (vacuum, rest frame)",
        "amplitude": "area of a·V (the line's strength)",
        "sigma": "Gaussian standard deviation",
        "gamma": "Lorentzian half width at half maximum",
        "fwhm": "pseudo-Voigt FWHM (Thompson-Cox-Hastings)",
        "depth": "single-line depth at the centre (negative: emission)",
        "equivalent_width": "equivalent width of the line alone, positive for absorption",
        "equivalent_width_uncertainty": (
            "from the fit's Fisher matrix where the amplitude trained (ln_amplitude_uncertainty"
            " finite), else Cayrel (1988) 1.5 sqrt(FWHM_obs dλ)/SNR; NaN without data"
        ),
        "ln_amplitude_uncertainty": (
            "1σ of ln a, Fisher matrix with the globals and continua marginalised, scaled by "
            "sqrt(chi2_red); NaN where the L1 prior held the line at the clone's value"
        ),
        "saturated": f"depth > {SATURATION_DEPTH}",
        "blended": "another line closer than this line's FWHM",
        "in_data": "the line's observed centre lies inside the fitted data (else unconstrained)",
        "added": "a line from the fit's add_lines list, not the clone's",
        "label": "the add_lines label (empty for the clone's lines)",
        "species": "the add_lines species (empty for the clone's lines)",
    }
    for name, text in descriptions.items():
        if name in table.colnames:
            table[name].info.description = text
    order = [
        "center",
        "amplitude",
        "sigma",
        "gamma",
        "fwhm",
        "lorentz_fraction",
        "depth",
        "equivalent_width",
        "equivalent_width_uncertainty",
        "emission",
        "saturated",
        "blended",
    ]
    order += ["in_data"] if "in_data" in table.colnames else []
    order += [c for c in ("added", "label", "species") if c in table.colnames]
    table = table[order + [c for c in table.colnames if c not in order]]
    table.meta.update(
        {
            "blase_specutils_version": __version__,
            "date": _utc_now(),
            "source": source,
            "n_lines": int(n_lines),
            "equivalent_width_method": (
                "analytic a (area-normalised profile)"
                if forest.mode == "linear"
                else "a - integral(exp(-aV) - 1 + aV), sinh grid of +-400 FWHM"
            ),
            "equivalent_width_uncertainty_method": (
                "Cayrel (1988): 1.5 sqrt(FWHM_obs * pixel) / SNR"
            ),
        }
    )
    table.meta.update(fit_meta)
    return table


def _blended(center: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    """True where another line lies closer than this line's FWHM."""
    n = center.size
    if n < 2:
        return np.zeros(n, dtype=bool)
    order = np.argsort(center, kind="stable")
    c = center[order]
    gap = np.diff(c)
    nearest = np.minimum(np.concatenate([[np.inf], gap]), np.concatenate([gap, [np.inf]]))
    flags = np.empty(n, dtype=bool)
    flags[order] = nearest < fwhm[order]
    return flags


def write_line_table(table: Table, path, *, overwrite: bool = False) -> Path:
    """Write a line table as ECSV (units, dtypes and ``meta`` preserved exactly).

    Parameters
    ----------
    table : astropy.table.Table or QTable
        For example from :func:`line_table`.
    path : path-like
        Output file, conventionally ``*.ecsv``.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    if not isinstance(table, Table):
        raise TypeError(
            f"write_line_table expects an astropy Table or QTable, not {type(table).__name__}"
        )
    path = check_output_file(path, "line table", overwrite=overwrite)
    out = table.copy(copy_data=False)
    out.meta = _plain(dict(table.meta))
    out.write(path, format="ascii.ecsv", overwrite=overwrite)
    return path


def read_line_table(path) -> QTable:
    """Read an ECSV line table written by :func:`write_line_table` or ``CloneResult.save``.

    Parameters
    ----------
    path : path-like
        The ECSV file.

    Returns
    -------
    astropy.table.QTable
    """
    path = check_input_file(path, "line table")
    try:
        return QTable.read(path, format="ascii.ecsv")
    except Exception as err:  # noqa: BLE001 - astropy raises many kinds here
        raise ValueError(f"{path} is not an ECSV table: {err}") from err


# ---------------------------------------------------------------------------
# Spectra
# ---------------------------------------------------------------------------
def _default_grid(forest: LineForest, step_kms: float = 0.3) -> np.ndarray:
    props = forest.line_properties()
    lo = float(np.min(props["center"] - 5 * props["fwhm"]))
    hi = float(np.max(props["center"] + 5 * props["fwhm"]))
    return np.exp(np.arange(math.log(lo), math.log(hi), step_kms / SPEED_OF_LIGHT_KMS))


def template_spectrum(
    clone_result: Any, wavelength: Any = None, *, absolute: bool = False
) -> Spectrum:
    """A clone (or a fit's transfer-learned template) as a `specutils.Spectrum`.

    Parameters
    ----------
    clone_result : CloneResult, FitResult
        The clone; for a fit, its ``template``.
    wavelength : Quantity or array_like, optional
        Where to evaluate (a spectral Quantity, or Å). Default: the clone's native
        grid (or, when the clone carries none, a 0.3 km/s log-uniform grid over its lines).
    absolute : bool
        Multiply by the stored continuum (in the cloned input's flux unit), instead of the
        flattened flux.

    Returns
    -------
    specutils.Spectrum
        Spectral axis in Å; flux dimensionless, or with ``absolute=True`` in the unit of
        the cloned input (``meta["flux_unit"]``); ``meta`` with the clone's settings.

    Raises
    ------
    ValueError
        With ``absolute=True`` when the clone has no continuum or the grid leaves it.
    """
    clone_result = clone_result.template if _is_fit(clone_result) else clone_result
    if not isinstance(clone_result, CloneResult):
        raise TypeError(
            "template_spectrum expects a CloneResult or a fit result, "
            f"not {type(clone_result).__name__}"
        )
    native = np.asarray(clone_result.wavelength, dtype=np.float64)
    if wavelength is None:
        grid = native if native.size >= 3 else _default_grid(clone_result.forest)
    elif isinstance(wavelength, u.Quantity):
        grid = np.asarray(wavelength.to_value(u.AA, equivalencies=u.spectral()), dtype=np.float64)
        if grid.size > 1 and grid[0] > grid[-1]:
            grid = grid[::-1].copy()
    else:
        grid = np.asarray(wavelength, dtype=np.float64)
    flux = clone_result.evaluate(grid)
    if absolute:
        continuum = np.asarray(clone_result.continuum, dtype=np.float64)
        if continuum.size != native.size or native.size < 2:
            raise ValueError(
                "absolute=True needs the clone's continuum, which this clone does not carry"
            )
        if wavelength is None and grid is native:
            flux = flux * continuum
        else:
            if grid[0] < native[0] or grid[-1] > native[-1]:
                raise ValueError(
                    f"absolute=True: the grid spans {grid[0]:.3f}–{grid[-1]:.3f} Å but the "
                    "continuum is "
                    f"known only over {native[0]:.3f}–{native[-1]:.3f} Å"
                )
            flux = flux * np.interp(grid, native, continuum)
    meta = _plain({k: v for k, v in clone_result.meta.items() if not k.startswith("history_")})
    meta.update(
        {
            "n_lines": int(clone_result.n_lines),
            "mode": clone_result.forest.mode,
            "profile": clone_result.forest.profile,
            "absolute": bool(absolute),
        }
    )
    unit = _flux_unit(clone_result) if absolute else u.dimensionless_unscaled
    return arrays_to_spectrum(grid, flux, meta=meta, flux_unit=unit)


def _spectrum_or_list(spectra: list[Spectrum]) -> Spectrum | SpectrumList:
    return spectra[0] if len(spectra) == 1 else SpectrumList(spectra)


def fit_spectra(fit_result: Any) -> dict[str, Spectrum | SpectrumList]:
    """A fit's data, model, residual and telluric spectra.

    Parameters
    ----------
    fit_result : FitResult
        The fit.

    Returns
    -------
    dict
        ``data`` (flux, 1-σ uncertainty), ``model``, ``residual`` (data − model, with
        the data's uncertainty), ``continuum``, ``telluric`` (transmission seen by the
        instrument, 1 without a telluric clone) and ``telluric_corrected`` (data ÷
        (telluric × continuum), uncertainty scaled alike): each a `specutils.Spectrum`
        (one order) or `specutils.SpectrumList` (several), spectral axis in Å (vacuum)
        and ``mask`` True at pixels the fit did not use.
    """
    orders = _orders_of(fit_result)
    unit = _flux_unit(fit_result)
    out: dict[str, list[Spectrum]] = {
        k: [] for k in ("data", "model", "residual", "continuum", "telluric", "telluric_corrected")
    }
    for k, o in enumerate(orders):
        wl, good, sigma = o["wavelength"], o["good"], o["uncertainty"]
        meta = {"order_index": k}
        scale = o["telluric"] * o["continuum"]
        with np.errstate(divide="ignore", invalid="ignore"):
            corrected_sigma = np.where(good, sigma / np.abs(scale), np.nan)
        in_units = {"good": good, "meta": meta, "flux_unit": unit}
        out["data"].append(arrays_to_spectrum(wl, o["flux"], uncertainty=sigma, **in_units))
        out["model"].append(arrays_to_spectrum(wl, o["model"], **in_units))
        out["residual"].append(arrays_to_spectrum(wl, o["residual"], uncertainty=sigma, **in_units))
        out["continuum"].append(arrays_to_spectrum(wl, o["continuum"], **in_units))
        out["telluric"].append(arrays_to_spectrum(wl, o["telluric"], good=good, meta=meta))
        out["telluric_corrected"].append(
            arrays_to_spectrum(
                wl, o["telluric_corrected"], uncertainty=corrected_sigma, good=good, meta=meta
            )
        )
    return {k: _spectrum_or_list(v) for k, v in out.items()}


def _flux_unit(result: Any) -> u.UnitBase:
    """The unit the data of a fit (or the input of a clone) came in; dimensionless if none."""
    text = (getattr(result, "meta", None) or {}).get("flux_unit") or ""
    try:
        return u.Unit(text) if text else u.dimensionless_unscaled
    except ValueError:  # a unit string astropy cannot parse back: keep the numbers
        return u.dimensionless_unscaled


def fit_parameters(fit_result: Any) -> QTable:
    """Global parameters of a fit with units and 1-σ uncertainties, as a one-row QTable.

    Parameters
    ----------
    fit_result : FitResult
        The fit.

    Returns
    -------
    astropy.table.QTable
        Columns ``rv`` and ``vsini`` [km/s], ``resolving_power``, ``limb_darkening``,
        each with ``*_uncertainty`` (NaN when the parameter was held fixed),
        ``chi2_reduced``, ``initial_chi2_reduced``, ``n_good_pixels`` and, with a
        telluric clone, ``telluric_scale`` (by molecule: ``telluric_scale_<name>`` and
        ``telluric_scale_<name>_uncertainty`` per molecule). ``meta`` records the
        version and date.
    """
    if not _is_fit(fit_result):
        raise TypeError(f"fit_parameters expects a FitResult, not {type(fit_result).__name__}")
    if fit_result.stored is not None:
        return fit_result.stored.parameters.copy()
    unc = dict(fit_result.uncertainties)
    kms = u.km / u.s
    table = QTable()
    table["rv"] = [_number(fit_result.rv, _KMS)] * kms
    table["rv_uncertainty"] = [float(unc.get("rv", np.nan))] * kms
    table["vsini"] = [_number(fit_result.vsini, _KMS)] * kms
    table["vsini_uncertainty"] = [float(unc.get("vsini", np.nan))] * kms
    table["resolving_power"] = [_number(fit_result.resolving_power, u.one)]
    table["resolving_power_uncertainty"] = [float(unc.get("resolving_power", np.nan))]
    table["limb_darkening"] = [_number(fit_result.limb_darkening, u.one)]
    table["limb_darkening_uncertainty"] = [float(unc.get("limb_darkening", np.nan))]
    table["chi2_reduced"] = [float(fit_result.chi2_reduced)]
    table["initial_chi2_reduced"] = [float(getattr(fit_result, "initial_chi2_reduced", np.nan))]
    meta = getattr(fit_result, "meta", {}) or {}
    table["n_good_pixels"] = [int(meta.get("n_good_pixels", 0))]
    model = fit_result.forward_model
    if isinstance(fit_result.telluric, ComponentForest):
        # a telluric model by molecule: one scale (and its error) per molecule
        for name, entry in (meta.get("telluric_scales") or {}).items():
            table[f"telluric_scale_{name}"] = [float(entry["value"])]
            table[f"telluric_scale_{name}_uncertainty"] = [float(entry["uncertainty"])]
    elif fit_result.telluric is not None and hasattr(model, "ln_telluric_scale"):
        table["telluric_scale"] = [float(torch.exp(model.ln_telluric_scale.detach()).double())]
    table.meta.update(
        {
            "blase_specutils_version": __version__,
            "date": _utc_now(),
            "fit_meta": _plain(dict(getattr(fit_result, "meta", {}) or {})),
        }
    )
    return table


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------
def _axes_pair(ax: Any, figsize=(10, 6)):
    """(figure, top axes, bottom axes or None) from None, one Axes or a pair."""
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        return fig, top, bottom
    if isinstance(ax, (list, tuple, np.ndarray)):
        axes = list(np.ravel(ax))
        if len(axes) != 2:
            raise ValueError(f"ax must be one Axes or a pair (top, bottom), got {len(axes)} axes")
        return axes[0].figure, axes[0], axes[1]
    if hasattr(ax, "plot") and hasattr(ax, "figure"):
        return ax.figure, ax, None
    raise TypeError(f"ax must be a matplotlib Axes or a pair of them, not {type(ax).__name__}")


_WAVELENGTH_LABEL = "Vacuum wavelength [Å]"


def plot_fit(fit_result: Any, *, region: Any = None, ax: Any = None, order: int | None = None):
    """Data and model (and telluric transmission) above, normalised residuals below.

    Parameters
    ----------
    fit_result : FitResult
        The fit.
    region : SpectralRegion or (lo, hi) Quantity or (lo, hi) floats in Å, optional
        Wavelength range to show (its outer bounds for a multi-part region).
    ax : matplotlib Axes or (Axes, Axes), optional
        A pair draws both panels there; one Axes draws only the data/model panel.
        Default: a new two-panel figure.
    order : int, optional
        Index of the order to show (default: every order).

    Returns
    -------
    matplotlib.figure.Figure
    """
    orders = _orders_of(fit_result)
    if order is not None:
        if not (isinstance(order, (int, np.integer)) and -len(orders) <= order < len(orders)):
            raise ValueError(f"order must be an index in [0, {len(orders)}), got {order!r}")
        orders = [orders[order]]
    bounds = _region_bounds(region)
    fig, top, bottom = _axes_pair(ax)
    show_telluric = _has_telluric(fit_result)
    drawn = 0
    for k, o in enumerate(orders):
        wl = o["wavelength"]
        sel = np.ones(wl.size, bool) if bounds is None else (wl >= bounds[0]) & (wl <= bounds[1])
        if sel.sum() < 2:
            continue
        good = o["good"][sel]
        # Only good pixels are drawn, the model too: outside them (masked, cropped, beyond
        # the clone) the continuum polynomial is an extrapolation that can run to ±10⁶.
        data = np.where(good, o["flux"][sel], np.nan)
        model = np.where(good, o["model"][sel], np.nan)
        first = drawn == 0
        top.plot(wl[sel], model, color="C1", lw=1.2, alpha=0.85, zorder=2,
                 label="model" if first else None)  # fmt: skip
        # the data on top of the model, thinner, so that both stay visible
        top.plot(wl[sel], data, color="k", lw=0.6, zorder=3, label="data" if first else None)
        if show_telluric:
            top.plot(
                wl[sel],
                np.where(good, o["telluric"][sel] * o["continuum"][sel], np.nan),
                color="C0",
                lw=0.7,
                alpha=0.7,
                zorder=1,
                label="telluric × continuum" if first else None,
            )
        if bottom is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                normalised = np.where(good, o["residual"][sel] / o["uncertainty"][sel], np.nan)
            bottom.plot(wl[sel], normalised, color="k", lw=0.6)
        drawn += 1
    if drawn == 0:
        raise ValueError(
            "nothing to plot: the region does not overlap the data" if bounds else "no data to plot"
        )
    if bounds is not None:
        top.set_xlim(*bounds)
    unit = _flux_unit(fit_result)
    top.set_ylabel(
        "Normalised flux" if unit == u.dimensionless_unscaled else f"Flux [{unit:latex_inline}]"
    )
    top.legend(loc="lower left", fontsize="small")
    unc = dict(fit_result.uncertainties)
    name = (getattr(fit_result, "meta", None) or {}).get("object")
    top.set_title(
        (f"{name}: " if name else "")
        + f"RV = {_number(fit_result.rv, _KMS):.3f} ± {unc.get('rv', np.nan):.3f} km/s, "
        f"v sin i = {_number(fit_result.vsini, _KMS):.2f} ± {unc.get('vsini', np.nan):.2f} km/s, "
        f"R = {_number(fit_result.resolving_power):.0f}, χ²_red = {fit_result.chi2_reduced:.2f}",
        fontsize="medium",
    )
    if bottom is not None:
        bottom.axhline(0.0, color="C1", lw=0.8)
        bottom.set_ylabel("(data − model)/σ")
        bottom.set_xlabel(_WAVELENGTH_LABEL)
    else:
        top.set_xlabel(_WAVELENGTH_LABEL)
    return fig


def plot_clone(clone_result: Any, region: Any = None, *, ax: Any = None):
    """Flattened template and its clone above, their difference below.

    Parameters
    ----------
    clone_result : CloneResult (or a fit's result, for its template)
        The clone; it must carry its target spectrum.
    region : SpectralRegion or (lo, hi) Quantity or (lo, hi) floats in Å, optional
        Wavelength range to show.
    ax : matplotlib Axes or (Axes, Axes), optional
        As in :func:`plot_fit`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    clone_result = clone_result.template if _is_fit(clone_result) else clone_result
    if not isinstance(clone_result, CloneResult):
        raise TypeError(f"plot_clone expects a CloneResult, not {type(clone_result).__name__}")
    wl = np.asarray(clone_result.wavelength, dtype=np.float64)
    target = np.asarray(clone_result.target_flux, dtype=np.float64)
    if wl.size < 2 or target.size != wl.size or not np.any(np.isfinite(target)):
        raise ValueError(
            "this clone carries no target spectrum to compare with (saved without it?)"
        )
    bounds = _region_bounds(region)
    sel = np.ones(wl.size, bool) if bounds is None else (wl >= bounds[0]) & (wl <= bounds[1])
    if sel.sum() < 2:
        raise ValueError("nothing to plot: the region does not overlap the clone")
    model = clone_result.model_flux
    fig, top, bottom = _axes_pair(ax)
    top.plot(wl[sel], target[sel], color="k", lw=0.8, label="template (flattened)")
    top.plot(wl[sel], model[sel], color="C1", lw=0.8, label=f"clone ({clone_result.n_lines} lines)")
    top.set_ylabel("Normalised flux")
    top.legend(loc="lower left", fontsize="small")
    residual = (target - model)[sel]
    top.set_title(
        f"clone residual RMS = {np.sqrt(np.mean(residual**2)):.4f} (continuum units)",
        fontsize="medium",
    )
    if bounds is not None:
        top.set_xlim(*bounds)
    if bottom is not None:
        bottom.plot(wl[sel], residual, color="k", lw=0.6)
        bottom.axhline(0.0, color="C1", lw=0.8)
        bottom.set_ylabel("template − clone")
        bottom.set_xlabel(_WAVELENGTH_LABEL)
    else:
        top.set_xlabel(_WAVELENGTH_LABEL)
    return fig



# ---------------------------------------------------------------------------
# The clone container (beside the functions its views call)
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
        return line_table(self)

    @property
    def spectrum(self):
        """The clone at native resolution as a :class:`specutils.Spectrum` (flattened flux)."""
        return template_spectrum(self)

    def to_spectrum(self, wavelength=None, *, absolute: bool = False):
        """The clone as a :class:`specutils.Spectrum` on ``wavelength`` (default: native grid);
        ``absolute=True`` multiplies by the stored continuum."""
        return template_spectrum(self, wavelength, absolute=absolute)

    def plot(self, region=None, **kwargs):
        """Target, clone and residual (a matplotlib Figure)."""
        return plot_clone(self, region, **kwargs)

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

        ``velocity_kms`` is km/s, or a velocity Quantity (converted).

        The grid may be a frequency or wavenumber Quantity in either order; the flux comes
        back in the order of the grid given. A single wavelength gives a float.
        """
        scalar = np.ndim(wavelength) == 0
        wl, reversed_axis = ascending_angstrom(np.atleast_1d(wavelength), "wavelength")
        velocity_kms = check_numbers(
            {"velocity_kms": velocity_kms},
            {"velocity_kms": (u.km / u.s, None, False, None, False, False)},
        )["velocity_kms"]
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
        path = check_output_file(path, "clone line table", overwrite=True)
        spath = spectrum_path(path)
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
        digest = lines_digest(table)
        table.meta["lines_sha256"] = digest
        table.meta["n_lines_saved"] = len(table)
        pairs = [(path, table)]
        if include_spectrum:
            spec = QTable()
            spec["wavelength"] = np.asarray(self.wavelength, dtype=np.float64) * u.AA
            spec["target_flux"] = np.asarray(self.target_flux, dtype=np.float64)
            spec["continuum"] = np.asarray(self.continuum, dtype=np.float64)
            spec.meta["format"] = CLONE_FORMAT + ".spectrum"
            spec.meta["lines_sha256"] = digest
            table.meta["spectrum"] = spectrum_summary(spec)
            pairs.insert(0, (spath, spec))
        else:
            table.meta["spectrum"] = None  # lines only: a spectrum file beside is not ours
        write_atomically(pairs)
        return path



# ---------------------------------------------------------------------------
# ASDF files
# ---------------------------------------------------------------------------
_ORDER_KEYS = (
    "wavelength",
    "flux",
    "uncertainty",
    "good",
    "model",
    "continuum",
    "telluric",
    "telluric_corrected",
    "residual",
)


def _fit_digest(scalars: Any, meta: Any) -> str:
    """SHA-256 of a fit file's YAML-level numbers (its arrays carry ASDF block checksums)."""
    import hashlib
    import json

    text = json.dumps(
        {"scalars": _plain(scalars), "meta": _plain(meta)}, sort_keys=True, default=repr
    )
    return hashlib.sha256(text.encode()).hexdigest()


def write_fit(fit_result: Any, path, *, overwrite: bool = False) -> Path:
    """Write a fit to one ASDF file (no pickles; read back with :func:`read_fit`).

    The file holds the parameters (QTable with units), the line table (QTable, with
    equivalent widths), each order's data/model/residual/continuum/telluric arrays,
    the transfer-learned template's clone table (raw parameters: the forest rebuilds
    bit-exactly) and its native spectrum, the loss history and the fit's settings.

    Parameters
    ----------
    fit_result : FitResult
        The fit.
    path : path-like
        Output file, conventionally ``*.asdf``.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The path written (atomically: a temporary file renamed into place).
    """
    import asdf

    if not _is_fit(fit_result):
        raise TypeError(f"write_fit expects a FitResult, not {type(fit_result).__name__}")
    path = check_output_file(path, "fit file", overwrite=overwrite)
    stored = fit_result.stored
    if stored is not None:
        parameters = stored.parameters.copy()
        lines = stored.line_table.copy()
        template_lines = stored.template_lines.copy()
        template_arrays = dict(stored.template_arrays)
        history = list(fit_result.history.loss)
        meta = dict(fit_result.meta)
        telluric_lines = None if stored.telluric_lines is None else stored.telluric_lines.copy()
    else:
        parameters = fit_parameters(fit_result)
        lines = line_table(fit_result)
        template = fit_result.template
        template_lines = forest_to_table(
            template.forest,
            initial=template.initial,
            meta=_plain({k: v for k, v in template.meta.items() if not k.startswith("history_")}),
        )
        template_arrays = {
            "wavelength": np.asarray(template.wavelength, dtype=np.float64),
            "target_flux": np.asarray(template.target_flux, dtype=np.float64),
            "continuum": np.asarray(template.continuum, dtype=np.float64),
        }
        history = [float(x) for x in fit_result.history.loss]
        meta = _plain(dict(fit_result.meta or {}))
        forest = getattr(fit_result.forward_model, "telluric", None)
        telluric_lines = None if forest is None else forest_to_table(forest)
    tell_settings = telluric_settings(fit_result)
    orders = [{k: np.ascontiguousarray(o[k]) for k in _ORDER_KEYS} for o in _orders_of(fit_result)]
    tree = {
        "blase_specutils": {
            "format": FIT_FILE_FORMAT,
            "format_version": FIT_FILE_FORMAT_VERSION,
            "version": __version__,
            "date": _utc_now(),
        },
        "scalars": {
            "rv": _number(fit_result.rv, _KMS),
            "vsini": _number(fit_result.vsini, _KMS),
            "resolving_power": _number(fit_result.resolving_power, u.one),
            "limb_darkening": _number(fit_result.limb_darkening, u.one),
            "chi2_reduced": float(fit_result.chi2_reduced),
            "initial_chi2_reduced": float(getattr(fit_result, "initial_chi2_reduced", np.nan)),
            "uncertainties": {str(k): float(v) for k, v in dict(fit_result.uncertainties).items()},
            "has_telluric": bool(_has_telluric(fit_result)),
            "flags": {str(k): str(v) for k, v in dict(fit_result.flags or {}).items()},
        },
        "parameters": parameters,
        "line_table": lines,
        "orders": orders,
        "template_lines": template_lines,
        "template_spectrum": template_arrays,
        "history_loss": np.asarray(history, dtype=np.float64),
        "meta": meta,
    }
    if telluric_lines is not None and tell_settings is not None:
        # the trained telluric clone (raw parameters: bit-exact) and how it is observed,
        # for correct_tellurics on a loaded fit; the settings sit in the checksummed scalars
        tree["telluric_lines"] = telluric_lines
        tree["scalars"]["telluric_model"] = tell_settings
    # the arrays are ASDF blocks with their own checksums; this covers the numbers in YAML
    tree["blase_specutils"]["content_sha256"] = _fit_digest(tree["scalars"], meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        asdf.AsdfFile(tree).write_to(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_fit(path) -> FitResult:
    """Read a fit written by :func:`write_fit`. Never executes code (ASDF, no pickles).

    Parameters
    ----------
    path : path-like
        The ``.asdf`` file.

    Returns
    -------
    FitResult
        With the stored arrays, tables and flags (``forward_model`` None, ``path`` set).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not ASDF, or not a blase_specutils fit file.
    """
    import asdf

    path = check_input_file(path, "fit file")
    try:
        handle = asdf.open(path, lazy_load=False, memmap=False, validate_checksums=True)
    except Exception as err:  # noqa: BLE001 - asdf raises ValueError and others
        with open(path, "rb") as head:
            is_asdf = head.read(5) == b"#ASDF"
        if "checksum" in str(err).lower():
            raise ValueError(
                f"{path} is damaged: a data block does not match its checksum ({err}); "
                "the file was altered or corrupted after it was written"
            ) from err
        if is_asdf:
            raise ValueError(
                f"{path} is damaged: it starts as an ASDF file but cannot be read "
                f"({type(err).__name__}: {err}); was it truncated or corrupted?"
            ) from err
        raise ValueError(
            f"{path} is not an ASDF file written by blase_specutils.write_fit ({err})"
        ) from err
    with handle as af:
        header = af.tree.get("blase_specutils")
        if not isinstance(header, Mapping) or header.get("format") != FIT_FILE_FORMAT:
            raise ValueError(
                f"{path} is an ASDF file but not a blase_specutils fit "
                f"(no '{FIT_FILE_FORMAT}' header)"
            )
        if int(header.get("format_version", 0)) > FIT_FILE_FORMAT_VERSION:
            raise ValueError(
                f"{path} has fit-file format version {header.get('format_version')}, "
                "newer than this "
                f"blase_specutils ({__version__}) reads ({FIT_FILE_FORMAT_VERSION})"
            )
        digest = header.get("content_sha256")
        expected = _fit_digest(af.tree.get("scalars"), af.tree.get("meta"))
        if digest is not None and digest != expected:
            raise ValueError(
                f"{path} is damaged: its results and settings do not match the checksum "
                "written with them (the file was altered or corrupted after it was written)"
            )
        try:
            scalars = dict(af["scalars"])
            orders = [{k: np.array(o[k]) for k in _ORDER_KEYS} for o in af["orders"]]
            stored = StoredFit(
                orders=orders,
                parameters=QTable(af["parameters"], copy=True),
                line_table=QTable(af["line_table"], copy=True),
                template_lines=QTable(af["template_lines"], copy=True),
                template_arrays={k: np.array(v) for k, v in dict(af["template_spectrum"]).items()},
                has_telluric=bool(scalars["has_telluric"]),
                telluric_lines=(
                    QTable(af["telluric_lines"], copy=True) if "telluric_lines" in af.tree else None
                ),
                telluric_settings=(
                    _plain(dict(scalars["telluric_model"])) if "telluric_model" in scalars else None
                ),
            )
            history = TrainingHistory(loss=[float(x) for x in np.asarray(af["history_loss"])])
            meta = dict(af["meta"])
            flags = {str(k): str(v) for k, v in dict(scalars.get("flags") or {}).items()}
            uncertainties = {str(k): float(v) for k, v in dict(scalars["uncertainties"]).items()}
            numbers = {
                name: float(scalars[name])
                for name in (
                    "rv", "vsini", "resolving_power", "limb_darkening", "chi2_reduced",
                    "initial_chi2_reduced",
                )
            }
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"{path} is a damaged blase_specutils fit file (missing {err})"
            ) from err
    try:
        template = _stored_template(stored)
        telluric = (
            None if stored.telluric_lines is None else forest_from_table(stored.telluric_lines)
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is a damaged blase_specutils fit file ({err})") from err
    lines = stored.line_table
    return FitResult(
        **numbers,
        uncertainties=uncertainties,
        forward_model=None,
        template=template,
        history=history,
        telluric=telluric,
        meta=meta,
        flags=flags,
        line_ln_amplitude_uncertainty=_optional_column(lines, "ln_amplitude_uncertainty"),
        line_velocity=_optional_column(lines, "velocity"),
        line_velocity_uncertainty=_optional_column(lines, "velocity_uncertainty"),
        path=path,
        stored=stored,
    )


def _optional_column(table: QTable, name: str) -> np.ndarray | None:
    """A column's plain float64 values (in its stored unit), or None when absent."""
    if name not in table.colnames:
        return None
    column = table[name]
    return np.asarray(getattr(column, "value", column), dtype=np.float64)


def _stored_template(stored: StoredFit) -> CloneResult:
    """The transfer-learned template rebuilt bit-exactly from the table a fit file holds."""
    table = stored.template_lines
    initial = None
    if "amplitude_init" in table.colnames:
        initial = {
            name[:-5]: np.asarray(getattr(table[name], "value", table[name]))
            for name in table.colnames
            if name.endswith("_init")
        }
    arrays = stored.template_arrays
    return CloneResult(
        forest_from_table(table),
        arrays["wavelength"].copy(),
        arrays["target_flux"].copy(),
        arrays["continuum"].copy(),
        TrainingHistory(),
        initial,
        dict(table.meta),
    )


@dataclass(frozen=True)
class StoredFit:
    """What a fit file holds beyond the numbers: per-order arrays and tables.

    A :class:`FitResult` read by :func:`read_fit` carries one; its array properties,
    :attr:`~FitResult.parameters`, :attr:`~FitResult.line_table` and
    :func:`telluric_settings` read from it instead of a forward model.
    """

    #: Per order: ``wavelength``, ``flux``, ``uncertainty``, ``good``, ``model``,
    #: ``continuum``, ``telluric``, ``telluric_corrected``, ``residual``.
    orders: list
    parameters: QTable
    line_table: QTable
    template_lines: QTable
    template_arrays: dict
    has_telluric: bool
    telluric_lines: QTable | None = None
    telluric_settings: dict | None = None


@dataclass
class FitResult:
    """Result of :func:`~blase_specutils.fit`, fresh from a fit or read back from its file.

    One class for both: :func:`read_fit` returns a ``FitResult`` whose arrays, tables and
    flags were stored (``forward_model`` is then None and :attr:`path` names the file);
    everything else reads the same. ``LoadedFit`` is another name for this class, kept
    for scripts written before the two were merged.

    Attributes
    ----------
    rv, vsini : `~astropy.units.Quantity`
        Radial velocity and projected rotational velocity (km/s). Plain floats given to
        the constructor are taken as km/s; ``result.rv.to_value("km/s")`` gives a float.
    resolving_power, limb_darkening : `~astropy.units.Quantity`
        Instrumental resolving power and linear limb darkening (dimensionless, so they
        also work as plain numbers: ``float(result.resolving_power)``).
    rv_uncertainty, vsini_uncertainty, resolving_power_uncertainty : `~astropy.units.Quantity`
        Their 1-σ uncertainties, in the same units (NaN when held fixed or undefined).
    uncertainties : dict
        1-σ uncertainties of every global parameter as plain floats in the units of
        :attr:`parameters` (km/s for velocities; NaN if not fitted), from
        the curvature of χ² multiplied by the Birge ratio ``√max(1, χ²_red)``: a fit that
        leaves more scatter than the data's uncertainties allow (a template mismatch,
        underestimated noise) gets proportionally larger error bars instead of the
        photon-noise ones (WASP 69, χ²_red ≈ 40: ×6). The unscaled values are in
        ``meta["curvature_uncertainties"]``, the factor in ``meta["uncertainty_scale"]``.
    chi2_reduced : float
        χ² per degree of freedom at the end of the fit.
    forward_model : ForwardModel or None
        The trained torch forward model (None for a fit read from a file).
    template : CloneResult
        The transfer-learned stellar clone at native resolution (no RV, rotation or
        instrument), savable like any clone.
    telluric : LineForest or None
        The transfer-learned telluric clone (None without one, or for a file written
        before telluric clones were stored: :attr:`has_telluric` still says whether one
        was fitted); a :class:`~blase_specutils.core.components.ComponentForest` for a
        telluric model by molecule (``.component_forest("H2O")`` gives one molecule's).
        The fitted scales are :attr:`telluric_scales`.
    initial_chi2_reduced : float
        χ² per pixel after the RV search, before any training.
    flags : dict
        Code → reason for everything that says the result may be wrong (empty when
        :attr:`converged`); stored in the fit file.
    meta : dict
        How the fit ran: ``n_good_pixels``, ``prior_scale``, ``prior_weight``,
        ``trainable``, ``step_kms``, ``continuum_degree`` (the Chebyshev degree used,
        chosen or given: ``continuum_degree_source`` is ``"auto"`` or ``"given"``),
        ``resolving_power_source`` (``"given"``,
        ``"nominal for <instrument>"`` or ``"default"``), ``n_clipped`` (pixels masked by
        ``clip_sigma``), ``order_indices`` (input orders fitted, see ``outside``),
        ``uncertainty_scale`` and ``curvature_uncertainties`` (see ``uncertainties``),
        ``rest_frame_outside_fraction`` (good pixels outside the stellar clone's range in
        the star's rest frame at the final RV; above 5 % a warning says so).
    path : pathlib.Path or None
        The file a fit was read from (None for a fresh fit).
    """

    rv: float
    vsini: float
    resolving_power: float
    limb_darkening: float
    uncertainties: dict
    chi2_reduced: float
    forward_model: ForwardModel | None
    template: CloneResult
    order_data: list = field(repr=False, default_factory=list)
    history: TrainingHistory = field(repr=False, default_factory=TrainingHistory)
    telluric: LineForest | None = field(repr=False, default=None)
    initial_chi2_reduced: float = float("nan")
    meta: dict = field(default_factory=dict)
    stellar_clone: CloneResult | LineForest | None = field(repr=False, default=None)
    flags: dict = field(default_factory=dict)
    #: Per line of the template: σ of ln a from the Fisher matrix with the globals and the
    #: continua marginalised, Birge-scaled (NaN for lines the L1 prior held at the clone's).
    line_ln_amplitude_uncertainty: np.ndarray | None = field(repr=False, default=None)
    #: Per line of the template: its own velocity (km/s, the fit's RV plus the line's
    #: trained centre shift plus a line-by-line template-matching step) and its error
    #: (NaN for lines outside the data or shallower than 1 %).
    line_velocity: np.ndarray | None = field(repr=False, default=None)
    line_velocity_uncertainty: np.ndarray | None = field(repr=False, default=None)
    path: Path | None = field(repr=False, default=None)
    #: What a fit file stored (per-order arrays, tables, telluric settings); None for a
    #: fresh fit, whose arrays come from its forward model.
    stored: StoredFit | None = field(repr=False, default=None)

    def __post_init__(self) -> None:
        # Quantities at the astropy boundary; a Quantity given is converted, a float is
        # taken in the documented unit.
        self.rv = u.Quantity(self.rv, _KMS, dtype=float)
        self.vsini = u.Quantity(self.vsini, _KMS, dtype=float)
        self.resolving_power = u.Quantity(self.resolving_power, u.one, dtype=float)
        self.limb_darkening = u.Quantity(self.limb_darkening, u.one, dtype=float)
        if self.forward_model is None and self.stored is None:
            raise ValueError(
                "a FitResult needs its forward model (a fresh fit) or its stored arrays "
                "(read_fit)"
            )

    @property
    def has_telluric(self) -> bool:
        """Whether a telluric clone was fitted."""
        if self.stored is not None:
            return self.stored.has_telluric
        return self.telluric is not None

    @property
    def n_orders(self) -> int:
        """Number of fitted orders."""
        return len(self.stored.orders) if self.stored is not None else len(self.order_data)

    @property
    def line_by_line_rv(self) -> u.Quantity:
        """The line-by-line RV: the robust weighted mean of the lines' own velocities
        (``line_table["velocity"]``), km/s; its error, the number of lines kept and
        rejected and their χ²_red are in ``meta["line_by_line_rv"]``."""
        return u.Quantity((self.meta.get("line_by_line_rv") or {}).get("rv", np.nan), _KMS)

    @property
    def line_by_line_rv_uncertainty(self) -> u.Quantity:
        """1-σ error of :attr:`line_by_line_rv`, km/s (χ²-scaled)."""
        info = self.meta.get("line_by_line_rv") or {}
        return u.Quantity(info.get("rv_uncertainty", np.nan), _KMS)

    @property
    def converged(self) -> bool:
        """True when nothing in :attr:`flags` says the result may be wrong."""
        return not self.flags

    @property
    def orders(self) -> QTable:
        """One row per fitted order (QTable): its RV and v sin i (one Gauss–Newton step
        from the joint solution with the lines and the other orders held), their
        uncertainties (scaled by the order's own √χ²_red), χ²_red and good pixels."""
        columns = self.meta.get("orders") or {}
        table = QTable()
        units = {
            "wavelength_min": u.AA,
            "wavelength_max": u.AA,
            "rv": _KMS,
            "rv_uncertainty": _KMS,
            "vsini": _KMS,
            "vsini_uncertainty": _KMS,
        }
        for name, values in columns.items():
            unit = units.get(name)
            table[name] = values if unit is None else np.asarray(values, dtype=float) * unit
        return table

    def __repr__(self) -> str:
        # The forward model and template hold thousands of lines: summarise them.
        def with_error(name: str, value: u.Quantity, digits: int) -> str:
            error = self.uncertainties.get(name, float("nan"))
            value = float(value.value)
            if error is None or not np.isfinite(error):
                return f"{value:.{digits}f}"
            return f"{value:.{digits}f} ± {error:.{digits}f}"

        degree = self.meta.get("continuum_degree", "?")
        auto = " (auto)" if self.meta.get("continuum_degree_source") == "auto" else ""
        where = "" if self.path is None else f", path={str(self.path)!r}"
        return (
            f"FitResult(rv={with_error('rv', self.rv, 4)} km/s, "
            f"vsini={with_error('vsini', self.vsini, 3)} km/s, "
            f"resolving_power={with_error('resolving_power', self.resolving_power, 0)}, "
            f"chi2_reduced={self.chi2_reduced:.3f} (initial {self.initial_chi2_reduced:.3f}), "
            f"n_orders={self.n_orders}, n_lines={self.template.forest.n_lines}, "
            f"converged={self.converged}, continuum_degree={degree}{auto}, "
            f"telluric={'yes' if self.has_telluric else 'no'}{where})"
        )

    # -------------------------------------------------------- astropy face
    @property
    def spectrum(self) -> Spectrum:
        """The semi-empirical template at native resolution, a :class:`specutils.Spectrum`."""
        return template_spectrum(self.template)

    @property
    def spectra(self) -> dict:
        """Data, model, residual, continuum, telluric and telluric-corrected spectra."""
        return fit_spectra(self)

    @property
    def data(self):
        """The observed spectrum (a Spectrum, or SpectrumList for several orders)."""
        return self.spectra["data"]

    @property
    def model(self):
        """The forward model at the data pixels (Spectrum or SpectrumList)."""
        return self.spectra["model"]

    @property
    def residual_spectrum(self):
        """Data − model (Spectrum or SpectrumList)."""
        return self.spectra["residual"]

    @property
    def line_table(self) -> QTable:
        """Every line of the transfer-learned template with equivalent widths (QTable);
        ``*_init`` columns hold the input clone's values. A loaded fit returns the table
        stored with it."""
        if self.stored is not None:
            return self.stored.line_table.copy()
        return line_table(self, initial=self.stellar_clone)

    @property
    def parameters(self) -> QTable:
        """RV, v sin i, R, ε with units and uncertainties, and χ²_red (one-row QTable)."""
        return fit_parameters(self)

    def plot(self, **kwargs):
        """Data, model (and tellurics) with residuals below (a matplotlib Figure)."""
        return plot_fit(self, **kwargs)

    def write(self, path, *, overwrite: bool = False) -> Path:
        """Save everything to one ASDF file; read it back with :func:`read_fit`."""
        return write_fit(self, path, overwrite=overwrite)

    # ------------------------------------------------------------------ arrays
    def _per_order(self, values: np.ndarray):
        parts = np.split(values, np.cumsum([len(o.wavelength) for o in self.order_data])[:-1])
        return parts[0] if len(parts) == 1 else parts

    def _stored_per_order(self, key: str):
        values = [o[key].copy() for o in self.stored.orders]
        return values[0] if len(values) == 1 else values

    def _flux_scale(self) -> np.ndarray:
        """Per pixel: the order's flux level, to turn fitted units back into the data's."""
        return np.concatenate([np.full(len(o.wavelength), o.scale) for o in self.order_data])

    @property
    def telluric_scales(self) -> dict:
        """The fitted telluric optical-depth scale(s): ``{name: Quantity}`` (dimensionless),
        one per molecule of a telluric model by molecule (``fit(telluric={"H2O": ...,
        "O2": ...})``), ``{"telluric": s}`` for a single clone, empty without one. The
        transmission is ``∏_m T_m^{s_m}``; errors in :attr:`telluric_scale_uncertainties`."""
        return {name: u.Quantity(v, u.one) for name, (v, _) in self._telluric_scales().items()}

    @property
    def telluric_scale_uncertainties(self) -> dict:
        """1-σ errors of :attr:`telluric_scales` (``{name: Quantity}``): Gauss–Newton with
        the free globals and the continua marginalised, lines held, scaled by the Birge
        ratio like :attr:`uncertainties` (NaN when held fixed or undefined)."""
        return {name: u.Quantity(e, u.one) for name, (_, e) in self._telluric_scales().items()}

    def _telluric_scales(self) -> dict:
        entries = self.meta.get("telluric_scales")
        if entries:
            return {
                str(name): (float(e["value"]), float(e["uncertainty"]))
                for name, e in dict(entries).items()
            }
        if not self.has_telluric:
            return {}
        # a fit file written before the scales were kept in meta: its telluric settings
        settings = telluric_settings(self)
        if settings is None:
            return {}
        names = settings.get("components", ["telluric"])
        values = np.exp(np.atleast_1d(np.asarray(settings["ln_scale"], dtype=np.float64)))
        return {str(n): (float(v), float("nan")) for n, v in zip(names, values)}

    @property
    def rv_uncertainty(self) -> u.Quantity:
        """1-σ uncertainty of :attr:`rv` (km/s; NaN if held or undefined)."""
        return u.Quantity(self.uncertainties.get("rv", float("nan")), _KMS)

    @property
    def vsini_uncertainty(self) -> u.Quantity:
        """1-σ uncertainty of :attr:`vsini` (km/s; NaN if held or undefined)."""
        return u.Quantity(self.uncertainties.get("vsini", float("nan")), _KMS)

    @property
    def resolving_power_uncertainty(self) -> u.Quantity:
        """1-σ uncertainty of :attr:`resolving_power` (dimensionless)."""
        return u.Quantity(self.uncertainties.get("resolving_power", float("nan")), u.one)

    @property
    def wavelength(self):
        """Data wavelengths, Å (array, or list per order)."""
        if self.stored is not None:
            return self._stored_per_order("wavelength")
        return self._per_order(np.concatenate([o.wavelength for o in self.order_data]))

    @property
    def flux(self):
        """Observed flux (masked pixels hold 0), in the units given."""
        if self.stored is not None:
            return self._stored_per_order("flux")
        flux = np.concatenate([o.flux for o in self.order_data])
        return self._per_order(flux * self._flux_scale())

    @property
    def uncertainty(self):
        """1-σ uncertainty of the flux (given, or estimated from the scatter)."""
        if self.stored is not None:
            return self._stored_per_order("uncertainty")
        sigma = np.concatenate([o.sigma for o in self.order_data])
        return self._per_order(sigma * self._flux_scale())

    @property
    def good(self):
        """Pixels the fit used (bool array, or list per order)."""
        if self.stored is not None:
            return self._stored_per_order("good")
        return self._per_order(np.concatenate([o.good for o in self.order_data]))

    @property
    def model_flux(self):
        """Forward model at the data pixels (array, or list per order), in the data's units."""
        if self.stored is not None:
            return self._stored_per_order("model")
        with torch.no_grad():
            model = self.forward_model().double().cpu().numpy()
        return self._per_order(model * self._flux_scale())

    @property
    def continuum_flux(self):
        """Fitted per-order continuum at the data pixels, in the data's units."""
        if self.stored is not None:
            return self._stored_per_order("continuum")
        with torch.no_grad():
            continuum = self.forward_model.continuum().double().cpu().numpy()
        return self._per_order(continuum * self._flux_scale())

    @property
    def telluric_flux(self):
        """Telluric transmission seen by the instrument at the data pixels (1 if none)."""
        if self.stored is not None:
            return self._stored_per_order("telluric")
        with torch.no_grad():
            t = self.forward_model.telluric_fine()
            if t is None:
                n = sum(len(o.wavelength) for o in self.order_data)
                return self._per_order(np.ones(n))
            return self._per_order(
                self.forward_model.averager(self.forward_model.instrument(t)).double().cpu().numpy()
            )

    @property
    def telluric_corrected_flux(self):
        """Data divided by the observed telluric transmission and the continuum."""
        if self.stored is not None:
            return self._stored_per_order("telluric_corrected")
        flux = np.concatenate([o.flux for o in self.order_data]) * self._flux_scale()
        tell = self.telluric_flux
        tell = np.concatenate(tell) if isinstance(tell, list) else tell
        cont = self.continuum_flux
        cont = np.concatenate(cont) if isinstance(cont, list) else cont
        good = np.concatenate([o.good for o in self.order_data])
        out = np.where(good, flux / (tell * cont), np.nan)
        return self._per_order(out)

    @property
    def residual(self):
        """Data − model (NaN at masked pixels), in the data's units."""
        if self.stored is not None:
            return self._stored_per_order("residual")
        data = np.concatenate([o.flux for o in self.order_data])
        good = np.concatenate([o.good for o in self.order_data])
        with torch.no_grad():
            model = self.forward_model().double().cpu().numpy()
        return self._per_order(np.where(good, (data - model) * self._flux_scale(), np.nan))

    def residual_rms_over_noise(self) -> float:
        """RMS of (data − model)/σ over good pixels (≈ 1 at photon noise)."""
        orders = _orders_of(self)
        r = np.concatenate([o["residual"] for o in orders])
        s = np.concatenate([o["uncertainty"] for o in orders])
        g = np.concatenate([o["good"] for o in orders])
        return float(np.sqrt(np.mean((r[g] / s[g]) ** 2)))


#: The class :func:`read_fit` returned before fresh and loaded fits became one class.
LoadedFit = FitResult
