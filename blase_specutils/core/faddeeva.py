"""Exact Voigt profile through the Faddeeva function, with analytic gradients.

The Voigt profile is the convolution of a Gaussian (standard deviation
``sigma``) with a Lorentzian (half width at half maximum ``gamma``):

.. math::

    V(\\Delta x; \\sigma, \\gamma) = \\frac{\\mathrm{Re}\\,w(z)}{\\sigma\\sqrt{2\\pi}},
    \\qquad z = \\frac{\\Delta x + i\\gamma}{\\sigma\\sqrt{2}},

where :math:`w(z) = e^{-z^2}\\operatorname{erfc}(-iz)` is the Faddeeva
function. The convention is that of :func:`scipy.special.voigt_profile`
(area 1 in ``dx``), which this module never imports at run time.

How :math:`w(z)` is computed (upper half plane, ``Im z >= 0``):

* ``|z| >= 6`` (line wings, most pixels of a line window): a convergent of
  the Laplace continued fraction
  :math:`w = \\frac{i}{\\sqrt\\pi}\\cfrac{1}{z - \\cfrac{1/2}{z - \\cfrac{1}{z - \\dots}}}`,
  truncated after eight partial numerators (1/2, 1, ..., 4), written as
  :math:`w = \\frac{i}{\\sqrt\\pi z} F(v)` with :math:`v = 1/z^2` and
  :math:`F = N(v)/D(v)` (two quartics), and evaluated in
  :math:`q = 1/(\\Delta x + i\\gamma)`, :math:`v = 2\\sigma^2 q^2` so that
  neither a tiny ``sigma`` nor a huge ``dx`` overflows. Relative error of
  ``Re w`` there: below 1e-9 (the neglected ``exp(-x^2)`` term is the floor).
* ``|z| < 6`` (line cores): Weideman's (1994, SIAM J. Numer. Anal. 31, 1497)
  rational approximation with N = 32 terms, relative error of ``Re w``
  below 3e-7 wherever ``Re w > 1e-10 Re w(i Im z)`` and ``Im z >= 7e-5``.

Only the elements inside ``|z| < 6`` pay for the 31-step Horner polynomial.
The core is evaluated in float64 also for float32 inputs (the wings, where
most pixels of a line window lie, stay in the input dtype): float32 rounding
of the sum would otherwise swamp ``Re w`` where a narrow Lorentzian tail makes
``Re w << |w|``, and the sigma gradient, whose core formula cancels to a
factor ``|z|^4``. Float32 values then keep a relative error of ~1e-6.

Measured against :func:`scipy.special.voigt_profile` for sigma, gamma in
[1e-3, 10] and ``|dx| <= 1000 (sigma + gamma)``, where the profile exceeds
1e-10 of its peak: float64 2.3e-8, float32 1.2e-6 (max relative error).

The fused engine kernels call :func:`voigt_with_gradients` instead, which adds
a third region for speed: beyond ``|z| >= FAR_RADIUS`` (12) the asymptotic
series, written as a real polynomial in ``1/|z|^2`` and ``cos 2θ``, gives the
value and all three derivatives at a fraction of the continued fraction's cost,
and the core's Weideman polynomial is evaluated with Goertzel's real recurrence.

In :func:`voigt_profile`, gradients come from :math:`w'(z) = -2 z w(z) + 2i/\\sqrt\\pi` in the core
(using the saved ``w``) and from the exact derivative of the continued
fraction in the wings (so no catastrophic cancellation at large ``|z|``).
The custom :class:`torch.autograd.Function` stores only the inputs, the
indices of the core elements and their complex ``w``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "faddeeva",
    "voigt_profile",
    "voigt_with_gradients",
    "VoigtProfileFunction",
    "WEIDEMAN_TERMS",
    "CORE_RADIUS",
    "FAR_RADIUS",
    "CONTINUED_FRACTION_LEVELS",
    "CHUNK_BYTES",
]

#: Number of terms of Weideman's rational approximation used for ``|z| < CORE_RADIUS``.
WEIDEMAN_TERMS = 32
#: ``|z|`` below which Weideman's approximation is used (continued fraction outside).
CORE_RADIUS = 6.0

_SQRT_PI = math.sqrt(math.pi)
_INV_SQRT_PI = 1.0 / _SQRT_PI
_SQRT_2 = math.sqrt(2.0)


def _weideman_coefficients(n_terms: int) -> tuple[np.ndarray, float]:
    """Polynomial coefficients (highest power first) and scale ``L`` of Weideman's approximation.

    Parameters
    ----------
    n_terms : int
        Number of terms N (dimensionless).

    Returns
    -------
    coefficients : numpy.ndarray
        ``N`` real coefficients of the polynomial in ``Z = (L + iz)/(L - iz)``,
        highest power first (dimensionless).
    scale : float
        The optimal scale ``L = sqrt(N / sqrt(2))`` (dimensionless).
    """
    m = 2 * n_terms
    k = np.arange(-m + 1, m)
    scale = math.sqrt(n_terms / math.sqrt(2.0))
    theta = k * np.pi / m
    t = scale * np.tan(theta / 2.0)
    samples = np.concatenate([[0.0], np.exp(-t * t) * (scale * scale + t * t)])
    fourier = np.real(np.fft.fft(np.fft.fftshift(samples))) / (2 * m)
    return fourier[1 : n_terms + 1][::-1].copy(), scale


_WEIDEMAN_COEFFS, _WEIDEMAN_L = _weideman_coefficients(WEIDEMAN_TERMS)


def _complex_dtype(real_dtype: torch.dtype) -> torch.dtype:
    if real_dtype == torch.float32:
        return torch.complex64
    if real_dtype == torch.float64:
        return torch.complex128
    raise TypeError(f"voigt/faddeeva support float32 and float64 tensors, got {real_dtype}")


def _weideman_core(z: torch.Tensor) -> torch.Tensor:
    """Weideman's N-term approximation of w(z) for complex ``z`` with ``Im z >= 0``."""
    scale = _WEIDEMAN_L
    denominator = scale - 1j * z  # L - iz
    inv_denominator = torch.reciprocal(denominator)
    big_z = (scale + 1j * z) * inv_denominator
    coefficients = _WEIDEMAN_COEFFS
    poly = big_z * float(coefficients[0]) + float(coefficients[1])
    for coefficient in coefficients[2:]:
        poly.mul_(big_z).add_(float(coefficient))
    # w = 2 p / (L - iz)^2 + (1/sqrt(pi)) / (L - iz)
    return (poly * (2.0 * inv_denominator) + _INV_SQRT_PI) * inv_denominator


