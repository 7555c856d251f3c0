"""Transfer learning: fit stellar (× telluric) clones to observed échelle spectra.

``fit`` builds the composite forward model of :mod:`blase_specutils.core.forward`
and trains it in three stages:

1. **RV search** — χ² over a grid of radial velocities (continuum solved by linear
   least squares at each step), so the gradient descent starts in the right valley;
   then, when v sin i is fitted, the same over a geometric grid of v sin i.
2. **Globals** — RV, v sin i (and R, ε, telluric scale when asked) by L-BFGS with
   every line frozen and the per-order continua solved by linear least squares at every
   evaluation (the continuum-profiled χ², see :func:`_profiled_chi2`).
3. **Lines** — the chosen line properties join the other globals, with an L1 prior on
   departures of ln a from the cloned values (weight 1/Λ per line, Λ = ``prior_scale``)
   and the RV held at its stage-2 value (trained together, blended lines' amplitudes
   follow the RV as it wanders and hold it off its optimum); then the globals, the RV
   included, are polished once more with the lines frozen, on the profiled χ² again.

Uncertainties of the global parameters come from the curvature of χ² (Gauss–Newton
approximation ``(Jᵀ W J)⁻¹`` with the model Jacobian from central differences), with
the line properties held at their fitted values, scaled by the Birge ratio
``√max(1, χ²_red)`` so that a misfit widens them (the unscaled values stay in ``meta``).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
import torch

from ._validation import as_angstrom, unpack_spectra
from .cloning import CloneResult, load_clone
from .core.forward import ForwardModel
from .core.lineforest import SPEED_OF_LIGHT_KMS, LineForest
from .core.losses import solve_continuum
from .core.train import TrainingHistory, optimize, resolve_device, thread_limited

__all__ = [
    "fit",
    "FitResult",
    "BadPixelWarning",
    "FitQualityWarning",
    "FREE_PARAMETERS",
    "DEFAULT_FREE",
    "free_parameters",
]

C_KMS = 299792.458

#: Every global parameter :func:`fit` can free.
FREE_PARAMETERS = frozenset(
    {
        "rv",
        "vsini",
        "resolving_power",
        "limb_darkening",
        "line_strength",
        "veiling",
        "telluric_scale",
        "telluric_shift",
    }
)
#: The global parameters free by default.
DEFAULT_FREE = frozenset({"rv", "vsini", "line_strength", "veiling", "telluric_scale"})


class BadPixelWarning(UserWarning):
    """Pixels were masked because their uncertainty or flux was unusable."""


class FitQualityWarning(UserWarning):
    """The fit may be wrong: see ``result.flags`` for the reasons."""


def free_parameters(free=None, **overrides) -> frozenset:
    """The set of free global parameters from ``free`` and per-parameter overrides.

    Parameters
    ----------
    free : iterable of str, optional
        Names out of :data:`FREE_PARAMETERS` (default :data:`DEFAULT_FREE`).
    **overrides : bool or None
        ``name=True`` adds ``name``, ``False`` removes it, ``None`` leaves it.

    Raises
    ------
    ValueError
        An unknown name.
    """
    if free is None:
        chosen = set(DEFAULT_FREE)
    else:
        chosen = {free} if isinstance(free, str) else set(free)
    unknown = sorted(str(n) for n in chosen - FREE_PARAMETERS)
    if unknown:
        raise ValueError(
            f"unknown free parameter(s) {unknown}; choose from {sorted(FREE_PARAMETERS)}"
        )
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in FREE_PARAMETERS:
            raise ValueError(f"unknown parameter {name!r}")
        if value:
            chosen.add(name)
        else:
            chosen.discard(name)
    return frozenset(chosen)


def _check_velocity_limits(rv: float, rv_search: float, rv_max: float) -> None:
    """Velocities must stay well below the speed of light (clear errors, early)."""
    for name, value in (("rv", abs(rv)), ("rv_max", rv_max)):
        if value >= C_KMS:
            raise ValueError(
                f"{name} = {value:g} km/s is at or beyond the speed of light ({C_KMS:g} km/s)"
            )
    if abs(rv) + rv_search >= C_KMS / 3.0:
        raise ValueError(
            f"the RV search reaches {abs(rv) + rv_search:g} km/s (|rv| + rv_search), beyond "
            f"c/3 = {C_KMS / 3:g} km/s where Doppler shifts of a clone stop making sense; "
            "narrow rv_search"
        )


@dataclass
class _Order:
    wavelength: np.ndarray
    flux: np.ndarray
    sigma: np.ndarray
    good: np.ndarray
    #: The order's flux level in the caller's units: ``flux`` and ``sigma`` are divided by
    #: it for the fit (so that continuum steps and tolerances mean the same for data in
    #: erg/s/cm²/Å, counts or normalised units); results are multiplied back.
    scale: float = 1.0

    @property
    def edges(self) -> np.ndarray:
        wl = self.wavelength
        mid = 0.5 * (wl[1:] + wl[:-1])
        lo = np.concatenate([[wl[0] - (mid[0] - wl[0])], mid])
        hi = np.concatenate([mid, [wl[-1] + (wl[-1] - mid[-1])]])
        return np.stack([lo, hi], axis=1)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def _as_list(value, n=None):
    if value is None:
        return [None] * (n or 1)
    if isinstance(value, (list, tuple)):
        if value and all(_is_number(v) for v in value):
            return [np.asarray(value, dtype=np.float64)]  # one order as a plain list
        return list(value)
    if isinstance(value, u.Quantity) and value.ndim == 2:
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return list(value)
    return [value]


#: Fewest pixels an order may have.
MIN_ORDER_PIXELS = 3


def _prepare_orders(wavelength, flux, uncertainty, mask) -> tuple[list[_Order], u.UnitBase | None]:
    """Per-order arrays in Å and one flux unit (that of the first flux Quantity, if any)."""
    wls = _as_list(wavelength)
    fls = _as_list(flux)
    flux_unit = next((f.unit for f in fls if isinstance(f, u.Quantity)), None)
    if len(fls) != len(wls):
        raise ValueError(f"got {len(wls)} wavelength arrays but {len(fls)} flux arrays")
    uns = _as_list(uncertainty, len(wls))
    mks = _as_list(mask, len(wls))
    if len(uns) != len(wls) or len(mks) != len(wls):
        raise ValueError("uncertainty and mask must have one entry per order")
    orders = []
    n_bad_sigma = 0
    for k, (w, f, s, m) in enumerate(zip(wls, fls, uns, mks)):
        if not isinstance(w, u.Quantity) and isinstance(f, u.Quantity) is False and w is None:
            raise ValueError(f"order {k}: wavelength is missing")
        wl = as_angstrom(w, f"wavelength of order {k}")
        if wl.ndim != 1 or wl.size < MIN_ORDER_PIXELS:
            raise ValueError(
                f"order {k} has {wl.size} pixel(s); an order needs at least "
                f"{MIN_ORDER_PIXELS} (pixel edges come from neighbouring pixels)"
            )
        if isinstance(f, u.Quantity):
            try:
                f = f.to(flux_unit)
            except u.UnitConversionError as err:
                raise u.UnitConversionError(
                    f"order {k}: flux in {f.unit} does not convert to {flux_unit}, the unit of "
                    "the first order"
                ) from err
        fl = np.array(f.value if isinstance(f, u.Quantity) else f, dtype=np.float64)
        if fl.shape != wl.shape:
            raise ValueError(f"order {k}: flux has shape {fl.shape} but wavelength has {wl.shape}")
        good = np.isfinite(fl)
        if m is not None:
            m = np.asarray(m, dtype=bool)
            if m.shape != wl.shape:
                raise ValueError(
                    f"order {k}: mask has shape {m.shape} but wavelength has {wl.shape}"
                )
            good &= m
        if s is None:
            sig = np.full_like(fl, np.nan)
        else:
            if isinstance(s, u.Quantity) and flux_unit is not None:
                try:
                    s = s.to(flux_unit)
                except u.UnitConversionError as err:
                    raise u.UnitConversionError(
                        f"order {k}: the uncertainty's unit {s.unit} is not that of the flux "
                        f"({flux_unit})"
                    ) from err
            sig = np.array(s.value if isinstance(s, u.Quantity) else s, dtype=np.float64)
            if sig.shape != wl.shape:
                raise ValueError(
                    f"order {k}: uncertainty has shape {sig.shape} but wavelength has {wl.shape}"
                )
            bad = ~(np.isfinite(sig) & (sig > 0)) & good
            n_bad_sigma += int(bad.sum())
            good &= ~bad
        order = np.argsort(wl)
        wl, fl, sig, good = wl[order], fl[order], sig[order], good[order]
        if np.any(np.diff(wl) <= 0):
            raise ValueError(f"order {k}: wavelength has duplicated values")
        fl = np.where(good, fl, 0.0)
        orders.append(_Order(wl, fl, sig, good))
    if n_bad_sigma:
        warnings.warn(
            f"{n_bad_sigma} pixels have uncertainties that are <= 0 or NaN; they are masked",
            BadPixelWarning,
            stacklevel=3,
        )
    if sum(int(o.good.sum()) for o in orders) == 0:
        raise ValueError(
            "every pixel is masked (mask, NaN flux or bad uncertainties): nothing to fit"
        )
    lacking = [k for k, s in enumerate(uns) if s is None]
    for k in lacking:
        orders[k].sigma = np.full_like(orders[k].flux, _pixel_noise(orders[k].flux, orders[k].good))
    if lacking and len(lacking) == len(orders):
        warnings.warn(
            "no uncertainties given: using a constant per-order noise estimated from "
            "pixel-to-pixel "
            "scatter, so chi2 and the parameter uncertainties are approximate",
            BadPixelWarning,
            stacklevel=3,
        )
    elif lacking:
        warnings.warn(
            f"order(s) {', '.join(str(k) for k in lacking)} of {len(orders)} have no "
            "uncertainties: a constant noise estimated from their pixel-to-pixel scatter is "
            "used there (the other orders keep theirs)",
            BadPixelWarning,
            stacklevel=3,
        )
    for k, o in enumerate(orders):
        o.sigma = np.where(o.good, o.sigma, 1.0)
        if not o.good.any():
            continue
        level = float(np.median(o.flux[o.good]))
        if not level > 0:
            raise ValueError(
                f"order {k}: the median flux is {level:.3g} (<= 0); the model multiplies a "
                "positive continuum by line transmissions, so the data must be mostly positive "
                "(sky-subtracted flux with an offset, or a mask that keeps only bad pixels?)"
            )
        o.scale = level
        o.flux = o.flux / level
        o.sigma = o.sigma / level
    return orders, flux_unit


def _pixel_noise(flux: np.ndarray, good: np.ndarray) -> float:
    """Robust per-pixel noise from second differences of good neighbouring pixels.

    ``2 f_i − f_{i−1} − f_{i+1}`` has variance 6σ² for white noise, and cancels a line
    profile to second order, so it follows the noise more closely than first differences
    on a line-rich spectrum (injection tests at S/N 300, v sin i 3 km/s: 1.4× the true σ,
    against 2.2× from first differences). 1.4826 × median|·|/√6, or 1 with too few pixels.
    """
    triple = good[1:-1] & good[:-2] & good[2:]
    second = (2.0 * flux[1:-1] - flux[:-2] - flux[2:])[triple]
    if second.size <= 5:
        return 1.0
    noise = 1.4826 * float(np.median(np.abs(second))) / math.sqrt(6.0)
    return noise if noise > 0 else 1.0


#: Significance of the F test that lets ``continuum_degree="auto"`` add a term.
CONTINUUM_DEGREE_SIGNIFICANCE = 0.01


def _envelope_degree(
    order: _Order,
    max_degree: int = 8,
    *,
    percentile: float = 90.0,
    floor: float = 0.002,
    significance: float = CONTINUUM_DEGREE_SIGNIFICANCE,
) -> int:
    """Lowest Chebyshev degree (2 … max_degree) that captures the order's envelope.

    The envelope is the ``percentile`` of the good flux in 24 equal bins. Degree ``d`` is
    enough when no higher degree ``d'`` lowers the residual sum of squares significantly:
    the nested-model F statistic ``((RSS_d − RSS_d') / (d' − d)) / (RSS_max / ν)``, with
    the scatter about the highest degree as the noise (ν = 24 − max_degree − 1), stays
    below its ``1 − significance`` quantile for every ``d'``; or when the fit already
    follows the envelope to ``floor`` of the level (RMS), with nothing left worth a term.
    A normalised order gets 2, a blazed one more.

    (Before, a degree was enough when its RMS was within 1.5× that of the highest degree
    plus ``floor``: where the binned points scatter by about as much as a term is worth
    — lines, a template that does not yet match — that tolerance swallowed real terms: a
    cubic blaze term worth 1 % RMS under 0.7 % scatter gave degree 2 and χ²_red 1500.)
    """
    from scipy.stats import f as f_distribution

    wl, flux = order.wavelength[order.good], order.flux[order.good]
    n_bins = 24
    if wl.size < 2 * n_bins:
        return 2
    bins = np.array_split(np.arange(wl.size), n_bins)
    x = np.array([wl[b].mean() for b in bins])
    y = np.array([np.percentile(flux[b], percentile) for b in bins])
    scale = np.median(np.abs(y))
    if not np.isfinite(scale) or scale == 0:
        return 2
    t = 2.0 * (x - x.min()) / max(np.ptp(x), 1e-12) - 1.0
    max_degree = min(max_degree, n_bins - 3)
    rss = np.array(
        [
            np.sum(
                (
                    (
                        np.polynomial.chebyshev.chebval(t, np.polynomial.chebyshev.chebfit(t, y, d))
                        - y
                    )
                    / scale
                )
                ** 2
            )
            for d in range(max_degree + 1)
        ]
    )
    dof = n_bins - max_degree - 1
    noise = max(rss[max_degree] / dof, 1e-30)
    for degree in range(2, max_degree):
        if math.sqrt(rss[degree] / n_bins) <= floor:
            return degree
        higher = np.arange(degree + 1, max_degree + 1)
        statistic = (rss[degree] - rss[higher]) / (higher - degree) / noise
        critical = f_distribution.ppf(1.0 - significance, higher - degree, dof)
        if np.all(statistic < critical):
            return degree
    return max_degree


#: Step of the RV grid search within ±``RV_FINE_SEARCH`` km/s of the start, km/s; beyond,
#: the step is half the instrument's resolution element (c/2R), then refined at this step.
RV_FINE_STEP = 1.0
RV_FINE_SEARCH = 100.0


def _rv_grid_search(model: ForwardModel, chi2_at_current_rv, rv: float, half_width: float):
    """The RV of least χ² over ``rv ± half_width`` (grid, then a parabola through the minimum).

    ``chi2_at_current_rv()`` returns χ² (continuum solved) at ``model.rv``. Searches wider
    than ±100 km/s start on a grid of c/(2R) and refine at 1 km/s around its minimum.
    Warns when the minimum sits at the edge of the range.
    """

    def scan(grid):
        values = []
        for v in grid:
            model.rv.fill_(float(v))
            values.append(chi2_at_current_rv())
        return np.asarray(values)

    lo, hi = rv - half_width, rv + half_width
    resolution_kms = SPEED_OF_LIGHT_KMS / float(model.instrument.resolving_power)
    step = RV_FINE_STEP if half_width <= RV_FINE_SEARCH else max(RV_FINE_STEP, 0.5 * resolution_kms)
    grid = np.arange(lo, hi + 1e-9, step)
    values = scan(grid)
    best = int(np.argmin(values))
    if best in (0, len(grid) - 1) and len(grid) > 2:
        warnings.warn(
            f"the RV grid search ({lo:g} to {hi:g} km/s) found its best fit at the edge, "
            f"{grid[best]:g} km/s: the star's RV may lie beyond; pass a closer rv= or a "
            "larger rv_search",
            UserWarning,
            stacklevel=4,
        )
    if step > RV_FINE_STEP:  # refine around the coarse minimum
        centre = grid[best]
        grid = np.arange(
            max(lo, centre - 2 * step), min(hi, centre + 2 * step) + 1e-9, RV_FINE_STEP
        )
        values = scan(grid)
        best = int(np.argmin(values))
    # Parabola through the minimum and its neighbours.
    v0 = grid[best]
    if 0 < best < len(grid) - 1:
        y0, y1, y2 = values[best - 1], values[best], values[best + 1]
        den = y0 - 2 * y1 + y2
        if den > 0:
            v0 = grid[best] + 0.5 * RV_FINE_STEP * (y0 - y2) / den
    return v0


#: Highest continuum degree ``continuum_degree="auto"`` may choose.
MAX_AUTO_CONTINUUM_DEGREE = 8


@torch.no_grad()
def _template_continuum_degree(model: ForwardModel, orders: list[_Order]) -> int:
    """Continuum degree from the data divided by the template (at the grid-search RV).

    Dividing by the broadened template cancels the lines to the extent it matches, so the
    binned median of the ratio follows the continuum closely, where the upper envelope of
    a line-rich order scatters by ~1 %: that scatter hid a blaze's quartic term
    (v sin i then came out 0.2 km/s high at S/N 200).
    """
    shape = model.averager(model.instrument(model.joint_fine())).double().cpu().numpy()
    degrees, start = [], 0
    for o in orders:
        n = len(o.wavelength)
        lines = shape[start : start + n]
        start += n
        usable = o.good & (lines > 0.2)  # not the cores of saturated lines
        ratio = np.where(usable, o.flux / np.where(usable, lines, 1.0), 0.0)
        order = _Order(o.wavelength, ratio, o.sigma, usable)
        degrees.append(
            _envelope_degree(order, MAX_AUTO_CONTINUUM_DEGREE, percentile=50.0, floor=0.001)
        )
    return max(degrees)


def _as_forest(obj, name: str) -> tuple[LineForest, CloneResult | None]:
    if obj is None:
        return None, None
    if isinstance(obj, (str, Path)):
        obj = load_clone(obj)
    if isinstance(obj, CloneResult):
        return obj.forest, obj
    if isinstance(obj, LineForest):
        return obj, None
    raise TypeError(
        f"{name} must be a CloneResult, a saved clone path or a LineForest, "
        f"not {type(obj).__name__}"
    )


def _forest_range(forest: LineForest, clone_result: CloneResult | None) -> tuple[float, float]:
    if clone_result is not None and "wavelength_min" in clone_result.meta:
        return clone_result.meta["wavelength_min"], clone_result.meta["wavelength_max"]
    c = forest.center_ref.cpu().numpy()
    return float(c.min()), float(c.max())


@dataclass
class FitResult:
    """Result of :func:`fit`.

    Attributes
    ----------
    rv, vsini : float
        Radial velocity and projected rotational velocity, km/s.
    resolving_power, limb_darkening : float
        Instrumental resolving power and linear limb darkening.
    uncertainties : dict
        1-σ uncertainties of the global parameters (same units; NaN if not fitted), from
        the curvature of χ² multiplied by the Birge ratio ``√max(1, χ²_red)``: a fit that
        leaves more scatter than the data's uncertainties allow (a template mismatch,
        underestimated noise) gets proportionally larger error bars instead of the
        photon-noise ones (WASP 69, χ²_red ≈ 40: ×6). The unscaled values are in
        ``meta["curvature_uncertainties"]``, the factor in ``meta["uncertainty_scale"]``.
    chi2_reduced : float
        χ² per degree of freedom at the end of the fit.
    forward_model : ForwardModel
        The trained torch forward model.
    template : CloneResult
        The transfer-learned stellar clone at native resolution (no RV, rotation or
        instrument), savable like any clone.
    initial_chi2_reduced : float
        χ² per pixel after the RV search, before any training.
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
    """

    rv: float
    vsini: float
    resolving_power: float
    limb_darkening: float
    uncertainties: dict
    chi2_reduced: float
    forward_model: ForwardModel
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

    @property
    def converged(self) -> bool:
        """True when nothing in :attr:`flags` says the result may be wrong."""
        return not self.flags

    @property
    def orders(self):
        """One row per fitted order (QTable): its RV and v sin i (one Gauss–Newton step
        from the joint solution with the lines and the other orders held), their
        uncertainties (scaled by the order's own √χ²_red), χ²_red and good pixels."""
        from astropy.table import QTable

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
        def with_error(name: str, value: float, digits: int) -> str:
            error = self.uncertainties.get(name, float("nan"))
            if error is None or not np.isfinite(error):
                return f"{value:.{digits}f}"
            return f"{value:.{digits}f} ± {error:.{digits}f}"

        n_lines = self.forward_model.stellar.n_lines
        return (
            f"FitResult(rv={with_error('rv', self.rv, 4)} km/s, "
            f"vsini={with_error('vsini', self.vsini, 3)} km/s, "
            f"resolving_power={with_error('resolving_power', self.resolving_power, 0)}, "
            f"chi2_reduced={self.chi2_reduced:.3f} (initial {self.initial_chi2_reduced:.3f}), "
            f"n_orders={len(self.order_data)}, n_lines={n_lines}, "
            f"converged={self.converged}, "
            f"continuum_degree={self.meta.get('continuum_degree', '?')}"
            f"{' (auto)' if self.meta.get('continuum_degree_source') == 'auto' else ''}, "
            f"telluric={'yes' if self.telluric is not None else 'no'})"
        )

    # -------------------------------------------------------- astropy face
    @property
    def spectrum(self):
        """The semi-empirical template at native resolution, a :class:`specutils.Spectrum`."""
        from .astro import results

        return results.template_spectrum(self.template)

    @property
    def spectra(self) -> dict:
        """Data, model, residual, continuum, telluric and telluric-corrected spectra."""
        from .astro import results

        return results.fit_spectra(self)

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
    def line_table(self):
        """Every line of the transfer-learned template with equivalent widths (QTable);
        ``*_init`` columns hold the input clone's values."""
        from .astro import results

        return results.line_table(self, initial=self.stellar_clone)

    @property
    def parameters(self):
        """RV, v sin i, R, ε with units and uncertainties, and χ²_red (one-row QTable)."""
        from .astro import results

        return results.fit_parameters(self)

    def plot(self, **kwargs):
        """Data, model (and tellurics) with residuals below (a matplotlib Figure)."""
        from .astro import results

        return results.plot_fit(self, **kwargs)

    def write(self, path, *, overwrite: bool = False):
        """Save everything to one ASDF file; read it back with :func:`blase_specutils.read_fit`."""
        from .astro import results

        return results.write_fit(self, path, overwrite=overwrite)

    # ------------------------------------------------------------------ arrays
    def _per_order(self, values: np.ndarray):
        parts = np.split(values, np.cumsum([len(o.wavelength) for o in self.order_data])[:-1])
        return parts[0] if len(parts) == 1 else parts

    def _flux_scale(self) -> np.ndarray:
        """Per pixel: the order's flux level, to turn fitted units back into the data's."""
        return np.concatenate([np.full(len(o.wavelength), o.scale) for o in self.order_data])

    @property
    def rv_uncertainty(self) -> float:
        return self.uncertainties.get("rv", float("nan"))

    @property
    def vsini_uncertainty(self) -> float:
        return self.uncertainties.get("vsini", float("nan"))

    @property
    def resolving_power_uncertainty(self) -> float:
        return self.uncertainties.get("resolving_power", float("nan"))

    @property
    def wavelength(self):
        """Data wavelengths, Å (array, or list per order)."""
        return self._per_order(np.concatenate([o.wavelength for o in self.order_data]))

    @property
    def flux(self):
        """Observed flux (masked pixels hold 0), in the units given."""
        flux = np.concatenate([o.flux for o in self.order_data])
        return self._per_order(flux * self._flux_scale())

    @property
    def uncertainty(self):
        """1-σ uncertainty of the flux (given, or estimated from the scatter)."""
        sigma = np.concatenate([o.sigma for o in self.order_data])
        return self._per_order(sigma * self._flux_scale())

    @property
    def good(self):
        return self._per_order(np.concatenate([o.good for o in self.order_data]))

    @property
    def model_flux(self):
        """Forward model at the data pixels (array, or list per order), in the data's units."""
        with torch.no_grad():
            model = self.forward_model().double().cpu().numpy()
        return self._per_order(model * self._flux_scale())

    @property
    def continuum_flux(self):
        """Fitted per-order continuum at the data pixels, in the data's units."""
        with torch.no_grad():
            continuum = self.forward_model.continuum().double().cpu().numpy()
        return self._per_order(continuum * self._flux_scale())

    @property
    def telluric_flux(self):
        """Telluric transmission seen by the instrument at the data pixels (1 if none)."""
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
        data = np.concatenate([o.flux for o in self.order_data])
        good = np.concatenate([o.good for o in self.order_data])
        with torch.no_grad():
            model = self.forward_model().double().cpu().numpy()
        return self._per_order(np.where(good, (data - model) * self._flux_scale(), np.nan))

    def residual_rms_over_noise(self) -> float:
        """RMS of (data − model)/σ over good pixels (≈ 1 at photon noise)."""
        r = self.residual
        r = np.concatenate(r) if isinstance(r, list) else r
        s = np.concatenate([o.sigma for o in self.order_data]) * self._flux_scale()
        good = np.concatenate([o.good for o in self.order_data])
        return float(np.sqrt(np.mean((r[good] / s[good]) ** 2)))


def _chi2(model: ForwardModel, data, inv_sigma, good) -> torch.Tensor:
    r = (model() - data) * inv_sigma
    return torch.sum(torch.where(good, r * r, torch.zeros_like(r)))


@torch.no_grad()
def _solve_continuum(model: ForwardModel, data, inv_sigma, good) -> float:
    """Weighted linear least squares for the continuum coefficients at fixed lines.

    Returns χ² with the solved continuum (one forward evaluation in all).
    """
    shape = model.averager(model.instrument(model.joint_fine())).double()
    return float(_continuum_solved_chi2(model, shape, data, inv_sigma, good))


def _continuum_solved_chi2(model: ForwardModel, shape, data, inv_sigma, good) -> torch.Tensor:
    """Solve the continuum coefficients for the line ``shape`` (float64); χ² with them.

    The coefficients are written into the model (see
    :func:`blase_specutils.core.losses.solve_continuum`: scaled columns, an SVD fallback
    when LAPACK fails on tiny uncertainties). χ² keeps the autograd graph of ``shape``
    but not of the solution: at the least-squares solution ∂χ²/∂c = 0, so the gradient
    of χ² with respect to the other parameters is that of the continuum-profiled χ²
    (variable projection).
    """
    return solve_continuum(
        model.continuum_coefficients, model.continuum_basis, model.order_index, shape, data,
        inv_sigma, good,
    )  # fmt: skip


def _profiled_chi2(model: ForwardModel, data, inv_sigma, good) -> torch.Tensor:
    """χ² (float64) minimised over the continuum at the current globals and lines.

    The loss of the global stages: L-BFGS on the few globals with the continuum solved
    exactly at every evaluation, instead of on globals and continuum coefficients
    together, whose curvatures differ by orders of magnitude. Jointly, in float32, the
    strong-Wolfe line search stalled short of the minimum: on broad lines (v sin i
    40 km/s, S/N 100) the RV stopped 2–5σ from χ²'s minimum and scattered 2.6× its
    error bar over noise realisations.
    """
    shape = model.averager(model.instrument(model.joint_fine())).double()
    return _continuum_solved_chi2(model, shape, data, inv_sigma, good)


#: Smallest starting v sin i (km/s) when it is fitted (zero is a stationary point).
MIN_START_VSINI = 0.5
#: A fit whose v sin i presses on a default ceiling below this (km/s) is rerun from that
#: ceiling with one three times higher (so from the default start: 55, 165, 495 km/s).
MAX_AUTO_VSINI_CEILING = 400.0
#: Samples of the v sin i grid search before the global stage.
VSINI_GRID_POINTS = 16


@torch.no_grad()
def _vsini_grid_search(model: ForwardModel, profiled_chi2) -> float:
    """Start v sin i at the best of a geometric grid of the continuum-profiled χ².

    From 0.5 km/s (or one model-grid step) to 0.95 ``vsini_max``, with the current RV,
    plus the current value. Started far from the minimum, the globals' L-BFGS could
    overshoot v sin i into ``|v sin i| <`` half a grid step, where the rotation kernel
    is a delta and the gradient exactly zero, and stay there (injected 2 km/s at R
    100,000 and S/N 50: a start at 5 km/s ended at 0.08 in one seed of eight). Returns
    the v sin i set.
    """
    rotation = model.rotation
    low = max(MIN_START_VSINI, rotation.step_kms)
    high = 0.95 * rotation.vsini_max
    current = float(rotation.effective_vsini())
    candidates = [current]
    if high > low:
        candidates += list(np.geomspace(low, high, VSINI_GRID_POINTS))
    losses = []
    for vsini in candidates:
        rotation.vsini.fill_(float(vsini))
        losses.append(float(profiled_chi2()))
    best = candidates[int(np.argmin(losses))]
    rotation.vsini.fill_(float(best))
    return float(best)


_KMS = u.km / u.s

#: The numeric arguments of :func:`fit` and what each must be: (unit a Quantity may
#: carry, smallest value, whether the smallest value itself is excluded, largest value,
#: None allowed, integer). Checked by :func:`_check_fit_numbers` before any work.
_FIT_NUMBERS = {
    "rv": (_KMS, None, False, None, False, False),
    "vsini": (_KMS, 0.0, False, None, True, False),
    "resolving_power": (u.dimensionless_unscaled, 0.0, True, None, True, False),
    "limb_darkening": (u.dimensionless_unscaled, 0.0, False, 1.0, False, False),
    "vsini_max": (_KMS, 0.0, True, None, True, False),
    "rv_search": (_KMS, 0.0, False, None, False, False),
    "rv_max": (_KMS, 0.0, True, None, False, False),
    "clip_sigma": (None, 0.0, True, None, True, False),
    "prior_scale": (None, 0.0, True, None, False, False),
    "prior_weight": (None, 0.0, False, None, False, False),
    "prior_ln_sigma": (None, 0.0, True, None, True, False),
    "prior_ln_gamma": (None, 0.0, True, None, True, False),
    "prior_center": (u.AA, 0.0, True, None, True, False),
    "epochs": (None, 0, False, None, False, True),
    "global_epochs": (None, 0, False, None, False, True),
    "learning_rate": (None, 0.0, True, None, False, False),
    "rtol": (None, 0.0, False, None, False, False),
    "step_kms": (_KMS, 0.0, True, None, True, False),
    "checkpoint_every": (None, 1, False, None, False, True),
    "checkpoint_seconds": (None, 0.0, True, None, True, False),
    "seed": (None, None, False, None, False, True),
    "num_threads": (None, 1, False, None, True, True),
}


def _check_fit_numbers(values: dict) -> dict:
    """Check the numeric arguments of :func:`fit` that ``values`` holds; plain numbers out.

    Every entry of ``values`` named in ``_FIT_NUMBERS`` must be finite and within its
    range (velocities may be Quantities, converted to km/s; ``prior_center`` to Å);
    anything else raises a ValueError that names the argument. Entries not in the table
    are returned unchanged. Used by :func:`fit` and by ``spectrum.blase.fit`` before
    they do any work, so a NaN start or a negative epoch count fails at once instead of
    deep inside the solver (or, worse, not at all).
    """
    out = dict(values)
    for name, value in values.items():
        if name not in _FIT_NUMBERS:
            continue
        unit, low, exclusive, high, none_ok, integer = _FIT_NUMBERS[name]
        if value is None:
            if none_ok:
                continue
            raise ValueError(f"{name} must be a number, not None")
        if isinstance(value, u.Quantity):
            if unit is None:
                raise ValueError(f"{name} is a plain number, not a Quantity (got {value})")
            try:
                value = value.to_value(unit)
            except u.UnitConversionError as err:
                raise ValueError(
                    f"{name} must be in {unit.to_string() or 'dimensionless units'}, "
                    f"got {value.unit}"
                ) from err
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            if not (isinstance(value, np.ndarray) and value.ndim == 0):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if integer:
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if low is not None and (value <= low if exclusive else value < low):
            relation = ">" if exclusive else ">="
            raise ValueError(f"{name} must be {relation} {low:g}, got {value:g}")
        if high is not None and value > high:
            raise ValueError(f"{name} must be <= {high:g}, got {value:g}")
        out[name] = value
    return out


@thread_limited
def fit(
    wavelength,
    flux=None,
    uncertainty=None,
    *,
    stellar,
    telluric=None,
    rv: float = 0.0,
    vsini: float | None = None,
    resolving_power: float | None = None,
    mask=None,
    limb_darkening: float = 0.6,
    free=None,
    fit_rv: bool | None = None,
    fit_vsini: bool | None = None,
    fit_resolving_power: bool | None = None,
    fit_limb_darkening: bool | None = None,
    fit_telluric_scale: bool | None = None,
    fit_telluric_shift: bool | None = None,
    fit_line_strength: bool | None = None,
    fit_veiling: bool | None = None,
    vsini_max: float | None = None,
    rv_search: float = 1000.0,
    rv_max: float = 500.0,
    clip_sigma: float | None = 8.0,
    outside: str = "error",
    continuum_degree: int | str = "auto",
    trainable=("amplitude",),
    telluric_trainable=("amplitude",),
    prior_scale: float = 5.0,
    prior_weight: float = 1.0,
    prior_ln_sigma: float | None = None,
    prior_ln_gamma: float | None = None,
    prior_center: float | None = None,
    relativistic: bool = False,
    epochs: int = 300,
    global_epochs: int = 30,
    learning_rate: float = 0.02,
    rtol: float = 1e-6,
    step_kms: float | None = None,
    dtype: torch.dtype = torch.float32,
    device="auto",
    checkpoint=None,
    checkpoint_every: int = 50,
    checkpoint_seconds: float | None = None,
    resume=None,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = 1,
    cuda_graph: bool = True,
) -> FitResult:
    """Transfer-learn stellar (and telluric) clones against an observed spectrum.

    Parameters
    ----------
    wavelength : array_like, Quantity, or list of them; or specutils spectra
        Pixel-centre wavelengths (vacuum), Å unless a Quantity; one 1-D array per order.
        Or, with ``flux`` left out, the observation itself: a specutils ``Spectrum``, a
        ``SpectrumList`` (e.g. muler's ``HPFSpectrumList``) or a list of spectra, one per
        order, whose uncertainties and masks are used (as ``spectrum.blase.fit`` does).
    flux : array_like or list of array_like, optional
        Observed flux per order (any normalisation; the continuum is fitted).
    uncertainty : array_like or list, optional
        1-σ flux uncertainties per pixel. Pixels with σ ≤ 0 or NaN are masked (with a
        warning that counts them). Without uncertainties a constant noise per order is
        estimated from the pixel-to-pixel scatter.
    stellar : CloneResult, LineForest or path
        The stellar clone (flattened units).
    telluric : CloneResult, LineForest or path, optional
        A telluric clone (transmission).
    rv : float
        Initial radial velocity, km/s.
    vsini : float, optional
        Initial v sin i, km/s (default 5 km/s). When v sin i is fitted, starts below
        0.5 km/s begin at 0.5 km/s: the rotation kernel is flat in v sin i at 0, so a fit
        started there would never move.
    resolving_power : float, optional
        Initial (or, with ``fit_resolving_power=False``, fixed) resolving power R. Default:
        the nominal R of the instrument the spectrum names (HPF 55,000, IGRINS 45,000, …;
        see :mod:`blase_specutils.astro.instruments`), else 55,000. ``result.meta``
        records which (``"resolving_power_source"``).
    mask : array_like of bool or list, optional
        True for pixels to use. NaN fluxes are masked automatically.
    limb_darkening : float
        Linear limb-darkening coefficient ε.
    free : iterable of str, optional
        Which global parameters are free, as a set of names out of
        ``FREE_PARAMETERS`` (``"rv"``, ``"vsini"``, ``"resolving_power"``,
        ``"limb_darkening"``, ``"line_strength"``, ``"veiling"``, ``"telluric_scale"``,
        ``"telluric_shift"``). Default ``DEFAULT_FREE``: RV, v sin i, the stellar clone's
        global line strength (an optical-depth scale: a template hotter, cooler or of
        another metallicity than the star has lines too shallow or too deep), veiling
        (an additive continuum, paper §8.7) and the telluric scale. Everything else is
        held at its given value.
    fit_rv, fit_vsini, fit_resolving_power, fit_limb_darkening : bool, optional
        Overrides of ``free`` for one parameter each (True adds it, False removes it).
    fit_telluric_scale, fit_telluric_shift, fit_line_strength, fit_veiling : bool, optional
        The same for the telluric optical-depth scale, a small telluric velocity shift,
        the line strength and the veiling.
    vsini_max : float, optional
        Largest v sin i the rotation kernel can reach during the fit, km/s (default
        ``max(3 vsini, vsini + 50)``); it fixes the kernel length. When the default
        ceiling stops v sin i, the fit is rerun from that ceiling with a default one three
        times higher, up to 495 km/s from the default start (``meta`` lists the ceilings
        left behind in ``vsini_ceilings_raised_from``); a ceiling you give is kept, with
        a warning if v sin i ends on it. Not with ``checkpoint`` or ``resume``.
    rv_search : float
        Half-width of the initial grid search in RV around ``rv``, km/s (0: none). The
        search is joint in RV and v sin i (0–450 km/s, or up to ``vsini_max``) on the
        continuum-profiled χ² of every order, with an additive continuum per order so
        that a template's line depths do not bias it (:mod:`blase_specutils.core.search`):
        coarse steps of a third of the instrumental FWHM, refined in steps of the model
        grid. Its best and second-best minima are in ``result.meta["search"]``.
    rv_max : float
        Absolute RV beyond which the result is flagged (``result.flags``), km/s.
    clip_sigma : float or None
        After the global stage, mask pixels that lie above the fitted continuum and above
        the model by more than ``clip_sigma`` robust standard deviations of the normalised
        residuals (at least ``clip_sigma`` σ): cosmic rays, hot pixels, emission the
        absorption model cannot make. The count goes into a warning and
        ``result.meta["n_clipped"]``. ``None`` disables it.
    outside : {"error", "crop"}
        What to do with data beyond the clones' wavelength range: raise a ValueError
        that names the orders inside (default), or ``"crop"``: mask those pixels, leave out
        orders with none left (``result.meta["order_indices"]`` lists the orders fitted)
        and warn.
    continuum_degree : int or "auto"
        Degree of the per-order Chebyshev continuum (one degree for every order).
        ``"auto"`` (default) divides each order by the template at the grid-search RV and
        takes, from 2 to 8, the lowest degree beyond which no higher one fits the binned
        ratio significantly better (F test at 1 %, see ``_envelope_degree``); the largest
        over the orders is used: 2 for continuum-normalised orders, higher for raw orders
        that still carry the blaze. ``result.meta["continuum_degree"]`` records it.
    trainable, telluric_trainable : iterable of str
        Line properties of the stellar and telluric clones that train in stage 3
        (subset of "center", "amplitude", "sigma", "gamma"; empty for none). The default,
        amplitudes only, is the paper's: training σ and γ lowers χ² on real stars but is
        degenerate with v sin i, and training centres is degenerate with the RV (use
        ``prior_center`` to hold them, e.g. 0.002 Å).
    prior_scale : float
        Λ of the L1 prior Σ|ln a − ln â|/Λ. The data term here is χ²/2 (residuals in units
        of the uncertainties), not the paper's unweighted sum of squares, so the same Λ is a
        much weaker prior at high SNR: the paper's balance corresponds to
        ``prior_weight ≈ 2/σ²`` for a typical per-pixel uncertainty σ (continuum units).
    prior_weight : float
        Overall weight of the prior relative to χ²/2.
    prior_ln_sigma, prior_ln_gamma : float, optional
        Widths of Gaussian priors on departures of ln σ and ln γ from the clone (applied
        when those properties train).
    prior_center : float, optional
        Width of a Gaussian prior on line-centre departures from the clone, Å.
    relativistic : bool
        Use the relativistic Doppler factor sqrt((1 + β)/(1 − β)) instead of 1 + β.
    epochs : int
        Epochs of the joint stage.
    global_epochs : int
        L-BFGS iterations (of up to 20 evaluations each) of the global-parameter stages.
    learning_rate : float
        Adam step size of the line parameters.
    rtol : float
        Stop the joint stage when the loss improved by less than ``rtol`` (relative) over
        30 epochs.
    step_kms : float, optional
        Velocity step of the fine model grid, km/s. Default: 0.5 km/s, or a third of the
        data's finest pixel (1st percentile of the pixel widths in velocity) where that
        is smaller, but not below 0.05 km/s; the fine grid is then averaged into the
        pixels, and a step comparable to a pixel misplaces flux within it (4000 pixels
        of 0.29 km/s: χ²_red 0.39 at the true parameters and S/N 300 with 0.5 km/s,
        0.003 with 0.1). The cost (grid length, line windows, kernels) grows as 1/step.
        A step coarser than half the finest pixel warns. ``meta`` records the step.
    dtype : torch.dtype
        Working dtype.
    device : {"auto", "cpu", "cuda"}
        Where to compute.
    checkpoint : path-like, optional
        Write checkpoints of the joint stage here (atomically).
    checkpoint_every : int
        Epochs between checkpoints.
    checkpoint_seconds : float, optional
        Also write a checkpoint when this many seconds passed since the last one.
    resume : path-like, optional
        Resume the joint stage from this checkpoint.
    seed : int
        Random seed.
    progress : bool
        Show progress bars.
    num_threads : int or None
        CPU threads while training (``None``: torch's setting).
    cuda_graph : bool
        On a CUDA device, replay each step of the joint stage as a captured CUDA graph
        (H200, WASP 69: 7.6 s → 2.6 s for the same result); falls back to eager training
        if capture fails. No effect on CPU.

    Returns
    -------
    FitResult
    """
    call = dict(locals())  # the arguments as given, for a rerun with a higher v sin i ceiling
    numbers = _check_fit_numbers(
        {
            "rv": rv,
            "vsini": vsini,
            "resolving_power": resolving_power,
            "limb_darkening": limb_darkening,
            "vsini_max": vsini_max,
            "rv_search": rv_search,
            "rv_max": rv_max,
            "clip_sigma": clip_sigma,
            "prior_scale": prior_scale,
            "prior_weight": prior_weight,
            "prior_ln_sigma": prior_ln_sigma,
            "prior_ln_gamma": prior_ln_gamma,
            "prior_center": prior_center,
            "epochs": epochs,
            "global_epochs": global_epochs,
            "learning_rate": learning_rate,
            "rtol": rtol,
            "step_kms": step_kms,
            "checkpoint_every": checkpoint_every,
            "checkpoint_seconds": checkpoint_seconds,
            "seed": seed,
            "num_threads": num_threads,
        }
    )
    rv, vsini, resolving_power = numbers["rv"], numbers["vsini"], numbers["resolving_power"]
    _check_velocity_limits(numbers["rv"], numbers["rv_search"], numbers["rv_max"])
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"resume: no checkpoint file at {resume}")
    free_set = free_parameters(
        free,
        rv=fit_rv,
        vsini=fit_vsini,
        resolving_power=fit_resolving_power,
        limb_darkening=fit_limb_darkening,
        telluric_scale=fit_telluric_scale,
        telluric_shift=fit_telluric_shift,
        line_strength=fit_line_strength,
        veiling=fit_veiling,
    )
    fit_rv, fit_vsini = "rv" in free_set, "vsini" in free_set
    fit_resolving_power = "resolving_power" in free_set
    fit_limb_darkening = "limb_darkening" in free_set
    fit_telluric_scale, fit_telluric_shift = (
        "telluric_scale" in free_set,
        "telluric_shift" in free_set,
    )
    fit_line_strength, fit_veiling = "line_strength" in free_set, "veiling" in free_set
    limb_darkening, vsini_max = numbers["limb_darkening"], numbers["vsini_max"]
    rv_search, rv_max, clip_sigma = numbers["rv_search"], numbers["rv_max"], numbers["clip_sigma"]
    prior_scale, prior_weight = numbers["prior_scale"], numbers["prior_weight"]
    prior_ln_sigma, prior_ln_gamma = numbers["prior_ln_sigma"], numbers["prior_ln_gamma"]
    prior_center, epochs = numbers["prior_center"], numbers["epochs"]
    global_epochs, learning_rate = numbers["global_epochs"], numbers["learning_rate"]
    rtol, step_kms = numbers["rtol"], numbers["step_kms"]
    wavelength, flux, uncertainty, mask, instrument = unpack_spectra(
        wavelength, flux, uncertainty, mask, "fit"
    )
    resolving_power, resolving_power_source = _initial_resolving_power(resolving_power, instrument)
    torch.manual_seed(seed)
    dev = resolve_device(device)
    if continuum_degree != "auto" and not (
        isinstance(continuum_degree, (int, np.integer)) and continuum_degree >= 0
    ):
        raise ValueError(
            f"continuum_degree must be 'auto' or an integer >= 0, not {continuum_degree!r}"
        )
    # one name alone is a common way to write a single trainable property
    trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable)
    if isinstance(telluric_trainable, str):
        telluric_trainable = (telluric_trainable,)
    star0, star_clone = _as_forest(stellar, "stellar")
    if star0 is None:
        raise ValueError("a stellar clone is required")
    tell0, tell_clone = _as_forest(telluric, "telluric")
    orders, flux_unit = _prepare_orders(wavelength, flux, uncertainty, mask)
    if abs(rv) > rv_max:
        warnings.warn(
            f"initial rv = {rv} km/s is beyond rv_max = {rv_max} km/s", UserWarning, stacklevel=2
        )
    vsini = 5.0 if vsini is None else vsini
    if fit_vsini:
        vsini = max(vsini, MIN_START_VSINI)

    if outside not in ("error", "crop"):
        raise ValueError(f"outside must be 'error' or 'crop', not {outside!r}")
    order_indices = list(range(len(orders)))
    for name, forest, cl in (("stellar", star0, star_clone), ("telluric", tell0, tell_clone)):
        if forest is None:
            continue
        lo, hi = _forest_range(forest, cl)
        if outside == "crop":
            orders, order_indices = _crop_orders(orders, order_indices, lo, hi, name)
        data_lo = min(float(o.wavelength[o.good].min()) for o in orders if o.good.any())
        data_hi = max(float(o.wavelength[o.good].max()) for o in orders if o.good.any())
        if data_lo < lo or data_hi > hi:
            raise ValueError(
                f"the data span {data_lo:.2f}–{data_hi:.2f} Å but the {name} clone covers only "
                f"{lo:.2f}–{hi:.2f} Å; clone a wider range of the template"
                + _orders_inside_hint(orders, lo, hi)
                + " (or pass outside='crop')"
            )
    finest_pixel = _finest_pixel_kms(orders)
    step_kms_source = "given"
    if step_kms is None:
        step_kms = max(MIN_AUTO_STEP_KMS, min(DEFAULT_STEP_KMS, finest_pixel / 3.0))
        step_kms_source = "auto"
    if step_kms > 0.5 * finest_pixel:
        warnings.warn(
            f"the fine model grid's step of {step_kms:.3g} km/s is coarser than half the "
            f"data's finest pixels ({finest_pixel:.3g} km/s): the model misplaces flux within "
            f"pixels; pass step_kms <= {finest_pixel / 3:.3g} for a model at the pixels' "
            "precision (the cost grows as 1/step_kms)",
            UserWarning,
            stacklevel=3,
        )
    search = None
    search_vsini = fit_vsini and global_epochs > 0  # global_epochs=0: the globals stay put
    if (fit_rv and rv_search > 0) or search_vsini:
        search = _joint_search(
            star0,
            tell0,
            orders,
            rv=rv,
            rv_half_width=rv_search if fit_rv else 0.0,
            vsini=vsini,
            fit_vsini=search_vsini,
            vsini_max=vsini_max,
            resolving_power=resolving_power,
            limb_darkening=limb_darkening,
            step_kms=step_kms,
            relativistic=relativistic,
        )
        if fit_rv and rv_search > 0:
            rv = search.best_rv
        if search_vsini:
            vsini = max(search.best_vsini, MIN_START_VSINI)
    # Keep the inputs untouched: train copies.
    star = copy.deepcopy(star0).to(device=dev, dtype=dtype)
    star.relativistic = relativistic
    star.set_trainable(())
    ln_a0_star = star.ln_amplitude.detach().clone()
    tell = None
    ln_a0_tell = None
    if tell0 is not None:
        tell = copy.deepcopy(tell0).to(device=dev, dtype=dtype)
        tell.set_trainable(())
        ln_a0_tell = tell.ln_amplitude.detach().clone()

    auto_degree = continuum_degree == "auto"
    if auto_degree:  # the most it may need; lowered once the template is in place
        continuum_degree = MAX_AUTO_CONTINUUM_DEGREE
    model = ForwardModel(
        star,
        [o.edges for o in orders],
        telluric=tell,
        rv=rv,
        vsini=vsini,
        limb_darkening=limb_darkening,
        resolving_power=resolving_power,
        step_kms=step_kms,
        vsini_max=vsini_max if vsini_max is not None else max(3.0 * vsini, vsini + 50.0),
        rv_max=rv_max,
        continuum_degree=continuum_degree,
        fit_rv=fit_rv,
        fit_vsini=fit_vsini,
        fit_limb_darkening=fit_limb_darkening,
        fit_resolving_power=fit_resolving_power,
        fit_telluric_scale=fit_telluric_scale and tell is not None,
        fit_telluric_shift=fit_telluric_shift and tell is not None,
        fit_line_strength=fit_line_strength,
        fit_veiling=fit_veiling,
        dtype=dtype,
        device=dev,
    )
    data = torch.as_tensor(np.concatenate([o.flux for o in orders]), dtype=dtype, device=dev)
    inv_sigma = torch.as_tensor(
        1.0 / np.concatenate([o.sigma for o in orders]), dtype=dtype, device=dev
    )
    good = torch.as_tensor(np.concatenate([o.good for o in orders]), device=dev)
    empty = getattr(model.averager, "empty", None)
    if empty is not None:
        good = good & ~torch.as_tensor(empty, device=dev)
    n_good = int(good.sum())
    n_continuum = int(model.continuum_coefficients.numel())
    if n_good < 10 * (n_continuum + 4):
        warnings.warn(
            f"only {n_good} good pixels to constrain {n_continuum} continuum coefficients, RV, "
            "v sin i and the line amplitudes: the fit and its uncertainties are unreliable "
            "(check the mask)",
            BadPixelWarning,
            stacklevel=3,
        )

    def chi2():
        return _chi2(model, data, inv_sigma, good)

    # Stage 1: RV grid search with linear continuum.
    if auto_degree:  # first guess from the data alone, refined below with the template
        model.set_continuum_degree(max(_envelope_degree(o) for o in orders))
    _solve_continuum(model, data, inv_sigma, good)
    if auto_degree:
        model.set_continuum_degree(_template_continuum_degree(model, orders))
        _solve_continuum(model, data, inv_sigma, good)
    n_clipped = 0

    def clip_outliers():
        nonlocal good, n_good, n_clipped
        spikes = _upward_outliers(model, data, inv_sigma, good, clip_sigma)
        count = int(spikes.sum())
        if count:
            good = good & ~spikes
            n_good = int(good.sum())
            n_clipped += count
            clipped = spikes.cpu().numpy()
            start = 0
            for o in orders:
                o.good = o.good & ~clipped[start : start + o.good.size]
                start += o.good.size
            _solve_continuum(model, data, inv_sigma, good)

    if clip_sigma is not None:  # cosmic rays would bias the global stage: clip them first
        clip_outliers()
    with torch.no_grad():
        initial_chi2 = float(chi2()) / max(n_good, 1)

    global_lrs = {
        "rv": 0.02,
        "rotation.vsini": 0.05,
        "rotation.limb_darkening": 0.01,
        "instrument.log_resolving_power": 0.002,
        "continuum_coefficients": 0.002,
        "ln_telluric_scale": 0.01,
        "telluric_shift": 0.02,
        "ln_line_strength": 0.01,
        "veiling": 0.01,
    }

    def global_groups(continuum: bool = True):
        groups = []
        for name, p in model.named_parameters():
            if name == "continuum_coefficients" and not continuum:
                continue
            if name in global_lrs and p.requires_grad:
                groups.append({"params": [p], "lr": global_lrs[name]})
        return groups

    def profiled_chi2_per_pixel():
        # the global stages' loss: the continuum solved exactly at every evaluation
        return _profiled_chi2(model, data, inv_sigma, good) / n_good

    def fit_profiled_globals(stage, label):
        """Run a global stage on the continuum-profiled χ²; the continuum then matches."""
        losses = []
        groups = global_groups(continuum=False)
        if groups and global_epochs > 0:
            losses = stage(
                model, profiled_chi2_per_pixel, groups, global_epochs, progress, label,
                num_threads,
            )  # fmt: skip
        # L-BFGS's last evaluation may have been a rejected trial point
        _solve_continuum(model, data, inv_sigma, good)
        return losses

    def rerun_above_default_ceiling():
        """If v sin i presses on the default ceiling, the fit rerun from it with a ceiling
        three times higher (the kernel length, and so the fine grid, depend on it)."""
        ceiling = model.rotation.vsini_max
        if not (
            fit_vsini
            and call["vsini_max"] is None
            and checkpoint is None
            and resume is None
            and float(model.rotation.effective_vsini().detach()) >= 0.99 * ceiling
            and ceiling < MAX_AUTO_VSINI_CEILING
        ):
            return None
        result = fit(**{**call, "vsini": ceiling})
        raised = result.meta.get("vsini_ceilings_raised_from", [])
        result.meta["vsini_ceilings_raised_from"] = [ceiling, *raised]
        return result

    r_floor_lowerings = 0

    def after_step(epoch):
        nonlocal r_floor_lowerings
        star.clamp_()
        if tell is not None:
            tell.clamp_()
        if epoch % 100 == 0:
            model.relayout()
            return True  # new windows, new loss: the convergence test starts afresh
        if (
            epoch % 10 == 0
            and r_floor_lowerings < MAX_R_FLOOR_LOWERINGS
            and _lower_r_floor_if_near(model)
        ):
            r_floor_lowerings += 1
            return True  # a longer instrumental kernel: the loss changed
        return False

    history = TrainingHistory()
    # Stage 2: globals only. A free R first waits for v sin i: started together from a
    # v sin i far below the star's, R drops to make up the broadening and the pair settles
    # in a worse minimum (v sin i 15 km/s injected: R 14,000 and v sin i 3.2, χ² up 30 %).
    if model.rotation.vsini.requires_grad and global_epochs > 0:
        _vsini_grid_search(model, profiled_chi2_per_pixel)
        _solve_continuum(model, data, inv_sigma, good)
    log_r = model.instrument.log_resolving_power
    if log_r.requires_grad and global_epochs > 0:
        log_r.requires_grad_(False)
        history.loss += fit_profiled_globals(_fit_globals, "globals")
        log_r.requires_grad_(True)
    if global_epochs > 0:
        history.loss += fit_profiled_globals(_fit_globals_lowering_r, "globals")

        def valley(model, loss_fn, groups, iterations, progress, label, num_threads):
            return _search_rotation_resolution_valley(
                model, loss_fn, groups, iterations, progress, num_threads
            )

        history.loss += fit_profiled_globals(valley, "globals")
        rerun = rerun_above_default_ceiling()  # before the line stage's cost, if so
        if rerun is not None:
            return rerun
    if clip_sigma is not None:  # again, now that the globals fit
        clip_outliers()
    if n_clipped:
        warnings.warn(
            f"masked {n_clipped} pixels above the continuum and the model by more than "
            f"clip_sigma = {clip_sigma:g} robust σ (cosmic rays, hot pixels or emission)",
            BadPixelWarning,
            stacklevel=3,
        )

    # Stage 3: lines join, with the L1 prior. The state before it is kept: a line stage
    # that leaves χ² worse than it found it (a diverging learning rate) is undone.
    with torch.no_grad():
        chi2_before_lines = _solve_continuum(model, data, inv_sigma, good)
    state_before_lines = copy.deepcopy(model.state_dict())
    start_line_values = _line_values(star)
    start_tell_values = None if tell is None else _line_values(tell)
    star.set_trainable(trainable)
    if tell is not None:
        tell.set_trainable(telluric_trainable)

    start = {
        id(f): {n: getattr(f, n).detach().clone() for n in ("ln_sigma", "ln_gamma", "center_shift")}
        for f in (star, tell)
        if f is not None
    }
    gaussian_priors = [
        (name, width)
        for name, width in (
            ("ln_sigma", prior_ln_sigma),
            ("ln_gamma", prior_ln_gamma),
            ("center_shift", prior_center),
        )
        if width is not None
    ]

    def total_loss():
        loss = 0.5 * chi2()
        loss = loss + (prior_weight / prior_scale) * torch.sum(
            torch.abs(star.ln_amplitude - ln_a0_star)
        )
        if tell is not None:
            loss = loss + (prior_weight / prior_scale) * torch.sum(
                torch.abs(tell.ln_amplitude - ln_a0_tell)
            )
        for forest in (star, tell):
            if forest is None:
                continue
            for name, width in gaussian_priors:
                delta = (getattr(forest, name) - start[id(forest)][name]) / width
                loss = loss + 0.5 * torch.sum(delta * delta)
        return loss

    line_groups = []
    for forest in (star, tell):
        if forest is None:
            continue
        for name, p in forest.named_parameters():
            if p.requires_grad:
                # Centres move in Å: a step of lr·(0.05 Å) ~ 1 mÅ; log-parameters move by lr.
                lr = learning_rate * (0.05 if name == "center_shift" else 1.0)
                line_groups.append({"params": [p], "lr": lr})
    # The RV holds still while the lines learn and is re-fitted afterwards (stage 4): moved
    # together, the amplitudes of blended lines follow the RV as it wanders and lock it off
    # its optimum (injection tests at v sin i = 15 km/s, S/N 300: +69 ± 77 m/s jointly,
    # +3 ± 24 m/s this way, reported σ 21 m/s).
    # The line strength and the veiling hold still too: trained with the amplitudes, they
    # drift along a valley the amplitudes make flat (an unveiled injection: veiling 0.39,
    # line strength 1.39, "± 0.02"), so they stay what the global stage measured against
    # the clone as it was.
    held = [p for p in (model.rv, model.ln_line_strength, model.veiling) if p.requires_grad]
    fit_rv_now = model.rv.requires_grad
    for p in held:
        p.requires_grad_(False)
    if line_groups and epochs > 0:
        groups = global_groups() + line_groups
        h = optimize(
            model,
            total_loss,
            epochs=epochs,
            learning_rate=learning_rate,
            rtol=rtol,
            patience=30,
            progress=progress,
            description="fit: lines",
            param_groups=groups,
            after_step=after_step,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds,
            resume=resume,
            num_threads=num_threads,
            cuda_graph=cuda_graph,
            graph_key=lambda: (
                id(model.stellar_layout),
                id(model.telluric_layout),
                model.instrument.half_width,
            ),
        )
        history.loss += h.loss
    star.set_trainable(())
    if tell is not None:
        tell.set_trainable(())
    # Stage 4: polish the globals, the RV included, with the lines frozen, on windows
    # sized from the lines as learnt (the layout the result is evaluated on; polishing
    # first and re-sizing after left χ² computed on a model the polish never saw).
    model.relayout()
    for p in held:
        p.requires_grad_(True)
    history.loss += fit_profiled_globals(_fit_globals_lowering_r, "polish")
    with torch.no_grad():
        chi2_after_lines = float(chi2())
    line_stage_undone = False
    if line_groups and epochs > 0 and not chi2_after_lines <= chi2_before_lines * (1 + 1e-6):
        model.load_state_dict(state_before_lines)
        model.relayout()
        _solve_continuum(model, data, inv_sigma, good)
        line_stage_undone = True
        warnings.warn(
            f"the line stage left chi2 worse than before it ({chi2_after_lines:.6g} against "
            f"{chi2_before_lines:.6g}; a learning rate of {learning_rate:g} too large?): its "
            "changes are undone and the lines are those of the input clone",
            FitQualityWarning,
            stacklevel=3,
        )

    n_free = sum(
        p.numel() for n, p in model.named_parameters() if n in global_lrs and p.requires_grad
    )
    # Trained line parameters count as degrees of freedom where they left their prior's
    # kink (the lasso's effective number: its non-zero departures), so χ²_red ≈ 1 at
    # the true noise after the lines learn.
    n_line_dof = 0
    if not line_stage_undone and epochs > 0:
        n_line_dof = _effective_line_parameters(star, start_line_values, trainable, learning_rate)
        if tell is not None:
            n_line_dof += _effective_line_parameters(
                tell, start_tell_values, telluric_trainable, learning_rate
            )
    n_dof = n_good - n_free - n_line_dof
    with torch.no_grad():
        final_chi2 = float(chi2())
    chi2_red = final_chi2 / n_dof if n_dof > 0 else float("nan")
    jacobian = _jacobian(model, data, inv_sigma, good)
    curvature_uncertainties = _global_uncertainties(jacobian)
    # The Fisher matrix with the active lines' amplitudes (and the continua) marginalised,
    # order by order, gives each trained line's σ(ln a), and the globals' errors as if
    # every active line were free. Those are not the reported ones: the fit holds the
    # RV while the lines learn and polishes it with them frozen, and over injections
    # (Y band, S/N 200, 10 seeds) its RV and v sin i scatter 1.27× and 1.0× the
    # lines-held errors but 0.45× and 0.54× the marginalised ones (meta keeps both).
    marginalised_uncertainties = {}
    line_ln_amplitude_sigma = np.full(star.n_lines, np.nan)
    active = np.zeros(0, dtype=np.int64)
    if not line_stage_undone and epochs > 0:
        active = _active_lines(star, start_line_values, trainable, learning_rate)
    if active.size:
        marginalised_uncertainties, line_ln_amplitude_sigma = _marginal_uncertainties(
            model, jacobian, active, inv_sigma, good
        )
    final_vsini = float(model.rotation.effective_vsini().detach())
    rerun = rerun_above_default_ceiling()
    if rerun is not None:
        return rerun
    uncertainty_notes = _warn_at_bounds(
        model, curvature_uncertainties, fit_vsini, fit_resolving_power
    )
    fitted = {
        "rv": fit_rv,
        "vsini": fit_vsini,
        "resolving_power": fit_resolving_power,
        "limb_darkening": fit_limb_darkening,
        "line_strength": fit_line_strength,
        "veiling": fit_veiling,
    }
    if n_dof <= 0:
        for name, is_free in fitted.items():
            if is_free:
                curvature_uncertainties[name] = float("nan")
                uncertainty_notes[name] = (
                    f"{n_good} good pixels for {n_free + n_line_dof} free parameters: "
                    "nothing left to estimate an error from"
                )
    for name, is_free in fitted.items():
        if (
            is_free
            and name not in uncertainty_notes
            and not math.isfinite(curvature_uncertainties.get(name, float("nan")))
        ):
            uncertainty_notes[name] = "the χ² curvature gave no finite variance"
            if name == "vsini" and final_vsini < 0.5 * model.rotation.step_kms:
                uncertainty_notes[name] = (
                    f"v sin i = {final_vsini:.3g} km/s is below half the model grid's step "
                    f"({model.rotation.step_kms:g} km/s), where the rotation kernel is a delta: "
                    "unresolved, consistent with 0"
                )
            hint = (
                " (is it degenerate with another free parameter, or does the model not "
                "depend on it?)"
                if uncertainty_notes[name].startswith("the χ² curvature")
                else ""
            )
            if name in ("line_strength", "veiling"):
                continue  # nuisance-like globals: the note says it, no warning
            warnings.warn(
                f"no uncertainty for {name}: {uncertainty_notes[name]}{hint}",
                UserWarning,
                stacklevel=3,
            )
    # Birge ratio: a misfit (χ²_red > 1) means the uncertainties understate the scatter
    # the data leave around the model, so the curvature errors are scaled by √χ²_red.
    uncertainty_scale = math.sqrt(max(1.0, chi2_red)) if math.isfinite(chi2_red) else 1.0
    uncertainties = {k: v * uncertainty_scale for k, v in curvature_uncertainties.items()}
    line_ln_amplitude_sigma = line_ln_amplitude_sigma * uncertainty_scale
    final_rv = float(model.rv.detach())
    star_lo, star_hi = _forest_range(star0, star_clone)
    rest_frame_outside = _warn_rest_frame_coverage(
        orders, final_rv, star_lo, star_hi, relativistic, "the final"
    )
    values = {
        "rv": final_rv,
        "vsini": float(model.rotation.effective_vsini().detach()),
    }
    order_columns = _order_diagnostics(model, jacobian, values, order_indices)
    order_chi2, order_dof = _order_agreement(order_columns, final_rv)
    flags = _fit_flags(
        search=search,
        rv=final_rv,
        rv_max=rv_max,
        n_dof=n_dof,
        n_good=n_good,
        n_free=n_free + n_line_dof,
        uncertainty_notes=uncertainty_notes,
        line_stage_undone=line_stage_undone,
        order_chi2=order_chi2,
        order_dof=order_dof,
        rest_frame_outside=rest_frame_outside,
        chi2_red=chi2_red,
    )

    template_forest = copy.deepcopy(star).cpu()
    template_forest.set_trainable(star0.trainable)
    if star_clone is not None:
        template = CloneResult(
            template_forest,
            star_clone.wavelength,
            star_clone.target_flux,
            star_clone.continuum,
            star_clone.history,
            star_clone.initial,
            dict(star_clone.meta, transfer_learned=True),
        )
    else:
        c = template_forest.center_ref.numpy()
        wl = np.exp(np.arange(np.log(c.min()), np.log(c.max()), step_kms / C_KMS / 4))
        template = CloneResult(
            template_forest,
            wl,
            np.full_like(wl, np.nan),
            np.ones_like(wl),
            meta={"transfer_learned": True},
        )
    return FitResult(
        rv=float(model.rv.detach()),
        vsini=float(model.rotation.effective_vsini().detach()),
        resolving_power=float(model.instrument.resolving_power.detach()),
        limb_darkening=float(model.rotation.limb_darkening.detach()),
        uncertainties=uncertainties,
        chi2_reduced=chi2_red,
        forward_model=model,
        template=template,
        order_data=orders,
        history=history,
        telluric=tell,
        initial_chi2_reduced=initial_chi2,
        stellar_clone=star_clone if star_clone is not None else star0,
        flags=flags,
        line_ln_amplitude_uncertainty=line_ln_amplitude_sigma,
        meta={
            "free": sorted(free_set),
            "line_strength": float(model.line_strength().detach()),
            "veiling": float(model.effective_veiling().detach()),
            "n_line_dof": n_line_dof,
            "n_dof": n_dof,
            "search": None if search is None else search.summary(),
            "orders": order_columns,
            "order_rv_chi2": order_chi2,
            "order_rv_dof": order_dof,
            "line_stage_undone": line_stage_undone,
            "n_good_pixels": n_good,
            "prior_scale": prior_scale,
            "prior_weight": prior_weight,
            "trainable": list(trainable),
            "step_kms": step_kms,
            "step_kms_source": step_kms_source,
            "continuum_degree": int(model.continuum_coefficients.shape[1] - 1),
            "continuum_degree_source": "auto" if auto_degree else "given",
            "resolving_power_source": resolving_power_source,
            "n_clipped": n_clipped,
            "order_indices": order_indices,
            # uncertainties = curvature_uncertainties × uncertainty_scale (√max(1, χ²_red))
            "uncertainty_scale": uncertainty_scale,
            "curvature_uncertainties": curvature_uncertainties,
            # the same with the active lines' amplitudes marginalised (unscaled)
            "uncertainties_lines_marginalised": marginalised_uncertainties,
            "n_active_lines": int(active.size),
            # why a fitted parameter has a NaN uncertainty (empty when none has)
            "uncertainty_notes": uncertainty_notes,
            # the instrumental kernel's floor at the end (lowered when R came near it)
            "resolving_power_floor": model.instrument.resolving_power_min,
            # good pixels outside the stellar clone's range in the rest frame, at the end
            "rest_frame_outside_fraction": rest_frame_outside,
            "flux_scale": [float(o.scale) for o in orders],
            # the unit of the data (and of every flux-like result); "" when none was given
            "flux_unit": "" if flux_unit is None else flux_unit.to_string(),
        },
    )


