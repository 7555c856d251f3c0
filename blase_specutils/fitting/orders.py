"""The one order type of a fit, made from the user's arrays: units stripped, masks,
noise, the flux level, ranges and coverage checks."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import astropy.units as u
import numpy as np

from ..astro.inputs import as_angstrom, as_mask, real_values
from ..core.lineforest import SPEED_OF_LIGHT_KMS
from ..prep.noise import pixel_noise

C_KMS = SPEED_OF_LIGHT_KMS


class BadPixelWarning(UserWarning):
    """Pixels were masked because their uncertainty or flux was unusable."""


@dataclass
class Order:
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


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def as_list(value, n=None):
    if value is None:
        return [None] * (n or 1)
    if isinstance(value, (list, tuple)):
        if value and all(is_number(v) for v in value):
            return [np.asarray(value, dtype=np.float64)]  # one order as a plain list
        return list(value)
    if isinstance(value, u.Quantity) and value.ndim == 2:
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return list(value)
    return [value]


#: Largest median S/N (|flux| / σ over the good pixels) an order may claim: far beyond any
#: detector (10⁴ is exceptional), and well short of where χ² (∝ (S/N)² per pixel) and its
#: gradients overflow float32 (3.4e38) and the fit ends in NaN.
MAX_SIGNAL_TO_NOISE = 1e12


def _check_signal_to_noise(flux, sigma, good, k: int) -> None:
    usable = good & np.isfinite(sigma) & (sigma > 0)
    if not usable.any():
        return
    snr = float(np.median(np.abs(flux[usable]) / sigma[usable]))
    if snr > MAX_SIGNAL_TO_NOISE:
        raise ValueError(
            f"order {k}: the uncertainties are tiny against the flux (median S/N {snr:.3g}, "
            f"more than {MAX_SIGNAL_TO_NOISE:.0e}): χ² would overflow; are they in another "
            "unit than the flux, or variances of a flux in different units? Pass 1-σ "
            "uncertainties in the flux's unit"
        )


#: Fewest pixels an order may have.
MIN_ORDER_PIXELS = 3


def prepare_orders(wavelength, flux, uncertainty, mask) -> tuple[list[Order], u.UnitBase | None]:
    """Per-order arrays in Å and one flux unit (that of the first flux Quantity, if any)."""
    wls = as_list(wavelength)
    fls = as_list(flux)
    flux_unit = next((f.unit for f in fls if isinstance(f, u.Quantity)), None)
    if len(fls) != len(wls):
        raise ValueError(f"got {len(wls)} wavelength arrays but {len(fls)} flux arrays")
    uns = as_list(uncertainty, len(wls))
    mks = as_list(mask, len(wls))
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
        fl = real_values(f, f"flux of order {k}")  # masked entries: NaN, so masked
        if fl.shape != wl.shape:
            raise ValueError(f"order {k}: flux has shape {fl.shape} but wavelength has {wl.shape}")
        good = np.isfinite(fl)
        if m is not None:
            good &= as_mask(m, f"order {k}: mask", wl.shape)
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
            sig = real_values(s, f"uncertainty of order {k}")
            if sig.shape != wl.shape:
                raise ValueError(
                    f"order {k}: uncertainty has shape {sig.shape} but wavelength has {wl.shape}"
                )
            bad = ~(np.isfinite(sig) & (sig > 0)) & good
            n_bad_sigma += int(bad.sum())
            good &= ~bad
        _check_signal_to_noise(fl, sig, good, k)
        order = np.argsort(wl)
        wl, fl, sig, good = wl[order], fl[order], sig[order], good[order]
        if np.any(np.diff(wl) <= 0):
            raise ValueError(f"order {k}: wavelength has duplicated values")
        fl = np.where(good, fl, 0.0)
        orders.append(Order(wl, fl, sig, good))
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
        orders[k].sigma = np.full_like(orders[k].flux, pixel_noise(orders[k].flux, orders[k].good))
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


#: Significance of the F test that lets ``continuum_degree="auto"`` add a term.
CONTINUUM_DEGREE_SIGNIFICANCE = 0.01


def envelope_degree(
    order: Order,
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


def envelope(order: Order, x: np.ndarray, degree: int) -> np.ndarray:
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


def crop_orders(orders, order_indices, lo: float, hi: float, name: str):
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


def finest_pixel_kms(orders: list[Order]) -> float:
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


def doppler_factor(rv: float, relativistic: bool) -> float:
    beta = rv / C_KMS
    return math.sqrt((1 + beta) / (1 - beta)) if relativistic else 1 + beta


def rest_frame_outside(orders: list[Order], rv: float, lo: float, hi: float, relativistic):
    """Fraction of good pixels whose rest-frame wavelength (at ``rv``) is outside [lo, hi]."""
    factor = doppler_factor(rv, relativistic)
    n_good = n_out = 0
    for o in orders:
        rest = o.wavelength[o.good] / factor
        n_good += rest.size
        n_out += int(np.count_nonzero((rest < lo) | (rest > hi)))
    return n_out / max(n_good, 1)


def warn_rest_frame_coverage(orders, rv, lo, hi, relativistic, when: str) -> float:
    """Warn when the stellar clone misses much of the data in the star's rest frame.

    The range check before the fit compares the data with the clone as observed; what the
    model can explain is the clone shifted by the RV, so a fit whose RV wandered far
    (a start far off, a wrong minimum) models part of the data as bare continuum.
    Returns the fraction of good pixels outside.
    """
    outside = rest_frame_outside(orders, rv, lo, hi, relativistic)
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


def orders_inside_hint(orders: list[Order], lo: float, hi: float) -> str:
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
