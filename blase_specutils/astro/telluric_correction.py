"""Telluric correction of a science spectrum with the clone learned on an A0V standard.

Fit a telluric standard (an A0V star: few, broad stellar lines) with
``blase_specutils.fit(standard, stellar=..., telluric=...)``: the telluric clone is
transfer-learned against the standard together with its optical-depth scale (and, when
fitted, a small velocity shift) and the instrument's resolving power. Then
:func:`correct_tellurics` observes that learned transmission on the science spectrum's
pixels exactly as the forward model does, ``T^(scale · airmass_ratio)`` on a
uniform-velocity fine grid → instrumental Gaussian → mean over each pixel, and divides it
out. A standard fitted with one telluric clone per molecule (a telluric model by
molecule) gives ``∏_m T_m^(s_m · airmass_ratio)``, each molecule at its own fitted scale.
"""

from __future__ import annotations

import math
from typing import Any

import astropy.units as u
import numpy as np
import torch
from astropy.nddata import StdDevUncertainty
from specutils import Spectrum, SpectrumList

from ..core.broadening import InstrumentalBroadening, log_uniform_grid
from ..core.components import ComponentForest
from ..core.forward import chebyshev_design
from ..core.lineforest import SPEED_OF_LIGHT_KMS, LineForest
from ..core.resample import PixelAverager, pixel_edges_from_centers
from .adapters import spectrum_to_arrays
from .results import read_fit, telluric_settings

__all__ = ["correct_tellurics", "observed_transmission"]

#: Range of the optical-depth factor a refit may take (relative to the standard's).
REFIT_FACTOR_RANGE = (0.02, 50.0)


def _telluric_of(telluric_fit: Any) -> tuple[LineForest, dict]:
    """The trained telluric forest of a fit (or fit file) and how it is observed."""
    if isinstance(telluric_fit, str) or hasattr(telluric_fit, "__fspath__"):
        telluric_fit = read_fit(telluric_fit)
    try:
        settings = telluric_settings(telluric_fit)
    except TypeError as err:
        raise TypeError(
            "telluric_fit must be a FitResult or the path of a fit file, "
            f"not {type(telluric_fit).__name__}"
        ) from err
    forest = telluric_fit.telluric if settings is not None else None
    if forest is None:
        if telluric_fit.stored is not None and telluric_fit.has_telluric:
            raise ValueError(
                "telluric_fit was read from a file that holds no trained telluric clone "
                "(written before telluric clones were saved); refit the standard and write "
                "it again"
            )
        raise ValueError(
            "telluric_fit has no telluric component: fit the standard with "
            "blase_specutils.fit(..., telluric=<telluric clone>)"
        )
    return forest, settings