def _upward_outliers(model, data, inv_sigma, good, clip_sigma: float) -> torch.Tensor:
    """Good pixels far above both the model and the line-free continuum (bool tensor).

    The threshold is ``clip_sigma`` times the larger of 1 and the robust (MAD) scatter of
    the normalised residuals, so a model that is still rough (residuals of many σ) clips
    only what stands out from its own misfit. Absorption lines that the model makes too
    deep leave the data below the continuum and are never clipped.
    """
    with torch.no_grad():
        residual = (data - model()) * inv_sigma
        values = residual[good]
        if values.numel() < 10:
            return torch.zeros_like(good)
        scatter = 1.4826 * torch.median(torch.abs(values - torch.median(values)))
        threshold = clip_sigma * max(float(scatter), 1.0)
        above_continuum = data > model.continuum()
        return good & (residual > threshold) & above_continuum


def _crop_orders(orders, order_indices, lo: float, hi: float, name: str):
    """Mask pixels outside [lo, hi] Å; drop orders left without good pixels (warns)."""
    kept, kept_indices, n_masked = [], [], 0
    for index, o in zip(order_indices, orders):
        inside = (o.wavelength >= lo) & (o.wavelength <= hi)
        n_masked += int((o.good & ~inside).sum())
        o.good = o.good & inside
        if o.good.any():
            kept.append(o)
            kept_indices.append(index)
    if not kept:
        raise ValueError(
            f"no data inside the {name} clone's range {lo:.2f}–{hi:.2f} Å: nothing to fit"
        )
    if n_masked:
        dropped = len(orders) - len(kept)
        warnings.warn(
            f"outside='crop': masked {n_masked} pixels beyond the {name} clone's range "
            f"{lo:.2f}–{hi:.2f} Å and left out {dropped} of {len(orders)} orders",
            BadPixelWarning,
            stacklevel=4,
        )
    return kept, kept_indices


