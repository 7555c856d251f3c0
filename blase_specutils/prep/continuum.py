"""Continuum flattening: black-body division, then a smooth fit through continuum peaks.

numpy/scipy only (no torch, no astropy). Wavelengths are in Å (vacuum or
air, the rule does not care); flux in any linear unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import chebyshev
from scipy.interpolate import make_lsq_spline

from .checks import check_spectrum

__all__ = [
    "ContinuumFit",
    "flatten_continuum",
    "planck_lambda",
    "auto_poly_order",
    "auto_window_angstrom",
]

# Exact SI values (2019 redefinition), converted to CGS.
_PLANCK_ERG_S = 6.62607015e-27
_SPEED_OF_LIGHT_CM_S = 2.99792458e10
_BOLTZMANN_ERG_K = 1.380649e-16
_ANGSTROM_CM = 1e-8

_METHODS = ("peaks", "envelope", "spline", "none")
#: Largest fractional distance below the fit at which ``method="envelope"`` keeps an anchor.
ENVELOPE_TOLERANCE = 1e-3


def planck_lambda(wavelength_angstrom, teff_kelvin: float) -> np.ndarray:
    """Black-body specific intensity per unit wavelength, B_λ(T).

    Parameters
    ----------
    wavelength_angstrom : array_like
        Wavelength (Å), > 0.
    teff_kelvin : float
        Temperature (K), > 0.

    Returns
    -------
    numpy.ndarray
        B_λ in erg s⁻¹ cm⁻² Å⁻¹ sr⁻¹ (float64), same shape as the input.
        Computed as ``2hc²/λ⁵ · e^{-x} / (1 - e^{-x})``, ``x = hc/(λkT)``,
        which neither overflows at short wavelengths nor loses digits at
        long ones.

    Raises
    ------
    ValueError
        If any wavelength is not finite and > 0, or the temperature is not
        finite and > 0.

    Examples
    --------
    >>> round(float(planck_lambda(5000.0, 5772.0)) / 1e6, 2)  # near the solar peak, erg/s/cm2/A/sr
    2.62
    """
    wavelength = np.asarray(wavelength_angstrom, dtype=np.float64)
    if not np.all(np.isfinite(wavelength)) or np.any(wavelength <= 0):
        raise ValueError("planck_lambda: wavelengths must be finite and > 0 Å")
    teff = float(teff_kelvin)
    if not np.isfinite(teff) or teff <= 0:
        raise ValueError(f"planck_lambda: teff must be finite and > 0 K, got {teff_kelvin!r}")
    wavelength_cm = wavelength * _ANGSTROM_CM
    x = _PLANCK_ERG_S * _SPEED_OF_LIGHT_CM_S / (wavelength_cm * _BOLTZMANN_ERG_K * teff)
    boltzmann_factor = np.exp(-x)
    per_cm = (
        2.0
        * _PLANCK_ERG_S
        * _SPEED_OF_LIGHT_CM_S**2
        / wavelength_cm**5
        * boltzmann_factor
        / -np.expm1(-x)
    )
    return per_cm * _ANGSTROM_CM


def auto_window_angstrom(bandwidth_angstrom: float) -> float:
    """Default anchor window (Å): 8 Å, or bandwidth/12 for short ranges (12+ anchors).

    Eight Å holds ~800 PHOENIX pixels near 1 µm and, even for a line-rich
    ~4000 K star, usually a stretch of true continuum; narrower windows put
    more anchors on line-blanketed troughs, wider ones too few anchors to
    follow the black-body residual shape.

    Parameters
    ----------
    bandwidth_angstrom : float
        Wavelength span of the spectrum (Å).

    Returns
    -------
    float
        Window width (Å).
    """
    return float(min(8.0, bandwidth_angstrom / 12.0))


def auto_poly_order(bandwidth_angstrom: float) -> int:
    """Default Chebyshev order: one per 100 Å of bandwidth, between 3 and 15.

    At least a cubic: a continuum curved within a short slice (an échelle order's worth,
    or the residual of a black body at the wrong temperature) is not a straight line, and
    the low-anchor rejection keeps a cubic out of line-blanketed troughs. Slices shorter
    than 20 Å get a straight line: their anchor windows (1/12 of the span) are then so
    narrow that a single broad line covers several, and a cubic would follow it.

    Parameters
    ----------
    bandwidth_angstrom : float
        Wavelength span of the spectrum (Å).

    Returns
    -------
    int
        Polynomial order (dimensionless).
    """
    if bandwidth_angstrom < 20.0:
        return 1
    return int(np.clip(np.ceil(bandwidth_angstrom / 100.0), 3, 15))


@dataclass(frozen=True)
class ContinuumFit:
    """Result of :func:`flatten_continuum`.

    Attributes
    ----------
    wavelength : numpy.ndarray
        Wavelength grid (Å).
    flat_flux : numpy.ndarray
        ``flux / continuum`` (dimensionless; continuum at ≈ 1).
    continuum : numpy.ndarray
        Total continuum (flux unit): ``blackbody * smooth`` (or ``smooth``).
        ``flux == flat_flux * continuum`` to float rounding.
    smooth : numpy.ndarray
        The smooth factor fitted through the peaks (flux unit over the
        black-body unit when ``teff`` is given).
    blackbody : numpy.ndarray or None
        B_λ(teff) in erg s⁻¹ cm⁻² Å⁻¹ sr⁻¹, or None without ``teff``.
    teff : float or None
        Black-body temperature (K).
    method : str
        ``"peaks"`` (Chebyshev polynomial), ``"spline"`` (cubic LSQ spline)
        or ``"none"``.
    anchor_wavelength, anchor_value : numpy.ndarray
        All window maxima (Å; value in the black-body-divided flux unit).
    anchor_used : numpy.ndarray of bool
        Which anchors survived the robust rejection.
    coefficients : numpy.ndarray
        Chebyshev coefficients in the scaled variable ``x`` (``"peaks"``),
        B-spline coefficients (``"spline"``) or empty (``"none"``).
    knots : numpy.ndarray
        Full B-spline knot vector (Å) for ``"spline"``; empty otherwise.
    domain : tuple of float
        Wavelength interval (Å) mapped to x ∈ [-1, 1] for the polynomial.
    poly_order : int or None
        Chebyshev order (``"peaks"``).
    window_angstrom : float or None
        Anchor window width (Å).
    """

    wavelength: np.ndarray
    flat_flux: np.ndarray
    continuum: np.ndarray
    smooth: np.ndarray
    blackbody: np.ndarray | None
    teff: float | None
    method: str
    anchor_wavelength: np.ndarray = field(default_factory=lambda: np.empty(0))
    anchor_value: np.ndarray = field(default_factory=lambda: np.empty(0))
    anchor_used: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    coefficients: np.ndarray = field(default_factory=lambda: np.empty(0))
    knots: np.ndarray = field(default_factory=lambda: np.empty(0))
    domain: tuple[float, float] = (0.0, 0.0)
    poly_order: int | None = None
    window_angstrom: float | None = None

    def evaluate(self, wavelength_angstrom) -> np.ndarray:
        """Continuum (flux unit) on another wavelength grid inside the fitted range.

        Parameters
        ----------
        wavelength_angstrom : array_like
            Wavelengths (Å), within ``domain``.

        Returns
        -------
        numpy.ndarray
            ``blackbody * smooth`` (or ``smooth``, or ones for ``"none"``).
        """
        wavelength = np.asarray(wavelength_angstrom, dtype=np.float64)
        if self.method == "none":
            return np.ones_like(wavelength)
        low, high = self.domain
        if np.any(wavelength < low) or np.any(wavelength > high):
            raise ValueError(f"evaluate: wavelengths outside the fitted range [{low}, {high}] Å")
        smooth = _evaluate_smooth(
            self.method, self.coefficients, self.knots, self.domain, wavelength
        )
        if self.teff is not None:
            smooth = smooth * planck_lambda(wavelength, self.teff)
        return smooth


def _scaled(wavelength: np.ndarray, domain: tuple[float, float]) -> np.ndarray:
    low, high = domain
    return (2.0 * wavelength - (low + high)) / (high - low)


def _evaluate_smooth(method, coefficients, knots, domain, wavelength):
    if method in ("peaks", "envelope"):
        return chebyshev.chebval(_scaled(wavelength, domain), coefficients)
    from scipy.interpolate import BSpline

    return BSpline(knots, coefficients, 3, extrapolate=False)(wavelength)


def _validate(wavelength, flux, teff):
    wavelength, flux = check_spectrum(wavelength, flux)
    if wavelength[0] <= 0:
        raise ValueError("wavelength must be > 0 Å")
    if np.any(flux < 0):
        raise ValueError("flux contains negative values")
    if teff is not None:
        teff = float(teff)
        if not np.isfinite(teff) or teff <= 0:
            raise ValueError(f"teff must be finite and > 0 K, got {teff!r}")
    return wavelength, flux, teff


def _window_peaks(wavelength: np.ndarray, values: np.ndarray, window: float):
    """Maximum of ``values`` in consecutive ``window`` Å windows: (anchor λ, anchor value)."""
    bins = np.floor((wavelength - wavelength[0]) / window).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, np.diff(bins) > 0])
    ends = np.r_[starts[1:], wavelength.size]
    peak_index = np.array(
        [start + np.argmax(values[start:end]) for start, end in zip(starts, ends)]
    )
    return wavelength[peak_index], values[peak_index]


def _spline_knots(anchor_wavelength: np.ndarray, domain, knot_spacing: float) -> np.ndarray:
    """Cubic knot vector, interior knots every ``knot_spacing`` Å; 4+ anchors per interval."""
    low, high = domain
    n_intervals = max(int(np.round((high - low) / knot_spacing)), 1)
    interior = list(np.linspace(low, high, n_intervals + 1)[1:-1])
    # drop knots that would leave an interval with fewer than 4 anchors (Schoenberg-Whitney)
    changed = True
    while changed and interior:
        changed = False
        edges = np.r_[low, interior, high]
        counts = np.histogram(anchor_wavelength, bins=edges)[0]
        sparse = np.flatnonzero(counts < 4)
        if sparse.size:
            index = int(sparse[0])
            interior.pop(min(index, len(interior) - 1))
            changed = True
    return np.r_[[low] * 4, interior, [high] * 4]


def _fit_smooth(method, anchor_x, anchor_y, poly_order, domain, knot_spacing):
    if method == "peaks":
        coefficients = chebyshev.chebfit(_scaled(anchor_x, domain), anchor_y, poly_order)
        return coefficients, np.empty(0)
    knots = _spline_knots(anchor_x, domain, knot_spacing)
    spline = make_lsq_spline(anchor_x, anchor_y, knots, k=3)
    return spline.c, knots


def flatten_continuum(
    wavelength_angstrom,
    flux,
    *,
    teff: float | None = None,
    method: str | None = "peaks",
    poly_order: int | None = None,
    window_angstrom: float | None = None,
    knot_spacing_angstrom: float = 100.0,
    reject_sigma: float = 3.0,
    max_iterations: int = 20,
    envelope_tolerance: float = ENVELOPE_TOLERANCE,
) -> ContinuumFit:
    """Divide out a smooth continuum so that the continuum of the result sits at ≈ 1.

    The rule:

    1. If ``teff`` is given, divide the flux by the black body B_λ(teff)
       (:func:`planck_lambda`); this removes most of the broad shape.
    2. Cut the wavelength range into consecutive windows of
       ``window_angstrom`` (default :func:`auto_window_angstrom`: 8 Å, fewer
       for short spectra) and take the maximum of the (black-body-divided)
       flux in each as a continuum anchor: the *upper envelope*, because
       lines only ever remove flux.
    3. Fit a smooth function through the anchors (least squares): a
       Chebyshev polynomial of ``poly_order`` in ``x = (2λ - λmin - λmax) /
       (λmax - λmin)`` (``method="peaks"``, order from
       :func:`auto_poly_order`: one per 100 Å, 3 to 15; 1 below 20 Å), or a cubic
       least-squares spline with knots every ``knot_spacing_angstrom``
       (``method="spline"``, for very wide ranges).
    4. Robust iteration: anchors more than ``reject_sigma`` × MAD (scaled to
       a Gaussian σ, of the fractional residuals of the kept anchors) *below*
       the fit sit in line-blanketed windows; drop them and refit, until no
       anchor changes or ``max_iterations``.

    ``method="envelope"`` is the same Chebyshev fit with a one-sided rule in step 4:
    every anchor more than ``envelope_tolerance`` (fractional) below the fit is dropped,
    so the fit settles on the upper envelope of the anchors. This is the continuum of a
    spectrum whose broad lines (the hydrogen lines of an A star) cover most anchor
    windows: the MAD rule then keeps the wing anchors, the fit runs through the middle of
    the wings and the flattened flux rises to 1.08 between the Paschen lines of a PHOENIX
    10,000 K model (HPF order 5), which no absorption line can reproduce.

    ``continuum = blackbody × smooth`` and ``flat_flux = flux / continuum``.
    With ``method=None`` (or ``"none"``), for spectra that are already flat
    such as a telluric transmission, the continuum is all ones.

    Parameters
    ----------
    wavelength_angstrom : array_like
        Wavelengths (Å), finite, > 0, strictly increasing.
    flux : array_like
        Flux (any linear unit), finite, >= 0, same length.
    teff : float, optional
        Effective temperature (K) of the black body to divide first.
    method : {"peaks", "envelope", "spline", None, "none"}
        Smooth function through the anchors (see above).
    poly_order : int, optional
        Chebyshev order (dimensionless) for ``"peaks"``.
    window_angstrom : float, optional
        Anchor window width (Å).
    knot_spacing_angstrom : float
        Interior knot spacing (Å) for ``"spline"``.
    reject_sigma : float
        Rejection threshold (in robust σ) for anchors below the fit.
    max_iterations : int
        Maximum number of fit/reject rounds.
    envelope_tolerance : float
        ``method="envelope"`` only: anchors more than this fraction below the fit are
        dropped (dimensionless, in (0, 1)).

    Returns
    -------
    ContinuumFit

    Raises
    ------
    ValueError
        Non-finite wavelengths or flux, unsorted or duplicated wavelengths,
        negative flux, length mismatch, ``teff <= 0``, an unknown method,
        or too few anchors for the requested order.

    Examples
    --------
    >>> import numpy as np
    >>> wl = np.linspace(8500.0, 8600.0, 5001)
    >>> flux = (1 + 1e-3 * (wl - 8500)) * (1 - 0.5 * np.exp(-0.5 * ((wl - 8550) / 0.05) ** 2))
    >>> fit = flatten_continuum(wl, flux)
    >>> bool(abs(fit.flat_flux.max() - 1) < 1e-6)
    True
    """
    method_name = "none" if method is None else str(method).lower()
    if method_name not in _METHODS:
        raise ValueError(
            f"method must be one of 'peaks', 'envelope', 'spline' or None, got {method!r}"
        )
    if not (isinstance(envelope_tolerance, (int, float)) and 0 < envelope_tolerance < 1):
        raise ValueError(f"envelope_tolerance must lie in (0, 1), got {envelope_tolerance!r}")
    wavelength, flux, teff = _validate(wavelength_angstrom, flux, teff)
    if method_name == "none":
        if teff is not None:
            raise ValueError(
                "teff has no effect with method=None (an already flat spectrum); leave it out"
            )
        ones = np.ones_like(flux)
        return ContinuumFit(
            wavelength,
            flux.copy(),
            ones,
            ones.copy(),
            None,
            None,
            "none",
            domain=(float(wavelength[0]), float(wavelength[-1])),
        )

    bandwidth = float(wavelength[-1] - wavelength[0])
    window = auto_window_angstrom(bandwidth) if window_angstrom is None else float(window_angstrom)
    if not np.isfinite(window) or window <= 0:
        raise ValueError(f"window_angstrom must be finite and > 0, got {window_angstrom!r}")
    order = auto_poly_order(bandwidth) if poly_order is None else int(poly_order)
    if order < 0:
        raise ValueError(f"poly_order must be >= 0, got {poly_order!r}")
    if not reject_sigma > 0:
        raise ValueError(f"reject_sigma must be > 0, got {reject_sigma!r}")

    blackbody = planck_lambda(wavelength, teff) if teff is not None else None
    divided = flux / blackbody if blackbody is not None else flux
    scale = float(np.max(divided))
    if scale <= 0:
        raise ValueError("flux is zero everywhere")
    divided = divided / scale
    anchor_x, anchor_y = _window_peaks(wavelength, divided, window)
    domain = (float(wavelength[0]), float(wavelength[-1]))
    envelope = method_name == "envelope"
    if envelope:
        method_name = "peaks"  # the same Chebyshev fit, another rejection rule
    n_parameters = order + 1 if method_name == "peaks" else 4
    if anchor_x.size < n_parameters + 2:
        raise ValueError(
            f"only {anchor_x.size} anchor windows of {window} Å for a fit with "
            f"{n_parameters} parameters; "
            "use a smaller window_angstrom or poly_order"
        )

    used = anchor_y > 0
    for _ in range(max_iterations):
        coefficients, knots = _fit_smooth(
            method_name, anchor_x[used], anchor_y[used], order, domain, knot_spacing_angstrom
        )
        model = _evaluate_smooth(method_name, coefficients, knots, domain, anchor_x)
        residual = (anchor_y - model) / np.abs(model)
        kept = residual[used]
        robust_sigma = 1.4826 * np.median(np.abs(kept - np.median(kept)))
        floor = envelope_tolerance if envelope else reject_sigma * robust_sigma
        new_used = (anchor_y > 0) & (residual >= -floor)
        if new_used.sum() < n_parameters + 2 or np.array_equal(new_used, used):
            break
        used = new_used

    smooth_unit = _evaluate_smooth(method_name, coefficients, knots, domain, wavelength)
    if not np.all(smooth_unit > 0):
        raise ValueError(
            "the continuum fit is not positive everywhere; use a lower poly_order or larger window"
        )
    smooth = smooth_unit * scale
    continuum = smooth * blackbody if blackbody is not None else smooth
    return ContinuumFit(
        wavelength=wavelength,
        flat_flux=flux / continuum,
        continuum=continuum,
        smooth=smooth,
        blackbody=blackbody,
        teff=teff,
        method="envelope" if envelope else method_name,
        anchor_wavelength=anchor_x,
        anchor_value=anchor_y * scale,
        anchor_used=used,
        coefficients=coefficients * scale,
        knots=knots,
        domain=domain,
        poly_order=order if method_name == "peaks" else None,
        window_angstrom=window,
    )