def _continued_fraction_polynomials(n_levels: int):
    """Numerator/denominator of F(v) = 1/(1 - (1/2)v/(1 - (2/2)v/(1 - ... (n/2)v))).

    Coefficients are lowest power first.

    Returns ``N``, ``D`` and ``K = N'D - ND'`` (so that ``F' = K / D^2``) as
    float coefficient tuples.
    """
    from numpy.polynomial import polynomial as poly

    upper, lower = np.array([1.0]), np.array([1.0])  # the tail T = upper / lower
    for level in range(n_levels, 0, -1):
        upper, lower = poly.polysub(upper, 0.5 * level * poly.polymulx(lower)), upper
    numerator, denominator = lower, upper  # F = 1 / T
    derivative_numerator = poly.polysub(
        poly.polymul(poly.polyder(numerator), denominator),
        poly.polymul(numerator, poly.polyder(denominator)),
    )
    return (
        tuple(map(float, numerator)),
        tuple(map(float, denominator)),
        tuple(map(float, derivative_numerator)),
    )


#: Levels of the continued fraction used for ``|z| >= CORE_RADIUS``.
CONTINUED_FRACTION_LEVELS = 8
_CF_NUMERATOR, _CF_DENOMINATOR, _CF_DERIVATIVE = _continued_fraction_polynomials(
    CONTINUED_FRACTION_LEVELS
)


def _horner(coefficients: tuple[float, ...], v: torch.Tensor) -> torch.Tensor:
    """Polynomial with real ``coefficients`` (lowest power first) at complex ``v``."""
    result = (v * coefficients[-1]).add_(coefficients[-2])
    for coefficient in coefficients[-3::-1]:
        result.mul_(v).add_(coefficient)
    return result


def _wing_fraction(v: torch.Tensor) -> torch.Tensor:
    """F(v) with w = (i / sqrt(pi)) F(v) / z and v = 1/z^2."""
    return _horner(_CF_NUMERATOR, v).mul_(torch.reciprocal(_horner(_CF_DENOMINATOR, v)))


def _broadcast_flat(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], torch.Size]:
    expanded = torch.broadcast_tensors(*tensors)
    shape = expanded[0].shape
    return [t.reshape(-1) for t in expanded], shape