#: Velocity step of the fine model grid when the pixels are coarse enough, km/s.
DEFAULT_STEP_KMS = 0.5
#: The finest step ``fit`` chooses by itself, km/s.
MIN_AUTO_STEP_KMS = 0.05


def _finest_pixel_kms(orders: list[_Order]) -> float:
    """Width of the data's finest pixels in velocity (1st percentile over every order), km/s.

    A percentile, not the minimum, so that one odd pixel (a wavelength solution's glitch)
    does not set the fine grid of the whole fit.
    """
    widths = np.concatenate(
        [C_KMS * (o.edges[:, 1] - o.edges[:, 0]) / o.wavelength for o in orders if o.good.any()]
    )
    return float(np.percentile(widths, 1.0))


#: Fraction of the good pixels that may fall outside the stellar clone's range in the
#: star's rest frame (at the fitted RV) before :func:`fit` warns.
REST_FRAME_COVERAGE_WARN = 0.05


def _doppler_factor(rv: float, relativistic: bool) -> float:
    beta = rv / C_KMS
    return math.sqrt((1 + beta) / (1 - beta)) if relativistic else 1 + beta


def _rest_frame_outside(orders: list[_Order], rv: float, lo: float, hi: float, relativistic):
    """Fraction of good pixels whose rest-frame wavelength (at ``rv``) is outside [lo, hi]."""
    factor = _doppler_factor(rv, relativistic)
    n_good = n_out = 0
    for o in orders:
        rest = o.wavelength[o.good] / factor
        n_good += rest.size
        n_out += int(np.count_nonzero((rest < lo) | (rest > hi)))
    return n_out / max(n_good, 1)