class _Observer:
    """The learned telluric ln T on a fine grid around some pixels, and T observed there."""

    def __init__(self, forest: LineForest, settings: dict, wavelength: np.ndarray) -> None:
        step = float(settings["step_kms"])
        self.instrument = InstrumentalBroadening(
            settings["resolving_power"], step_kms=step, fit=False, dtype=forest.dtype
        )
        shift = float(settings["shift_kms"]) if settings["shift_applied"] else None
        pad_kms = (self.instrument.half_width + 8) * step + abs(shift or 0.0)
        edges = pixel_edges_from_centers(wavelength)
        lo = float(edges[0]) * math.exp(-pad_kms / SPEED_OF_LIGHT_KMS)
        hi = float(edges[-1]) * math.exp(pad_kms / SPEED_OF_LIGHT_KMS)
        anchor = settings.get("grid_anchor")
        if anchor is not None:
            # the fit's own fine-grid points (anchor · e^(k·step/c)): the clone is sampled
            # where it was trained, so the standard's pixels get the fit's model back
            k = math.floor(SPEED_OF_LIGHT_KMS * math.log(lo / float(anchor)) / step)
            lo = float(anchor) * math.exp(k * step / SPEED_OF_LIGHT_KMS)
        grid = log_uniform_grid(lo, hi, step, dtype=torch.float64)
        device = forest.center_ref.device
        layout = forest.make_layout(grid.to(device), tolerance=float(settings["tolerance"]))
        self.averager = PixelAverager(
            grid.numpy(), np.stack([edges[:-1], edges[1:]], axis=1), dtype=forest.dtype,
            device=device,
        )
        self.instrument.to(device)
        by_molecule = isinstance(forest, ComponentForest)
        with torch.no_grad():
            velocity = None
            if shift is not None:
                velocity = torch.tensor(shift, dtype=forest.dtype, device=device)
            if by_molecule:
                # one ln T_m per molecule, each raised to its own fitted scale
                self.log_t = torch.stack(forest.component_log_transmissions(layout, velocity))
            else:
                self.log_t = forest.log_transmission(layout, velocity)
        ln_scale = torch.tensor(settings["ln_scale"], dtype=torch.float64)
        if by_molecule and ln_scale.shape != (forest.n_components,):
            raise ValueError(
                f"the telluric settings hold {ln_scale.numel()} scale(s) for "
                f"{forest.n_components} molecules"
            )
        self.scale = torch.exp(ln_scale.to(dtype=forest.dtype, device=device))
        if by_molecule:
            self.scale = self.scale[:, None]

    @torch.no_grad()
    def __call__(self, factor: float = 1.0) -> np.ndarray:
        """Observed transmission with the optical depth(s) × ``factor``, float64 numpy."""
        exponent = self.scale if factor == 1.0 else self.scale * factor
        log_t = exponent * self.log_t
        if log_t.ndim == 2:  # by molecule: Σ_m s_m f ln T_m
            log_t = log_t.sum(0)
        fine = torch.exp(log_t)
        return self.averager(self.instrument(fine)).double().cpu().numpy()


def _check_coverage(wavelength: np.ndarray, good: np.ndarray, ranges: list, label: str) -> None:
    lo_hi = np.asarray(ranges, dtype=np.float64).reshape(-1, 2)
    used = wavelength[good] if good.any() else wavelength
    inside = np.zeros(used.shape, dtype=bool)
    for lo, hi in lo_hi:
        inside |= (used >= lo) & (used <= hi)
    if not inside.all():
        learned = ", ".join(f"{lo:.3f}–{hi:.3f}" for lo, hi in lo_hi)
        out = used[~inside]
        raise ValueError(
            f"{label} covers {used.min():.3f}–{used.max():.3f} Å (vacuum) but the telluric "
            f"model was learned only over {learned} Å: {out.size} pixel(s) between "
            f"{out.min():.3f} and {out.max():.3f} Å lie outside; crop the science spectrum "
            "or fit a standard that covers it"
        )


def _refit_factor(
    observe: _Observer, flux: np.ndarray, sigma: np.ndarray, good: np.ndarray,
    wavelength: np.ndarray, degree: int,
) -> float:
    """Optical-depth factor that best fits ``flux`` as polynomial × transmission."""
    from scipy.optimize import minimize_scalar

    if np.count_nonzero(good) <= degree + 2:
        raise ValueError(
            f"refit_scale needs more than {degree + 2} good pixels, got {np.count_nonzero(good)}"
        )
    x = 2.0 * (wavelength - wavelength.min()) / max(np.ptp(wavelength), 1e-12) - 1.0
    basis = chebyshev_design(torch.as_tensor(x, dtype=torch.float64), degree).numpy()
    w = 1.0 / sigma[good]
    y = flux[good] * w

    def chi2(ln_factor: float) -> float:
        t = observe(math.exp(ln_factor))[good]
        design = basis[good] * (t * w)[:, None]
        coeff, *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(np.sum((y - design @ coeff) ** 2))

    lo, hi = (math.log(v) for v in REFIT_FACTOR_RANGE)
    # coarse scan, then a bounded refinement around the best grid point
    grid = np.linspace(lo, hi, 41)
    values = [chi2(v) for v in grid]
    k = int(np.argmin(values))
    bounds = (grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)])
    best = minimize_scalar(chi2, bounds=bounds, method="bounded", options={"xatol": 1e-6})
    return math.exp(float(best.x))


