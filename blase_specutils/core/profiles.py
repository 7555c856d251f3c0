"""Line profiles: the pseudo-Voigt of Thompson, Cox & Hastings and the exact Voigt.

All profiles are area-normalised in wavelength offset ``dx`` (Å): the integral over
``dx`` is 1, so a line of amplitude ``a`` removes ``a`` Å of equivalent width in the
optically thin limit. Conventions follow :func:`scipy.special.voigt_profile`:
``sigma`` is the Gaussian standard deviation and ``gamma`` the Lorentzian half width
at half maximum, both in Å.

The pseudo-Voigt (Ida, Ando & Toraya 2000, in the Thompson–Cox–Hastings form) mixes a
Lorentzian and a Gaussian that *share* the total FWHM ``f`` of the Voigt profile::

    f = (fG^5 + 2.69269 fG^4 fL + 2.42843 fG^3 fL^2 + 4.47163 fG^2 fL^3
         + 0.07842 fG fL^4 + fL^5)^(1/5)
    eta = 1.36603 (fL/f) - 0.47719 (fL/f)^2 + 0.11116 (fL/f)^3
    V = eta L(dx; f) + (1 - eta) G(dx; f)

with ``fG = 2 sqrt(2 ln 2) sigma`` and ``fL = 2 gamma``. Its peak error relative to the
exact Voigt is about 1 %.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "GAUSSIAN_FWHM_PER_SIGMA",
    "tch_fwhm_and_eta",
    "pseudo_voigt",
    "pseudo_voigt_peak",
    "voigt",
    "lorentzian",
    "gaussian",
    "wing_correction",
]

#: FWHM of a Gaussian in units of its standard deviation, 2 sqrt(2 ln 2).
GAUSSIAN_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_TCH = (2.69269, 2.42843, 4.47163, 0.07842)
_ETA = (1.36603, -0.47719, 0.11116)


def tch_fwhm_and_eta(sigma: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Total FWHM and Lorentzian fraction of the Thompson–Cox–Hastings pseudo-Voigt.

    Parameters
    ----------
    sigma : torch.Tensor
        Gaussian standard deviation, Å (> 0).
    gamma : torch.Tensor
        Lorentzian half width at half maximum, Å (> 0).

    Returns
    -------
    fwhm : torch.Tensor
        Total full width at half maximum, Å.
    eta : torch.Tensor
        Lorentzian mixing fraction in [0, 1].
    """
    fg = GAUSSIAN_FWHM_PER_SIGMA * sigma
    fl = 2.0 * gamma
    c1, c2, c3, c4 = _TCH
    # Horner form of the quintic in (fG, fL), homogeneous of degree 5.
    f5 = fg**5 + fl * (c1 * fg**4 + fl * (c2 * fg**3 + fl * (c3 * fg**2 + fl * (c4 * fg + fl))))
    fwhm = f5**0.2
    r = fl / fwhm
    eta = r * (_ETA[0] + r * (_ETA[1] + r * _ETA[2]))
    return fwhm, eta


def lorentzian(dx: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Area-normalised Lorentzian with half width at half maximum ``gamma`` (Å)."""
    return (gamma / math.pi) / (dx * dx + gamma * gamma)


def gaussian(dx: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Area-normalised Gaussian with standard deviation ``sigma`` (Å)."""
    return torch.exp(-0.5 * (dx / sigma) ** 2) / (_SQRT_2PI * sigma)


def pseudo_voigt(dx: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Thompson–Cox–Hastings pseudo-Voigt profile (area-normalised).

    Parameters
    ----------
    dx : torch.Tensor
        Offset from line centre, Å.
    sigma : torch.Tensor
        Gaussian standard deviation, Å; broadcast against ``dx``.
    gamma : torch.Tensor
        Lorentzian half width at half maximum, Å; broadcast against ``dx``.

    Returns
    -------
    torch.Tensor
        Profile value, 1/Å.
    """
    fwhm, eta = tch_fwhm_and_eta(sigma, gamma)
    half = 0.5 * fwhm
    return eta * lorentzian(dx, half) + (1.0 - eta) * gaussian(dx, fwhm / GAUSSIAN_FWHM_PER_SIGMA)


def pseudo_voigt_peak(sigma: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Peak value V(0) of the pseudo-Voigt, 1/Å."""
    fwhm, eta = tch_fwhm_and_eta(sigma, gamma)
    return eta * (2.0 / (math.pi * fwhm)) + (1.0 - eta) * (
        GAUSSIAN_FWHM_PER_SIGMA / (_SQRT_2PI * fwhm)
    )


def voigt(dx: torch.Tensor, sigma: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Exact Voigt profile (area-normalised) through a Faddeeva approximation.

    Same conventions as :func:`pseudo_voigt`; see :mod:`blase_specutils.core.faddeeva`.
    """
    from .faddeeva import voigt_profile

    return voigt_profile(dx, sigma, gamma)


def wing_correction(
    dx: torch.Tensor, alpha: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Smooth factor on a broad line's wings (the method paper's Appendix C.4, eq. C6).

    ``G = 1 + (e^α − 1) · S((|dx| − λt) / b)`` with ``S`` the logistic sigmoid: 1 in the
    core, ``e^α`` far out in the wings, the change centred at ``|dx| = λt`` and ``b`` wide.
    ``α < 0`` makes the wings sub-Lorentzian, ``α > 0`` super-Lorentzian; ``α = 0`` gives
    exactly 1. ``G > 0`` always, so the corrected line ``V · G`` still only absorbs.

    Parameters
    ----------
    dx : torch.Tensor
        Offset from line centre, Å.
    alpha : torch.Tensor
        Log stretch of the far wings (dimensionless); broadcast against ``dx``.
    offset : torch.Tensor
        Transition offset ``λt`` (> 0), Å.
    scale : torch.Tensor
        Transition width ``b`` (> 0), Å.

    Returns
    -------
    torch.Tensor
        ``G`` (dimensionless).
    """
    return 1.0 + torch.expm1(alpha) * torch.sigmoid((dx.abs() - offset) / scale)