def _warn_rest_frame_coverage(orders, rv, lo, hi, relativistic, when: str) -> float:
    """Warn when the stellar clone misses much of the data in the star's rest frame.

    The range check before the fit compares the data with the clone as observed; what the
    model can explain is the clone shifted by the RV, so a fit whose RV wandered far
    (a start far off, a wrong minimum) models part of the data as bare continuum.
    Returns the fraction of good pixels outside.
    """
    outside = _rest_frame_outside(orders, rv, lo, hi, relativistic)
    if outside > REST_FRAME_COVERAGE_WARN:
        warnings.warn(
            f"{when} RV of {rv:.2f} km/s puts {100 * outside:.0f} % of the good pixels outside "
            f"the stellar clone's range {lo:.2f}–{hi:.2f} Å in the star's rest frame: the "
            "model has no lines there. Check the RV (start closer with rv=, or narrow "
            "rv_search) or clone a wider range of the template",
            UserWarning,
            stacklevel=4,
        )
    return outside


def _orders_inside_hint(orders: list[_Order], lo: float, hi: float) -> str:
    """', or fit only orders …' naming the orders (input positions) inside [lo, hi] Å."""
    if len(orders) < 2:
        return ""
    inside = [
        k
        for k, o in enumerate(orders)
        if o.good.any() and o.wavelength[o.good].min() >= lo and o.wavelength[o.good].max() <= hi
    ]
    if not inside:
        return f" (none of the {len(orders)} orders lies inside it)"
    runs, start = [], inside[0]
    for previous, current in zip(inside, inside[1:] + [None]):
        if current != previous + 1:
            runs.append(str(start) if start == previous else f"{start}–{previous}")
            start = current
    return (
        f", or fit only the {len(inside)} of {len(orders)} orders inside it "
        f"(orders {', '.join(runs)}, counting from 0)"
    )