def _correct_one(spectrum: Spectrum, forest, settings, factor, refit, degree, threshold, label):
    arrays = spectrum_to_arrays(spectrum)
    wavelength, good = arrays.wavelength, arrays.good
    _check_coverage(wavelength, good, settings["ranges"], label)
    observe = _Observer(forest, settings, wavelength)
    if refit:
        sigma = arrays.uncertainty if arrays.uncertainty is not None else np.ones_like(wavelength)
        factor = _refit_factor(observe, arrays.flux, sigma, good, wavelength, degree)
    transmission_sorted = observe(factor)
    # back to the input's pixel order (spectrum_to_arrays sorts by vacuum wavelength)
    axis = spectrum.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
    order = np.argsort(axis, kind="stable")
    transmission = np.empty_like(transmission_sorted)
    transmission[order] = transmission_sorted
    flux = spectrum.flux / transmission
    uncertainty = None
    if spectrum.uncertainty is not None:
        sigma = spectrum.uncertainty.represent_as(StdDevUncertainty).quantity
        uncertainty = StdDevUncertainty(sigma / transmission)
    low = transmission < threshold
    mask = low if spectrum.mask is None else (np.asarray(spectrum.mask, dtype=bool) | low)
    meta = dict(spectrum.meta)
    meta["telluric_transmission"] = transmission
    standard = _standard_scales(settings)
    meta["telluric_correction"] = {
        "scale": (
            {k: v * float(factor) for k, v in standard.items()}
            if isinstance(standard, dict)
            else standard * float(factor)
        ),
        "standard_scale": standard,
        "factor": float(factor),
        "refit_scale": bool(refit),
        "min_transmission": float(threshold),
        "n_masked_telluric": int(np.count_nonzero(low)),
    }
    return Spectrum(
        spectral_axis=spectrum.spectral_axis,
        flux=flux,
        uncertainty=uncertainty,
        mask=mask,
        meta=meta,
    )


def _standard_scales(settings: dict) -> float | dict:
    """The standard's fitted scale, or ``{molecule: scale}`` for a model by molecule."""
    if "components" in settings:
        return {
            str(name): float(math.exp(float(v)))
            for name, v in zip(settings["components"], settings["ln_scale"])
        }
    return float(math.exp(float(settings["ln_scale"])))