def _sum_to_shape(gradient: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to the shape of the input it belongs to."""
    if gradient.shape == shape:
        return gradient
    n_lead = gradient.dim() - len(shape)
    if n_lead > 0:
        gradient = gradient.sum(dim=tuple(range(n_lead)))
    keep = tuple(i for i, size in enumerate(shape) if size == 1 and gradient.shape[i] != 1)
    if keep:
        gradient = gradient.sum(dim=keep, keepdim=True)
    return gradient.reshape(shape)


def _core_mask(dx: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    # |z| < R  <=>  dx^2 + gamma^2 < 2 R^2 sigma^2   (no division: safe for sigma -> 0)
    return dx * dx + gamma * gamma < (2.0 * CORE_RADIUS * CORE_RADIUS) * sigma * sigma


def _split(dx: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor):
    """Indices of the core (``|z| < CORE_RADIUS``) and of the wings (None: wings everywhere).

    When the core holds most elements, the wings are evaluated on their own
    subset; otherwise on every element (cheaper than gathering) and then
    overwritten in the core.
    """
    mask = _core_mask(dx, sigma, gamma)
    core_index = torch.nonzero(mask).reshape(-1)
    wing_index = None
    if 2 * core_index.numel() > mask.numel():
        wing_index = torch.nonzero(~mask).reshape(-1)
    return core_index, wing_index


def _gather(index: torch.Tensor | None, *tensors: torch.Tensor) -> list[torch.Tensor]:
    if index is None:
        return list(tensors)
    return [t.index_select(0, index) for t in tensors]


def _scatter(
    index: torch.Tensor | None,
    target: torch.Tensor | None,
    values: torch.Tensor,
    like: torch.Tensor,
):
    """Write ``values`` into ``target`` at ``index`` (``index`` None: ``values`` is everything)."""
    if index is None:
        return values
    if target is None:
        target = torch.zeros_like(like)
    return target.index_copy_(0, index, values.to(target.dtype))


def _core_argument(dx: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor):
    """``s = sigma sqrt(2)`` and ``z = (dx + i gamma)/s`` in float64 for core elements.

    The core is always evaluated in float64, also for float32 inputs: float32
    rounding of Weideman's sum (a few epsilons times ``|w|``) would swamp
    ``Re w`` in a narrow-Lorentzian tail (``Re w << |w|``) and, amplified by
    up to ``|z|^4`` in the cancellation of ``w + z w'``, the sigma gradient.
    """
    scaled_sigma = sigma.to(torch.float64) * _SQRT_2
    inv_scaled = torch.reciprocal(scaled_sigma)
    z = torch.complex(dx.to(torch.float64) * inv_scaled, gamma.to(torch.float64) * inv_scaled)
    return scaled_sigma, z


def _wing_values(dx: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Voigt values from the continued fraction.

    V = Re(i q F(v)) / pi with q = 1/(dx + i gamma) and v = 2 sigma^2 q^2.
    """
    q = torch.reciprocal(torch.complex(dx, gamma))
    v = q * q
    v.mul_((2.0 * sigma * sigma).to(v.dtype))
    return torch.imag(q * _wing_fraction(v)) * (-1.0 / math.pi)


def _wing_gradients(dx, sigma, gamma, need_dx, need_sigma, need_gamma):
    """Exact derivatives of the continued-fraction Voigt values.

    With w' = -(i/sqrt(pi)) z^-2 G(v), G = F + 2 v F', F' = K / D^2:
    dV/ddx = Im(q^2 G)/pi, dV/dgamma = Re(q^2 G)/pi, dV/dsigma = -(4 sigma/pi) Im(q^3 F').
    """
    q = torch.reciprocal(torch.complex(dx, gamma))
    q2 = q * q
    v = q2 * (2.0 * sigma * sigma).to(q2.dtype)
    inv_denominator = torch.reciprocal(_horner(_CF_DENOMINATOR, v))
    fraction_derivative = _horner(_CF_DERIVATIVE, v).mul_(inv_denominator.square())
    grad_dx = grad_sigma = grad_gamma = None
    if need_dx or need_gamma:
        q2_g = (
            _horner(_CF_NUMERATOR, v)
            .mul_(inv_denominator)
            .add_(2.0 * v * fraction_derivative)
            .mul_(q2)
        )
        if need_dx:
            grad_dx = torch.imag(q2_g) * (1.0 / math.pi)
        if need_gamma:
            grad_gamma = torch.real(q2_g) * (1.0 / math.pi)
    if need_sigma:
        grad_sigma = torch.imag(fraction_derivative.mul_(q2).mul_(q)) * (-4.0 / math.pi) * sigma
    return grad_dx, grad_sigma, grad_gamma


def _core_gradients(dx, sigma, gamma, w, need_dx, need_sigma, need_gamma):
    """Core derivatives from w' = -2 z w + 2i/sqrt(pi), in float64.

    V = C Re w with C = 1/(s sqrt(pi)) and s = sigma sqrt(2):

    dV/ddx = C Re(w')/s, dV/dgamma = -C Im(w')/s, dV/dsigma = -(Re w + Re(w' z)) C / sigma.
    """
    scaled_sigma, z = _core_argument(dx, sigma, gamma)
    w_prime = (-2.0 * z * w).add_(2.0j * _INV_SQRT_PI)
    norm = torch.reciprocal(scaled_sigma * _SQRT_PI)
    grad_dx = grad_sigma = grad_gamma = None
    if need_dx or need_gamma:
        norm_over_s = norm / scaled_sigma
        if need_dx:
            grad_dx = torch.real(w_prime) * norm_over_s
        if need_gamma:
            grad_gamma = torch.imag(w_prime) * norm_over_s * -1.0
    if need_sigma:
        grad_sigma = (torch.real(w) + torch.real(w_prime * z)) * norm * (-_SQRT_2 / scaled_sigma)
    return grad_dx, grad_sigma, grad_gamma


def _voigt_forward(dx: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor):
    """Voigt values on flat, equally shaped tensors; returns (values, core index, core w)."""
    core_index, wing_index = _split(dx, sigma, gamma)
    values = None
    if wing_index is None or wing_index.numel() > 0:
        values = _scatter(
            wing_index, None, _wing_values(*_gather(wing_index, dx, sigma, gamma)), dx
        )
    core_w = torch.zeros(0, dtype=torch.complex128, device=dx.device)
    if core_index.numel() > 0:
        scaled_sigma, z = _core_argument(*_gather(core_index, dx, sigma, gamma))
        core_w = _weideman_core(z)
        values = _scatter(core_index, values, torch.real(core_w) / (scaled_sigma * _SQRT_PI), dx)
    return values, core_index, wing_index, core_w


#: ``|z|`` from which :func:`voigt_with_gradients` uses the asymptotic series.
FAR_RADIUS = 12.0
#: Coefficients ``c_k = (2k-1)!!/2^k`` of the asymptotic series F(v) = Σ c_k v^k,
#: w = (i/√π) F(1/z²)/z, through k = 4: at ``|z| >= FAR_RADIUS`` (``|v| <= 1/144``) the
#: first omitted term of V is below 6e-9 of V, that of its derivatives below 3e-6.
_SERIES = (1.0, 0.5, 0.75, 1.875, 6.5625)
_INV_PI = 1.0 / math.pi


def _far_wing_with_gradients(
    dx, sigma, gamma, need_dx=True, x2=None, g2=None, r2=None, out=None, gradients=True
):
    """Voigt value and derivatives from the asymptotic series, in real arithmetic.

    With ``r² = dx² + γ²``, ``t = 2σ²/r² = 1/|z|²`` and ``c = cos 2θ = (dx² − γ²)/r²``
    (``θ = arg(dx + iγ)``), the series ``V = −Im(q F(2σ²q²))/π``, ``q = 1/(dx + iγ)``,
    becomes a real polynomial in ``t`` and ``c``:

    * ``V = γ/(π r²) Σ c_k t^k R_k(c)`` with ``R_k = sin((2k+1)θ)/sin θ``
      (``R_0 = 1``, ``R_1 = 2c + 1``, ``R_k = 2c R_{k−1} − R_{k−2}``);
    * ``∂V/∂σ = 4σγ/(π r⁴) Σ k c_k t^{k−1} R_k``;
    * ``∂V/∂γ = 1/(π r²) Σ (2k+1) c_k t^k T_{k+1}(c)`` and
      ``∂V/∂dx = −2 dx γ/(π r⁴) Σ (2k+1) c_k t^k U_k(c)`` (Chebyshev polynomials of the
      first and second kind), from ``V = Im g(dx + iγ)`` with ``g`` analytic.

    Values use k ≤ 4, derivatives k ≤ 3. Valid for ``|z| >= FAR_RADIUS``. ``x2``, ``g2``
    and ``r2`` may be passed when the caller already holds them; ``need_dx=False``
    returns None for ∂V/∂dx, ``gradients=False`` None for all three derivatives. ``out``,
    a list of four tensors (or None entries), receives the results in place.
    """
    if out is None:
        out = [None] * 4
    c0, c1, c2, c3, c4 = _SERIES
    if x2 is None:
        x2 = dx * dx
    if g2 is None:
        g2 = gamma * gamma
    if r2 is None:
        r2 = x2 + g2
    inv = torch.reciprocal(r2)
    t = (sigma * sigma).mul_(inv).mul_(2.0)
    cos2 = (x2 - g2).mul_(inv)
    twice = cos2 + cos2
    r1 = twice + 1.0
    r_2 = (twice * r1).sub_(1.0)
    r_3 = (twice * r_2).sub_(r1)
    r_4 = (twice * r_3).sub_(r_2)
    poly = torch.addcmul(r_3 * c3, t, r_4, value=c4)
    poly = torch.addcmul(r_2 * c2, t, poly)
    poly = torch.addcmul(r1 * c1, t, poly).mul_(t).add_(c0)
    lorentz = (gamma * inv).mul_(_INV_PI)  # γ / (π r²)
    values = torch.mul(lorentz, poly, out=out[0])
    if not gradients:
        return values, None, None, None
    slope = torch.addcmul(r_3 * (3.0 * c3), t, r_4, value=4.0 * c4)
    slope = torch.addcmul(r_2 * (2.0 * c2), t, slope)
    slope = torch.addcmul(r1 * c1, t, slope)
    lorentz_over_r2 = lorentz.mul_(inv)
    d_sigma = torch.mul(lorentz_over_r2, sigma, out=out[2]).mul_(slope).mul_(4.0)
    cheb_2 = (cos2 * twice).sub_(1.0)
    cheb_3 = (twice * cheb_2).sub_(cos2)
    cheb_4 = (twice * cheb_3).sub_(cheb_2)
    sum_t = torch.addcmul(cheb_3 * (5.0 * c2), t, cheb_4, value=7.0 * c3)
    sum_t = torch.addcmul(cheb_2 * (3.0 * c1), t, sum_t).mul_(t).add_(cos2)
    d_gamma = torch.mul(sum_t, inv, out=out[3]).mul_(_INV_PI)
    d_dx = None
    if need_dx:
        cheb_u2 = (twice * twice).sub_(1.0)
        cheb_u3 = (twice * cheb_u2).sub_(twice)
        sum_u = torch.addcmul(cheb_u2 * (5.0 * c2), t, cheb_u3, value=7.0 * c3)
        sum_u = torch.addcmul(twice * (3.0 * c1), t, sum_u).mul_(t).add_(1.0)
        d_dx = torch.mul(sum_u, lorentz_over_r2, out=out[1]).mul_(dx).mul_(-2.0)
    return values, d_dx, d_sigma, d_gamma


def _ring_with_gradients(dx, sigma, gamma, need_dx=True, gradients=True):
    """Voigt value and derivatives from the continued fraction (``|z| >= CORE_RADIUS``).

    One evaluation of ``q``, ``v`` and the fraction serves the value and all three
    derivatives (see :func:`_wing_values` and :func:`_wing_gradients`).
    """
    q = torch.reciprocal(torch.complex(dx, gamma))
    q2 = q * q
    v = q2 * (2.0 * sigma * sigma)
    inv_denominator = torch.reciprocal(_horner(_CF_DENOMINATOR, v))
    fraction = _horner(_CF_NUMERATOR, v).mul_(inv_denominator)
    values = torch.imag(q * fraction) * -_INV_PI
    if not gradients:
        return values, None, None, None
    slope = _horner(_CF_DERIVATIVE, v).mul_(inv_denominator.square_())
    q2_g = torch.addcmul(fraction, v, slope, value=2.0).mul_(q2)
    d_dx = torch.imag(q2_g) * _INV_PI if need_dx else None
    d_gamma = torch.real(q2_g) * _INV_PI
    d_sigma = torch.imag(slope.mul_(q2).mul_(q)) * (-4.0 * _INV_PI) * sigma
    return values, d_dx, d_sigma, d_gamma


#: Bytes per working array in :func:`voigt_with_gradients` on the CPU: each region is
#: evaluated in chunks of ``CHUNK_BYTES // itemsize`` elements (32,768 in float32; 16,384
#: in the float64 core) so that its dozens of temporaries stay in the L2 cache. Chunks of
#: four times that were 6x slower on a 2-core CPU, those of a quarter 2x slower.
CHUNK_BYTES = 131072


def voigt_with_gradients(
    dx: torch.Tensor,
    sigma: torch.Tensor,
    gamma: torch.Tensor,
    need_dx: bool = True,
    gradients: bool = True,
):
    """Voigt values and their derivatives on flat, equally shaped tensors (no autograd).

    For fused kernels that chain the derivatives themselves. Far wings use the asymptotic
    series, the ring the continued fraction and the core Weideman's approximation. The
    regions are found in one pass; on the CPU each region is then evaluated in chunks of
    :data:`CHUNK_BYTES` per array, so that its temporaries stay in cache while each torch
    operation still covers many elements. On a GPU every region is evaluated on every
    element and the right one selected: three times the arithmetic, but no gathers and
    no host synchronisation, so the step can be captured as a CUDA graph.

    Parameters
    ----------
    dx, sigma, gamma : torch.Tensor
        1-D, same length and dtype: offset, Gaussian σ and Lorentzian HWHM (one length unit).
    need_dx : bool
        Whether ∂V/∂dx is wanted (False, when line centres are fixed, saves ~20 %).
    gradients : bool
        False: values only (inference), all three derivatives None.

    Returns
    -------
    values, d_dx, d_sigma, d_gamma : torch.Tensor
        V and ∂V/∂dx (None unless ``need_dx``), ∂V/∂σ, ∂V/∂γ (None unless ``gradients``),
        dtype of ``dx``.

    Notes
    -----
    Like :func:`voigt_profile`, inputs are not validated (a check would synchronise the
    device on every call): the callers, :class:`~blase_specutils.core.lineforest.LineForest`
    and the fit, keep σ > 0 and γ ≥ 0 through their log-parameters.
    """
    if dx.device.type != "cpu":
        return _voigt_with_gradients_masked(dx, sigma, gamma, need_dx, gradients)
    return _voigt_with_gradients_chunked(dx, sigma, gamma, need_dx, gradients, CHUNK_BYTES)


def _voigt_with_gradients_flat(dx, sigma, gamma, need_dx=True, gradients=True):
    """:func:`voigt_with_gradients` in one pass per region (same arguments and returns)."""
    return _voigt_with_gradients_chunked(dx, sigma, gamma, need_dx, gradients, None)


def _regions(dx, sigma, gamma):
    """``dx²``, ``γ²``, ``r² = dx² + γ²`` and the masks of the core and the far wings."""
    x2 = dx * dx
    g2 = gamma * gamma
    r2 = x2 + g2
    ratio = r2 / (sigma * sigma)  # 2 |z|²
    core = ratio < 2.0 * CORE_RADIUS * CORE_RADIUS
    far = ratio >= 2.0 * FAR_RADIUS * FAR_RADIUS
    return x2, g2, r2, core, far


def _voigt_with_gradients_masked(dx, sigma, gamma, need_dx=True, gradients=True):
    """:func:`voigt_with_gradients` by selection: each region's formula on every element.

    Where a formula is outside its region it may give inf or NaN; :func:`torch.where`
    never lets those through. No data-dependent shapes, hence no device synchronisation.
    """
    need_dx = need_dx and gradients
    flags = {"need_dx": need_dx, "gradients": gradients}
    x2, g2, r2, core, far = _regions(dx, sigma, gamma)
    far_part = _far_wing_with_gradients(dx, sigma, gamma, x2=x2, g2=g2, r2=r2, **flags)
    ring_part = _ring_with_gradients(dx, sigma, gamma, **flags)
    core_part = _core_with_gradients(dx, sigma, gamma, **flags)
    return tuple(
        None
        if f is None
        else torch.where(core, c.to(dx.dtype), torch.where(far, f, r.to(dx.dtype)))
        for f, r, c in zip(far_part, ring_part, core_part)
    )


def _chunks(n: int, chunk_bytes: int | None, itemsize: int):
    """``(start, stop)`` of consecutive chunks of ``chunk_bytes // itemsize`` elements."""
    size = n if chunk_bytes is None else chunk_bytes // itemsize
    size = max(size, 1)
    return ((start, min(start + size, n)) for start in range(0, n, size))


def _voigt_with_gradients_chunked(dx, sigma, gamma, need_dx, gradients, chunk_bytes):
    """:func:`voigt_with_gradients` by gathering: regions found and evaluated chunk-wise.

    Chunk by chunk, the far-wing series runs on every element (or, where the core and ring
    hold most elements, on the far ones only) and the ring and core indices are collected;
    then the ring and core are gathered and evaluated in chunks of their own. ``chunk_bytes``
    None: one chunk.
    """
    n = dx.numel()
    need_dx = need_dx and gradients
    wanted = (True, need_dx, gradients, gradients)
    flags = {"need_dx": need_dx, "gradients": gradients}
    out = [torch.empty_like(dx) if w else None for w in wanted]
    core_parts, ring_parts = [], []
    for start, stop in _chunks(n, chunk_bytes, dx.element_size()):
        part = slice(start, stop)
        d, s, g = dx[part], sigma[part], gamma[part]
        x2, g2, r2, core_mask, far_mask = _regions(d, s, g)
        core_index = torch.nonzero(core_mask).reshape(-1)
        ring_index = torch.nonzero(core_mask.logical_or_(far_mask).logical_not_()).reshape(-1)
        views = [None if t is None else t[part] for t in out]
        if 2 * (core_index.numel() + ring_index.numel()) < stop - start:
            # Mostly far wings: cheaper to run the series everywhere (and overwrite the
            # rest below) than to gather the far elements.
            _far_wing_with_gradients(d, s, g, x2=x2, g2=g2, r2=r2, out=views, **flags)
        else:
            far_index = torch.nonzero(far_mask).reshape(-1)
            for view in views:
                if view is not None:
                    view.zero_()
            if far_index.numel():
                _put(
                    views,
                    far_index,
                    _far_wing_with_gradients(*_gather(far_index, d, s, g), **flags),
                )
        core_parts.append(core_index + start)
        ring_parts.append(ring_index + start)
    args = (dx, sigma, gamma)
    ring_index = torch.cat(ring_parts) if ring_parts else dx.new_zeros(0, dtype=torch.long)
    core_index = torch.cat(core_parts) if core_parts else dx.new_zeros(0, dtype=torch.long)
    _evaluate_region(
        out, ring_index, _ring_with_gradients, args, flags, (chunk_bytes, dx.element_size())
    )
    # the core works in float64 whatever the input dtype
    _evaluate_region(out, core_index, _core_with_gradients, args, flags, (chunk_bytes, 8))
    return tuple(out)


def _evaluate_region(out, index, evaluate, args, flags, chunks):
    """Run ``evaluate`` on the elements at ``index`` of ``args``, chunk by chunk, into ``out``."""
    for start, stop in _chunks(index.numel(), *chunks):
        part = index[start:stop]
        _put(out, part, evaluate(*_gather(part, *args), **flags))


#: Weideman's coefficients lowest power first, as Python floats (for the real recurrence).
_WEIDEMAN_ASCENDING = tuple(float(c) for c in _WEIDEMAN_COEFFS[::-1])


def _weideman_real(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weideman's approximation of ``w(x + iy)`` in real arithmetic (float64 in, out).

    The polynomial has real coefficients, so it is evaluated at ``Z = (L + iz)/(L − iz)``
    with Goertzel's second-order recurrence ``b_k = a_k + 2 Re Z b_{k+1} − |Z|² b_{k+2}``,
    ``p(Z) = a_0 + Z b_1 − |Z|² b_2``: three real in-place operations per term instead of
    a complex multiply-add. Same numbers as :func:`_weideman_core` to ~1e-13 relative.
    """
    scale = _WEIDEMAN_L
    shifted = y + scale  # L − iz = (L + y) − ix
    inv_norm = torch.reciprocal(torch.addcmul(shifted * shifted, x, x))
    dr = shifted * inv_norm  # 1/(L − iz) = dr + i di
    di = x * inv_norm
    upper = scale - y  # L + iz = (L − y) + ix
    zr = torch.addcmul(upper * dr, x, di, value=-1.0)
    zi = torch.addcmul(upper * di, x, dr)
    twice_re = zr + zr
    minus_norm = torch.addcmul(zr * zr, zi, zi).neg_()
    coefficients = _WEIDEMAN_ASCENDING
    b1 = torch.full_like(x, coefficients[-1])
    b2 = torch.zeros_like(x)
    for coefficient in coefficients[-2:0:-1]:
        b2.mul_(minus_norm).addcmul_(twice_re, b1).add_(coefficient)
        b1, b2 = b2, b1
    pr = torch.addcmul(b2.mul_(minus_norm).add_(coefficients[0]), zr, b1)
    pi = zi.mul_(b1)
    # w = (2 p / (L − iz) + 1/√π) / (L − iz)
    tr = torch.addcmul(pr * dr, pi, di, value=-1.0).mul_(2.0).add_(_INV_SQRT_PI)
    ti = torch.addcmul(pr * di, pi, dr).mul_(2.0)
    wr = torch.addcmul(tr * dr, ti, di, value=-1.0)
    wi = torch.addcmul(tr * di, ti, dr)
    return wr, wi


def _core_with_gradients(dx, sigma, gamma, need_dx=True, gradients=True):
    """Voigt value and derivatives from Weideman's approximation, real float64 arithmetic.

    ``V = C Re w`` with ``C = 1/(s√π)``, ``s = σ√2``, ``z = x + iy = (dx + iγ)/s`` and
    ``w' = −2zw + 2i/√π``: ``∂V/∂dx = C Re w'/s``, ``∂V/∂γ = −C Im w'/s``,
    ``∂V/∂σ = −C (Re w + Re(w' z))/σ``.
    """
    scaled = sigma.to(torch.float64) * _SQRT_2
    inv_scaled = torch.reciprocal(scaled)
    x = dx.to(torch.float64) * inv_scaled
    y = gamma.to(torch.float64) * inv_scaled
    wr, wi = _weideman_real(x, y)
    norm = inv_scaled * _INV_SQRT_PI  # C
    values = wr * norm
    if not gradients:
        return values, None, None, None
    # w' = −2 (x wr − y wi) + i (2/√π − 2 (x wi + y wr))
    dwr = torch.addcmul(x * wr, y, wi, value=-1.0).mul_(-2.0)
    dwi = torch.addcmul(x * wi, y, wr).mul_(-2.0).add_(2.0 * _INV_SQRT_PI)
    norm_over_s = norm * inv_scaled
    d_dx = dwr * norm_over_s if need_dx else None
    d_gamma = dwi * norm_over_s
    d_gamma.neg_()
    # Re(w' z) = x Re w' − y Im w'
    d_sigma = torch.addcmul(torch.addcmul(wr, x, dwr), y, dwi, value=-1.0)
    d_sigma.mul_(norm).mul_(inv_scaled).mul_(-_SQRT_2)
    return values, d_dx, d_sigma, d_gamma


def _put(out, index, parts):
    """Write each of ``parts`` into the matching ``out`` tensor at ``index`` (None: skip)."""
    return [t if t is None else t.index_copy_(0, index, f.to(t.dtype)) for t, f in zip(out, parts)]


class VoigtProfileFunction(torch.autograd.Function):
    """Autograd function for :func:`voigt_profile` with analytic gradients.

    Forward inputs are ``dx``, ``sigma``, ``gamma`` (broadcastable real
    tensors of one dtype). Backward returns gradients with respect to all
    three, each reduced to its input's shape. Saved for backward: the
    inputs, the core/wing indices and the complex128 ``w`` of the core.
    """

    @staticmethod
    def forward(ctx, dx: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        (dx_flat, sigma_flat, gamma_flat), shape = _broadcast_flat(dx, sigma, gamma)
        values, core_index, wing_index, core_w = _voigt_forward(dx_flat, sigma_flat, gamma_flat)
        ctx.save_for_backward(dx, sigma, gamma, core_index, wing_index, core_w)
        return values.reshape(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        dx, sigma, gamma, core_index, wing_index, core_w = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        if not any(needs):
            return None, None, None
        (dx_flat, sigma_flat, gamma_flat), shape = _broadcast_flat(dx, sigma, gamma)
        gradients: list[torch.Tensor | None] = [None, None, None]
        if wing_index is None or wing_index.numel() > 0:
            wing = _wing_gradients(*_gather(wing_index, dx_flat, sigma_flat, gamma_flat), *needs)
            gradients = [
                None if g is None else _scatter(wing_index, None, g, dx_flat) for g in wing
            ]
        if core_index.numel() > 0:
            core = _core_gradients(
                *_gather(core_index, dx_flat, sigma_flat, gamma_flat), core_w, *needs
            )
            gradients = [
                None if g is None else _scatter(core_index, target, g, dx_flat)
                for target, g in zip(gradients, core)
            ]
        grad_flat = grad_output.reshape(-1)
        return tuple(
            None
            if local is None
            else _sum_to_shape((local * grad_flat).reshape(shape), original.shape)
            for local, original in zip(gradients, (dx, sigma, gamma))
        )


def voigt_profile(
    dx: torch.Tensor, sigma: torch.Tensor | float, gamma: torch.Tensor | float
) -> torch.Tensor:
    """Area-normalised Voigt profile, as :func:`scipy.special.voigt_profile`.

    Parameters
    ----------
    dx : torch.Tensor
        Offset from line centre (any length unit, e.g. Å; float32 or float64).
        Form it in float64 or relative to a nearby origin before casting to
        float32: the profile cannot repair an offset that lost its digits.
    sigma : torch.Tensor or float
        Gaussian standard deviation (same unit as ``dx``), ``> 0``;
        broadcastable against ``dx``.
    gamma : torch.Tensor or float
        Lorentzian half width at half maximum (same unit as ``dx``), ``>= 0``;
        broadcastable against ``dx``.

    Returns
    -------
    torch.Tensor
        Profile values (inverse unit of ``dx``), broadcast shape, dtype of ``dx``.
        Integrates to 1 over ``dx``. Differentiable with respect to all
        three inputs through :class:`VoigtProfileFunction`.

    Notes
    -----
    Relative error below 3e-8 (float64) and 2e-6 (float32) against
    :func:`scipy.special.voigt_profile` for ``sigma, gamma`` in [1e-3, 10]
    and ``|dx| <= 1000 (sigma + gamma)`` wherever the profile exceeds
    1e-10 of its peak (see ``tests/test_faddeeva.py``). Inputs are not
    validated here (that would force a device synchronisation per call):
    ``sigma <= 0`` or ``gamma < 0`` give meaningless numbers.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    >>> voigt_profile(x, 1.0, 0.0)  # a pure Gaussian
    tensor([0.3989, 0.2420], dtype=torch.float64)
    """
    if not isinstance(dx, torch.Tensor):
        raise TypeError(f"dx must be a torch.Tensor, got {type(dx).__name__}")
    dtype = dx.dtype
    _complex_dtype(dtype)  # raises TypeError for unsupported dtypes
    sigma_t = torch.as_tensor(sigma, dtype=dtype, device=dx.device)
    gamma_t = torch.as_tensor(gamma, dtype=dtype, device=dx.device)
    if sigma_t.dtype != dtype or gamma_t.dtype != dtype:
        raise TypeError(
            f"sigma and gamma must share dx's dtype {dtype}, "
            f"got {sigma_t.dtype} and {gamma_t.dtype}"
        )
    return VoigtProfileFunction.apply(dx, sigma_t, gamma_t)


def faddeeva(x: torch.Tensor, y: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Faddeeva function ``w(x + iy) = exp(-z^2) erfc(-iz)`` in the upper half plane.

    Parameters
    ----------
    x : torch.Tensor
        Real part of the argument (dimensionless; float32 or float64).
    y : torch.Tensor or float
        Imaginary part of the argument (dimensionless), ``>= 0``,
        broadcastable against ``x``.

    Returns
    -------
    re, im : torch.Tensor
        Real and imaginary parts of ``w`` (dimensionless), broadcast shape.
        Not differentiable (use :func:`voigt_profile` for gradients).

    Raises
    ------
    TypeError
        If ``x`` is not a float32/float64 tensor.
    ValueError
        If any ``y < 0`` or any input is NaN.

    Examples
    --------
    >>> import torch
    >>> re, im = faddeeva(torch.tensor([0.0, 1.0], dtype=torch.float64), 0.0)
    >>> re  # exp(-x^2) on the real axis
    tensor([1.0000, 0.3679], dtype=torch.float64)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    cdtype = _complex_dtype(x.dtype)
    y_t = torch.as_tensor(y, dtype=x.dtype, device=x.device)
    if bool(torch.isnan(x).any()) or bool(torch.isnan(y_t).any()):
        raise ValueError("faddeeva: x and y must not contain NaN")
    if bool((y_t < 0).any()):
        raise ValueError("faddeeva: y must be >= 0 (upper half plane)")
    with torch.no_grad():
        (x_flat, y_flat), shape = _broadcast_flat(x.detach(), y_t.detach())
        z = torch.complex(x_flat, y_flat)
        # Wings: w = (i/sqrt(pi)) F(v) / z with v = 1/z^2
        inv_z = torch.reciprocal(z)
        w = (1j * _INV_SQRT_PI) * inv_z * _wing_fraction(inv_z * inv_z)
        core_index = torch.nonzero(
            x_flat * x_flat + y_flat * y_flat < CORE_RADIUS * CORE_RADIUS
        ).reshape(-1)
        if core_index.numel() > 0:
            w_core = _weideman_core(z.index_select(0, core_index).to(torch.complex128))
            w = w.index_copy(0, core_index, w_core.to(cdtype))
        w = w.reshape(shape)
    return torch.real(w).clone(), torch.imag(w).clone()