def _initial_resolving_power(resolving_power, instrument) -> tuple[float, str]:
    """The starting R and where it came from (given, the instrument's, or the default)."""
    from .astro.instruments import DEFAULT_RESOLVING_POWER, nominal_resolving_power

    if resolving_power is not None:
        return float(resolving_power), "given"
    nominal = nominal_resolving_power(instrument)
    if nominal is not None:
        return nominal, f"nominal for {instrument}"
    return DEFAULT_RESOLVING_POWER, "default"


def _warn_at_bounds(model: ForwardModel, uncertainties: dict, fit_vsini: bool, fit_r: bool) -> dict:
    """Warn (and drop the curvature error) when a global parameter ended on its bound.

    Returns ``{name: reason}`` for every uncertainty dropped.
    """
    notes = {}
    if fit_vsini:
        vsini = float(model.rotation.effective_vsini().detach())
        if vsini >= 0.99 * model.rotation.vsini_max:
            uncertainties["vsini"] = float("nan")
            notes["vsini"] = (
                f"v sin i ended at its ceiling vsini_max = {model.rotation.vsini_max:.4g} km/s"
            )
            warnings.warn(
                f"{notes['vsini']}; refit with a larger vsini or vsini_max",
                UserWarning,
                stacklevel=4,
            )
    if fit_r:
        r = float(model.instrument.resolving_power.detach())
        r_min = model.instrument.resolving_power_min
        if r_min is not None and r <= 1.01 * r_min:
            uncertainties["resolving_power"] = float("nan")
            notes["resolving_power"] = (
                f"R ended at {r:.0f}, at the smallest R its kernel holds ({r_min:.0f}), after "
                f"{MAX_R_FLOOR_LOWERINGS} lowerings of that floor in a stage"
            )
            warnings.warn(
                f"the resolving power ended at {r:.0f}, at or below the smallest R its kernel "
                f"holds ({r_min:.0f}); the instrumental kernel is truncated: refit starting "
                "from a lower resolving_power",
                UserWarning,
                stacklevel=4,
            )
    return notes