def correct_tellurics(
    science,
    telluric_fit,
    *,
    airmass_ratio: float | None = None,
    refit_scale: bool = False,
    min_transmission: float = 0.2,
    continuum_degree: int = 2,
):
    """Divide a science spectrum by the telluric transmission learned on a standard.

    The trained (transfer-learned) telluric clone of ``telluric_fit`` is observed on the
    science pixels as in the fit's forward model: ``T^(s · a)`` on a uniform-velocity
    fine grid (``T`` the clone's transmission, ``s`` its fitted optical-depth scale,
    ``a`` = ``airmass_ratio``, the fitted telluric shift applied when it was fitted),
    convolved with the fit's instrumental Gaussian (its resolving power) and averaged
    over each pixel. The result is ``flux / T`` with ``σ / T``.

    Parameters
    ----------
    science : specutils.Spectrum or specutils.SpectrumList
        The spectrum to correct (one order, or a list of orders), wavelengths in the
        observatory frame like the standard's (vacuum unless its WCS declares air).
    telluric_fit : FitResult or path-like
        A fit of a telluric standard with a telluric clone (``fit(..., telluric=...)``),
        or the file it was written to (:meth:`FitResult.write`).
    airmass_ratio : float, optional
        Science airmass ÷ standard airmass: the optical depth is multiplied by it
        (``T^(s · a)``). Default 1. With ``refit_scale`` it is the starting guess only
        and is ignored.
    refit_scale : bool
        Refit only the optical-depth scale against the science spectrum, line shapes,
        shift and resolving power held: each order as a Chebyshev polynomial
        (``continuum_degree``, profiled by weighted least squares) × ``T^(s · f)``,
        ``f`` in ``REFIT_FACTOR_RANGE`` minimising χ². For a science target whose own
        lines are few and weak compared with the tellurics (the polynomial stands for
        a star-free continuum).
    min_transmission : float
        Pixels where the observed transmission is below this (saturated tellurics, where
        the division amplifies noise and model error) are masked. In (0, 1).
    continuum_degree : int
        Degree of the per-order polynomial of ``refit_scale``.

    Returns
    -------
    specutils.Spectrum or specutils.SpectrumList
        Same type as ``science``: flux ÷ T, uncertainty σ ÷ T (a StdDevUncertainty; None
        when the input had none), ``mask`` = the input mask OR ``T < min_transmission``
        (True = bad). ``meta["telluric_transmission"]`` holds T per pixel (in the input's
        pixel order) and ``meta["telluric_correction"]`` the ``scale`` used (``s · f``,
        ``f`` the airmass ratio or the refitted factor), ``standard_scale`` (``s``; both
        ``{molecule: value}`` dicts for a telluric model by molecule, each molecule's
        optical depth multiplied by the same ``f``),
        ``factor``, ``refit_scale``, ``min_transmission`` and ``n_masked_telluric``.

    Raises
    ------
    TypeError
        If ``science`` is not a Spectrum or SpectrumList, or ``telluric_fit`` not a fit.
    ValueError
        If the fit has no telluric component, a science order reaches outside the
        wavelength range the telluric clone was learned on (the message names both
        ranges), ``airmass_ratio`` is not finite and > 0, or ``min_transmission`` is
        not in (0, 1).
    """
    if airmass_ratio is None:
        factor = 1.0
    else:
        try:
            factor = float(airmass_ratio)
        except (TypeError, ValueError) as err:
            raise TypeError(f"airmass_ratio must be a number, not {airmass_ratio!r}") from err
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"airmass_ratio must be finite and > 0, got {airmass_ratio}")
    threshold = float(min_transmission)
    if not (0.0 < threshold < 1.0):
        raise ValueError(f"min_transmission must be in (0, 1), got {min_transmission}")
    degree = int(continuum_degree)
    if degree < 0 or degree != continuum_degree:
        raise ValueError(f"continuum_degree must be an integer >= 0, got {continuum_degree}")
    if isinstance(science, SpectrumList):
        orders, single = list(science), False
    elif isinstance(science, Spectrum):
        orders, single = [science], True
    else:
        raise TypeError(
            f"science must be a specutils Spectrum or SpectrumList, not {type(science).__name__}"
        )
    if not orders:
        raise ValueError("science is an empty SpectrumList")
    forest, settings = _telluric_of(telluric_fit)
    corrected = []
    for k, spectrum in enumerate(orders):
        if not isinstance(spectrum, Spectrum):
            raise TypeError(f"science[{k}] is a {type(spectrum).__name__}, not a Spectrum")
        label = "the science spectrum" if single else f"science order {k}"
        corrected.append(
            _correct_one(spectrum, forest, settings, factor, refit_scale, degree, threshold, label)
        )
    return corrected[0] if single else SpectrumList(corrected)


def observed_transmission(telluric_fit, wavelength, *, airmass_ratio: float = 1.0) -> np.ndarray:
    """The learned telluric transmission observed at pixel centres ``wavelength``.

    Parameters
    ----------
    telluric_fit : FitResult or path-like
        As in :func:`correct_tellurics`.
    wavelength : astropy.units.Quantity or array_like
        Increasing vacuum pixel centres (Å when plain numbers).
    airmass_ratio : float
        Multiplies the optical depth.

    Returns
    -------
    numpy.ndarray
        ``T^(s · airmass_ratio)`` through the fit's instrument, averaged per pixel.
    """
    factor = float(airmass_ratio)
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"airmass_ratio must be finite and > 0, got {airmass_ratio}")
    if isinstance(wavelength, u.Quantity):
        wavelength = wavelength.to_value(u.AA, equivalencies=u.spectral())
    wavelength = np.asarray(wavelength, dtype=np.float64)
    forest, settings = _telluric_of(telluric_fit)
    _check_coverage(wavelength, np.ones(wavelength.shape, bool), settings["ranges"], "wavelength")
    return _Observer(forest, settings, wavelength)(factor)