#: A free R within this factor of its kernel's floor lowers the floor (see below).
R_FLOOR_MARGIN = 1.1
#: At most this many floor lowerings per stage (each halves the floor).
MAX_R_FLOOR_LOWERINGS = 4


def _lower_r_floor_if_near(model: ForwardModel) -> bool:
    """Lower the instrumental kernel's floor to R/2 when a free R comes near it.

    The kernel is built for R down to R₀/2; a fit that wants less (the nominal R is too
    high) would press against the truncated kernel and stop there. Returns whether the
    floor moved (the model changed: the caller continues the stage).
    """
    inst = model.instrument
    if not inst.log_resolving_power.requires_grad:
        return False
    r = float(inst.resolving_power.detach())
    if r > R_FLOOR_MARGIN * inst.resolving_power_min:
        return False
    return model.lower_resolving_power_floor(min(r, inst.resolving_power_min) / 2.0)


def _fit_globals_lowering_r(model, loss_fn, groups, iterations, progress, label, num_threads):
    """:func:`_fit_globals`, rerun after lowering R's kernel floor while R presses on it."""
    loss = _fit_globals(model, loss_fn, groups, iterations, progress, label, num_threads)
    for _ in range(MAX_R_FLOOR_LOWERINGS):
        if not _lower_r_floor_if_near(model):
            break
        loss += _fit_globals(model, loss_fn, groups, iterations, progress, label, num_threads)
    return loss


#: v sin i below this multiple of the instrumental FWHM (c/R) trades off against R.
DEGENERATE_VSINI_FRACTION = 1.5
#: Where the v sin i profile is sampled, as fractions of the instrumental FWHM (c/R).
VALLEY_VSINI_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4)
#: Rotational width per unit v sin i added in quadrature to the instrument's FWHM (about
#: the FWHM of the limb-darkened rotation profile over v sin i, measured along the valley).
ROTATION_WIDTH_PER_VSINI = 1.1


def _search_rotation_resolution_valley(
    model, loss_fn, groups, iterations, progress, num_threads
) -> list[float]:
    """With R and v sin i both free and v sin i not much above the resolution, profile χ²
    along v sin i and restart the joint fit from the best point.

    Below about the instrument's FWHM the two broadenings trade off: χ² has a long, narrow,
    curved valley of near-constant total width, along which a joint optimiser crawls and
    stops near wherever it entered it (v sin i = 0 is moreover a stationary point). In a
    noiseless injection at v sin i 3 km/s and R 60,000, the joint fit started from R 45,000
    ended at v sin i 0.05, R 49,600 (χ² 2.4× that at the truth) and from 70,000 at 3.7,
    69,900 (5×). Here v sin i is held at ``f · c/R`` for the fractions
    ``VALLEY_VSINI_FRACTIONS`` while R (started where ``(c/R)² + (1.1 v sin i)²`` keeps
    the current total width) and the other globals are fitted: a well-conditioned problem
    whose minimum is the profile χ²(v sin i). The joint fit then restarts from the best
    sample, refined by a parabola through its neighbours. Returns the losses if the result
    beats the current state (else the state is left as it was).
    """
    rotation, instrument = model.rotation, model.instrument
    if not (rotation.vsini.requires_grad and instrument.log_resolving_power.requires_grad):
        return []
    fwhm_kms = C_KMS / float(instrument.resolving_power.detach())
    vsini_now = float(rotation.effective_vsini().detach())
    if vsini_now >= DEGENERATE_VSINI_FRACTION * fwhm_kms:
        return []
    width2 = fwhm_kms**2 + (ROTATION_WIDTH_PER_VSINI * vsini_now) ** 2
    with torch.no_grad():
        loss_now = float(loss_fn())
    saved = copy.deepcopy(model.state_dict())
    brief = max(3, iterations // 3)
    samples = []  # (v sin i, loss, R)
    rotation.vsini.requires_grad_(False)
    try:
        for fraction in VALLEY_VSINI_FRACTIONS:
            vsini = min(fraction * fwhm_kms, 0.9 * rotation.vsini_max)
            instrument2 = width2 - (ROTATION_WIDTH_PER_VSINI * vsini) ** 2
            if instrument2 < (0.3 * fwhm_kms) ** 2:
                break  # the rest would need an R beyond reach
            model.load_state_dict(saved)
            with torch.no_grad():
                rotation.vsini.fill_(vsini)
                instrument.log_resolving_power.fill_(math.log(C_KMS / math.sqrt(instrument2)))
            _fit_globals(model, loss_fn, groups, brief, progress, "v sin i profile", num_threads)
            with torch.no_grad():
                samples.append(
                    (vsini, float(loss_fn()), float(instrument.resolving_power.detach()))
                )
    finally:
        rotation.vsini.requires_grad_(True)
    if not samples:
        model.load_state_dict(saved)
        return []
    vsinis, losses, powers = (np.array(x) for x in zip(*samples))
    k = int(np.argmin(losses))
    vsini, power = vsinis[k], powers[k]
    if 0 < k < len(samples) - 1:  # parabola through the best sample and its neighbours
        y0, y1, y2 = losses[k - 1 : k + 2]
        den = y0 - 2 * y1 + y2
        if den > 0:
            shift = 0.5 * (vsinis[k + 1] - vsinis[k]) * (y0 - y2) / den
            vsini = vsini + shift
            power = np.interp(vsini, vsinis, powers)
    model.load_state_dict(saved)
    with torch.no_grad():
        rotation.vsini.fill_(max(float(vsini), MIN_START_VSINI))
        instrument.log_resolving_power.fill_(math.log(float(power)))
    history = _fit_globals(model, loss_fn, groups, iterations, progress, "globals", num_threads)
    with torch.no_grad():
        if float(loss_fn()) < loss_now:
            return history
    model.load_state_dict(saved)
    return []


def _fit_globals(model, loss_fn, groups, iterations, progress, label, num_threads) -> list[float]:
    """L-BFGS on the few global parameters; falls back to Adam if a step diverges."""
    saved = copy.deepcopy(model.state_dict())
    try:
        h = optimize(
            model,
            loss_fn,
            epochs=iterations,
            learning_rate=1.0,
            rtol=1e-9,
            patience=3,
            optimizer="lbfgs",
            progress=progress,
            description=f"fit: {label}",
            param_groups=groups,
            num_threads=num_threads,
        )
        return h.loss
    except FloatingPointError:
        model.load_state_dict(saved)
    h = optimize(
        model,
        loss_fn,
        epochs=20 * iterations,
        learning_rate=0.01,
        rtol=1e-9,
        patience=20,
        progress=progress,
        description=f"fit: {label} (Adam)",
        param_groups=groups,
        num_threads=num_threads,
    )
    return h.loss


#: Global parameters with curvature uncertainties: (name, parameter getter, step of the
#: central difference, whether the parameter is stored as a logarithm).
_UNCERTAINTY_SPECS = (
    ("rv", lambda m: m.rv, 0.01, False),
    ("vsini", lambda m: m.rotation.vsini, 0.02, False),
    ("limb_darkening", lambda m: m.rotation.limb_darkening, 0.01, False),
    ("resolving_power", lambda m: m.instrument.log_resolving_power, 1e-3, True),
    ("line_strength", lambda m: m.ln_line_strength, 1e-3, True),
    ("veiling", lambda m: m.veiling, 1e-3, False),
)


@dataclass
class _Jacobian:
    """Weighted model derivatives at the solution, for the errors and per-order steps."""

    names: list
    columns: torch.Tensor  # [n, p]: ∂model/∂θ · w
    nuisance: list  # per order [n_k, q]: the continuum columns of that order's pixels
    residual: torch.Tensor  # [n]: (data − model) · w
    rows: list  # per order: boolean pixel selection
    log_scale: dict  # name → factor turning a log-parameter σ into the parameter's


@torch.no_grad()
def _jacobian(model: ForwardModel, data, inv_sigma, good) -> _Jacobian:
    """Central-difference Jacobian of the free globals (one-sided at a bound of 0)."""
    w = (inv_sigma * good).double()
    base = model().double()
    names, cols, log_scale = [], [], {}
    for name, getter, h, is_log in _UNCERTAINTY_SPECS:
        p = getter(model)
        if not p.requires_grad:
            continue
        if name == "veiling":  # the model uses max(r, 0): difference from there
            p.clamp_(min=0.0)
        orig = p.detach().clone()
        one_sided = name == "veiling" and float(orig) - h < 0
        p.copy_(orig + h)
        m_plus = model().double()
        if one_sided:
            column = (m_plus - base) / h * w
        else:
            p.copy_(orig - h)
            column = (m_plus - model().double()) / (2 * h) * w
        p.copy_(orig)
        if torch.any(column != 0):
            # else the model does not change with it here (e.g. v sin i below half the
            # fine grid's step, where the rotation kernel is exactly a delta): no
            # curvature, no error bar (NaN, explained by the caller), not a zero variance
            names.append(name)
            cols.append(column)
            if is_log:
                log_scale[name] = float(torch.exp(orig))
    n = base.numel()
    columns = torch.stack(cols, dim=1) if cols else torch.zeros(n, 0, dtype=torch.float64)
    basis = model.continuum_basis.double()
    continuum = model.continuum().double()
    shape = torch.where(continuum != 0, base / continuum, torch.zeros_like(base))
    rows, nuisance = [], []
    for k in range(model.n_orders):
        sel = model.order_index == k
        rows.append(sel)
        nuisance.append(basis[sel] * (shape[sel] * w[sel])[:, None])
    residual = (data.double() - base) * w
    return _Jacobian(names, columns, nuisance, residual, rows, log_scale)


def _active_lines(forest: LineForest, start: dict, trainable, learning_rate) -> np.ndarray:
    """Indices of the lines whose amplitude left the L1 prior's kink (the lasso's active
    set: the lines the data, not the prior, placed)."""
    if "amplitude" not in trainable:
        return np.zeros(0, dtype=np.int64)
    delta = (forest.ln_amplitude.detach() - start["ln_amplitude"]).abs()
    return np.flatnonzero((delta > learning_rate).cpu().numpy())


def _observed_windows(model: ForwardModel, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed centres (Å, at the fitted RV) and half-widths (Å) of the footprints of
    ``lines`` in the data: three intrinsic FWHM plus v sin i and three instrumental FWHM."""
    forest = model.stellar
    with torch.no_grad():
        centre = (forest.center_ref + forest.shift(model.rv)).double().cpu().numpy()[lines]
        sigma = torch.exp(forest.ln_sigma).double().cpu().numpy()[lines]
        gamma = torch.exp(forest.ln_gamma).double().cpu().numpy()[lines]
        vsini = float(model.rotation.effective_vsini())
        resolution = C_KMS / float(model.instrument.resolving_power)
    fwhm = np.sqrt((2.3548 * sigma) ** 2 + (2 * gamma) ** 2)
    return centre, 3.0 * fwhm + centre * (vsini + 3.0 * resolution) / C_KMS


def _colour_lines(centre: np.ndarray, half: np.ndarray) -> list[list[int]]:
    """Groups of lines (positions into ``centre``) whose footprints do not overlap, so
    each group's derivatives come from one pair of model evaluations."""
    order = np.argsort(centre)
    groups: list[list[int]] = []
    reach: list[float] = []  # right edge of each group's last footprint
    for i in order:
        left = centre[i] - half[i]
        for g, edge in enumerate(reach):
            if left > edge:
                groups[g].append(int(i))
                reach[g] = centre[i] + half[i]
                break
        else:
            groups.append([int(i)])
            reach.append(centre[i] + half[i])
    return groups


@torch.no_grad()
def _line_blocks(model, jac: _Jacobian, lines: np.ndarray, inv_sigma, good, step: float = 0.02):
    """Per order: its pixels and the weighted derivative columns of the model with respect
    to the ln-amplitudes of ``lines`` there, then its continuum columns (for
    :func:`blase_specutils.core.uncertainty.marginal_covariance`), and which line each
    of the first columns belongs to."""
    forest = model.stellar
    w = (inv_sigma * good).double()
    pixel_wl = torch.as_tensor(model._all_edges.mean(1))
    centre, half = _observed_windows(model, lines)
    columns = {}  # line position → (pixel indices, values)
    parameter = forest.ln_amplitude
    original = parameter.detach().clone()
    for group in _colour_lines(centre, half):
        index = torch.as_tensor(lines[group], device=parameter.device)
        parameter[index] += step
        plus = model().double()
        parameter[index] -= 2 * step
        minus = model().double()
        parameter.copy_(original)
        change = (plus - minus).cpu() / (2 * step) * w.cpu()
        for i in group:
            inside = torch.nonzero(torch.abs(pixel_wl - centre[i]) <= half[i]).flatten()
            if inside.numel():
                columns[i] = (inside, change[inside])
    blocks, owners = [], []
    for k, rows in enumerate(jac.rows):
        rows_cpu = rows.cpu()
        position = torch.cumsum(rows_cpu.long(), 0) - 1  # pixel → row within the order
        n_k = int(rows_cpu.sum())
        mine = [i for i, (pix, _) in columns.items() if bool(rows_cpu[pix].any())]
        dense = torch.zeros(n_k, len(mine), dtype=torch.float64)
        for c, i in enumerate(mine):
            pix, values = columns[i]
            keep = rows_cpu[pix]
            dense[position[pix[keep]], c] = values[keep]
        blocks.append((rows_cpu, torch.cat([dense, jac.nuisance[k].cpu()], dim=1)))
        owners.append(mine)
    return blocks, owners


def _marginal_uncertainties(model, jac: _Jacobian, lines: np.ndarray, inv_sigma, good):
    """Errors of the globals with the trained amplitudes of ``lines`` and the continua
    marginalised, and each of those lines' σ(ln a) (NaN for the others)."""
    from .core.uncertainty import marginal_covariance

    out = {name: float("nan") for name, *_ in _UNCERTAINTY_SPECS}
    line_sigma = np.full(model.stellar.n_lines, np.nan)
    if not jac.names:
        return out, line_sigma
    blocks, owners = _line_blocks(model, jac, lines, inv_sigma, good)
    cov, variances = marginal_covariance(jac.columns.cpu(), blocks)
    if cov is not None:
        for i, name in enumerate(jac.names):
            variance = float(cov[i, i])
            if variance > 0 and math.isfinite(variance):
                out[name] = math.sqrt(variance) * jac.log_scale.get(name, 1.0)
    for mine, variance in zip(owners, variances):
        if variance is None:
            continue
        for c, i in enumerate(mine):
            v = float(variance[c])
            if v > 0 and math.isfinite(v):
                line_sigma[lines[i]] = math.sqrt(v)
    return out, line_sigma


def _global_uncertainties(jac: _Jacobian) -> dict:
    """Gauss–Newton 1-σ errors of the free globals, the continuum marginalised."""
    from .core.uncertainty import covariance

    out = {name: float("nan") for name, *_ in _UNCERTAINTY_SPECS}
    if not jac.names:
        return out
    n = jac.columns.shape[0]
    q = sum(b.shape[1] for b in jac.nuisance)
    nuisance = torch.zeros(n, q, dtype=torch.float64)
    start = 0
    for sel, block in zip(jac.rows, jac.nuisance):
        nuisance[sel, start : start + block.shape[1]] = block
        start += block.shape[1]
    cov = covariance(jac.columns, nuisance)
    if cov is None:
        return out
    for i, name in enumerate(jac.names):
        variance = float(cov[i, i])
        if variance > 0 and math.isfinite(variance):  # never a zero error bar
            out[name] = math.sqrt(variance) * jac.log_scale.get(name, 1.0)
    return out


def _order_diagnostics(model: ForwardModel, jac: _Jacobian, values: dict, order_indices):
    """Per order: its RV and v sin i one Gauss–Newton step from the joint solution (the
    lines and the other orders held), their errors (Birge-scaled by the order's own
    χ²_red) and χ²_red. Returns a dict of columns."""
    from .core.uncertainty import gauss_newton_step

    columns = {
        "order": [],
        "wavelength_min": [],
        "wavelength_max": [],
        "n_good_pixels": [],
        "chi2_reduced": [],
        "rv": [],
        "rv_uncertainty": [],
        "vsini": [],
        "vsini_uncertainty": [],
    }
    edges = model._all_edges
    for k, sel in enumerate(jac.rows):
        r = jac.residual[sel]
        used = r != 0
        n_good = int(used.sum())
        block = jac.nuisance[k]
        p = jac.columns.shape[1]
        n_dof = n_good - block.shape[1] - p
        chi2_k = float(torch.sum(r * r))
        chi2_red = chi2_k / n_dof if n_dof > 0 else float("nan")
        found = None
        if n_dof > 0 and p:
            found = gauss_newton_step(jac.columns[sel], block, r)
        birge = math.sqrt(max(1.0, chi2_red)) if math.isfinite(chi2_red) else float("nan")
        sel_np = sel.cpu().numpy()
        columns["order"].append(int(order_indices[k]))
        columns["wavelength_min"].append(float(edges[sel_np, 0].min()))
        columns["wavelength_max"].append(float(edges[sel_np, 1].max()))
        columns["n_good_pixels"].append(n_good)
        columns["chi2_reduced"].append(chi2_red)
        for name in ("rv", "vsini"):
            value, error = float("nan"), float("nan")
            if found is not None and name in jac.names:
                i = jac.names.index(name)
                step, cov = found
                value = values[name] + float(step[i])
                variance = float(cov[i, i])
                if variance > 0 and math.isfinite(variance):
                    error = math.sqrt(variance) * birge
            columns[name].append(value)
            columns[f"{name}_uncertainty"].append(error)
    return columns


def _fit_flags(*, search, rv, rv_max, n_dof, n_good, n_free, uncertainty_notes,
               line_stage_undone, order_chi2, order_dof, rest_frame_outside,
               chi2_red) -> dict:  # fmt: skip
    """Reasons to distrust a fit, ``{code: message}`` (empty when there are none).

    Flags that already have their own warning (a bound, the search edge, the rest-frame
    coverage, an undone line stage) are not warned again; the others warn here.
    """
    from scipy.stats import chi2 as chi2_distribution

    flags, quiet = {}, set()
    if search is not None:
        if search.at_edge:
            flags["search_edge"] = (
                f"the search's best RV {search.best_rv:.1f} km/s is on the edge of its range "
                f"{search.rv[0]:.0f} to {search.rv[-1]:.0f} km/s"
            )
            quiet.add("search_edge")
        if len(search.minima) > 1:
            best, second = search.minima[0], search.minima[1]
            scale = max(1.0, best["chi2"] / max(int(search.n_good.sum()), 1))
            delta = (second["chi2"] - best["chi2"]) / scale
            if delta < AMBIGUOUS_DELTA_CHI2:
                flags["rv_ambiguous"] = (
                    f"the search found a second minimum at RV {second['rv']:.1f} km/s "
                    f"(v sin i {second['vsini']:.0f}) only Δχ² = {delta:.1f} (scaled by "
                    f"χ²_red {scale:.3g}) above the best at {best['rv']:.1f} km/s"
                )
    if abs(rv) > rv_max:
        flags["rv_beyond_rv_max"] = f"|RV| = {abs(rv):.1f} km/s exceeds rv_max = {rv_max:g} km/s"
    if n_dof <= 0:
        flags["too_few_pixels"] = f"{n_good} good pixels for {n_free} free parameters"
    for name, note in uncertainty_notes.items():
        if "ceiling" in note or "smallest R" in note:
            flags[f"{name}_at_bound"] = note
            quiet.add(f"{name}_at_bound")
    if line_stage_undone:
        flags["line_stage_undone"] = "the line stage made χ² worse and was undone"
        quiet.add("line_stage_undone")
    if order_dof > 0 and math.isfinite(order_chi2):
        p_value = float(chi2_distribution.sf(order_chi2, order_dof))
        if p_value < ORDER_DISAGREEMENT_P:
            flags["orders_disagree"] = (
                f"the per-order RVs scatter about the joint RV with χ² = {order_chi2:.1f} for "
                f"{order_dof} degrees of freedom (p = {p_value:.2g}): see result.orders"
            )
    if rest_frame_outside > REST_FRAME_COVERAGE_WARN:
        flags["rest_frame_outside"] = (
            f"{100 * rest_frame_outside:.0f} % of the good pixels fall outside the stellar "
            "clone in the star's rest frame"
        )
        quiet.add("rest_frame_outside")
    loud = {k: v for k, v in flags.items() if k not in quiet}
    if loud:
        warnings.warn(
            "the fit may be wrong: " + "; ".join(f"{k}: {v}" for k, v in loud.items()),
            FitQualityWarning,
            stacklevel=4,
        )
    return flags


#: Per-order RVs disagree when their χ² about the joint RV has a p-value below this.
ORDER_DISAGREEMENT_P = 1e-3
#: A second search minimum within this Δχ² (in units of the search's χ²_red) is ambiguous.
AMBIGUOUS_DELTA_CHI2 = 25.0


def _order_agreement(columns: dict, rv: float) -> tuple[float, int]:
    """χ² of the per-order RVs about ``rv`` and its degrees of freedom."""
    values = np.asarray(columns["rv"], dtype=float)
    errors = np.asarray(columns["rv_uncertainty"], dtype=float)
    ok = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    if ok.sum() < 2:
        return float("nan"), 0
    return float(np.sum(((values[ok] - rv) / errors[ok]) ** 2)), int(ok.sum() - 1)


def _line_values(forest: LineForest) -> dict:
    return {
        name: getattr(forest, name).detach().clone()
        for name in ("ln_amplitude", "ln_sigma", "ln_gamma", "center_shift")
    }


_TRAINABLE_PARAMETER = {
    "amplitude": "ln_amplitude",
    "sigma": "ln_sigma",
    "gamma": "ln_gamma",
    "center": "center_shift",
}


def _effective_line_parameters(forest: LineForest, start: dict, trainable, learning_rate):
    """Trained line parameters that left their starting value by more than an Adam step
    (the L1 prior's kink holds the others: the lasso's degrees of freedom)."""
    count = 0
    for name in trainable:
        parameter = _TRAINABLE_PARAMETER.get(name)
        if parameter is None:
            continue
        threshold = learning_rate * (0.05 if parameter == "center_shift" else 1.0)
        delta = (getattr(forest, parameter).detach() - start[parameter]).abs()
        count += int((delta > threshold).sum())
    return count


def _envelope(order: _Order, x: np.ndarray, degree: int) -> np.ndarray:
    """The order's upper envelope (90th percentile in 24 bins, a Chebyshev fit of
    ``degree``) at every pixel, normalised to a median of 1: the shape a veiling
    continuum takes in a blazed order."""
    good = order.good
    if good.sum() < 48:
        return np.ones_like(x)
    idx = np.array_split(np.flatnonzero(good), 24)
    xb = np.array([x[i].mean() for i in idx])
    yb = np.array([np.percentile(order.flux[i], 90.0) for i in idx])
    env = np.polynomial.chebyshev.chebval(x, np.polynomial.chebyshev.chebfit(xb, yb, degree))
    level = np.median(env[good])
    if not (np.isfinite(level) and level > 0):
        return np.ones_like(x)
    return env / level


def _joint_search(star0, tell0, orders, *, rv, rv_half_width, vsini, fit_vsini, vsini_max,
                  resolving_power, limb_darkening, step_kms, relativistic):  # fmt: skip
    """Run :func:`blase_specutils.core.search.rv_vsini_search` on the prepared orders."""
    from .core.forward import chebyshev_design
    from .core.search import MAX_SEARCH_VSINI, SearchOrder, default_vsini_grid, rv_vsini_search

    star = copy.deepcopy(star0).to(device="cpu", dtype=torch.float64)
    star.relativistic = relativistic
    star.set_trainable(())
    tell = None
    if tell0 is not None:
        tell = copy.deepcopy(tell0).to(device="cpu", dtype=torch.float64)
        tell.set_trainable(())
    if fit_vsini:
        top = 0.95 * vsini_max if vsini_max is not None else MAX_SEARCH_VSINI
        grid = default_vsini_grid(resolving_power, top)
    else:
        grid = [5.0 if vsini is None else vsini]
    search_orders = []
    for o in orders:
        centres = o.edges.mean(1)
        x = 2.0 * (centres - centres.min()) / max(np.ptp(centres), 1e-12) - 1.0
        weight = np.where(o.good, 1.0 / o.sigma**2, 0.0)
        degree = _envelope_degree(o)
        basis = chebyshev_design(torch.as_tensor(x, dtype=torch.float64), degree)
        search_orders.append(
            SearchOrder(
                o.edges, torch.as_tensor(o.flux), torch.as_tensor(weight), basis,
                additive=torch.as_tensor(_envelope(o, x, degree)),
            )  # fmt: skip
        )
    result = rv_vsini_search(
        search_orders,
        lambda g: star(star.make_layout(g)),
        telluric_flux=None if tell is None else (lambda g: tell(tell.make_layout(g))),
        step_kms=step_kms,
        resolving_power=resolving_power,
        rv_center=rv,
        rv_half_width=rv_half_width,
        vsini_grid=grid,
        limb_darkening=limb_darkening,
        relativistic=relativistic,
    )
    if result.at_edge:
        warnings.warn(
            f"the RV grid search ({round(result.rv[0], 3):g} to {round(result.rv[-1], 3):g} "
            f"km/s) found its best fit at the edge, {round(result.best_rv, 0):g} km/s: the "
            "star's RV may lie beyond; pass a closer rv= or a larger rv_search",
            UserWarning,
            stacklevel=4,
        )
    return result
