"""Independent synthetic observations with known truth, for injection–recovery.

This generator deliberately shares no code with the forward model in
:mod:`blase_specutils.core`: it works in numpy/scipy on its own, finer velocity
grid (0.1 km/s by default), shifts by interpolation rather than by moving line
centres, samples the rotation kernel directly instead of integrating it over
pixels, broadens the instrument with :func:`scipy.ndimage.gaussian_filter1d`, and
bins into pixels through the cumulative trapezoidal integral. Agreement between a
fit and the injected values therefore tests the model, not a copy of itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import cumulative_trapezoid
from scipy.ndimage import gaussian_filter1d

__all__ = ["SyntheticObservation", "perturb_line_depths", "observe"]

_C_KMS = 299792.458


@dataclass
class SyntheticObservation:
    """A simulated échelle order and the truth it was made from.

    Attributes
    ----------
    wavelength : numpy.ndarray
        Pixel centres, Å.
    flux : numpy.ndarray
        Noisy observed flux (continuum ≈ ``continuum_level``).
    uncertainty : numpy.ndarray
        1-σ noise per pixel.
    noiseless : numpy.ndarray
        The flux before noise.
    truth : dict
        Injected ``rv`` (km/s), ``vsini`` (km/s), ``resolving_power``, ``limb_darkening``, ``snr``.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    uncertainty: np.ndarray
    noiseless: np.ndarray
    truth: dict


def perturb_line_depths(
    wavelength: np.ndarray,
    flat_flux: np.ndarray,
    *,
    amplitude: float = 0.15,
    period_angstrom: float = 37.0,
    phase: float = 0.3,
) -> np.ndarray:
    """Scale every line's depth by a smooth factor ``1 + amplitude·sin(2πλ/P + φ)``.

    Parameters
    ----------
    wavelength : numpy.ndarray
        Å.
    flat_flux : numpy.ndarray
        Continuum-normalised flux.
    amplitude, period_angstrom, phase : float
        Size (fraction), period (Å) and phase (rad) of the perturbation.
    """
    factor = 1.0 + amplitude * np.sin(2.0 * np.pi * wavelength / period_angstrom + phase)
    return np.clip(1.0 - (1.0 - flat_flux) * factor, 0.0, None)


def _rotation_profile(velocity: np.ndarray, vsini: float, epsilon: float) -> np.ndarray:
    x = velocity / vsini
    inside = np.abs(x) < 1.0
    prof = np.zeros_like(velocity)
    r = 1.0 - x[inside] ** 2
    prof[inside] = 2.0 * (1.0 - epsilon) * np.sqrt(r) + 0.5 * np.pi * epsilon * r
    return prof


def observe(
    wavelength: np.ndarray,
    flat_flux: np.ndarray,
    pixel_centers: np.ndarray,
    *,
    rv: float,
    vsini: float,
    resolving_power: float,
    limb_darkening: float = 0.6,
    snr: float = 200.0,
    continuum_level: float = 1.0,
    step_kms: float = 0.1,
    seed: int = 0,
) -> SyntheticObservation:
    """Observe a native-resolution spectrum through RV, rotation, an instrument and pixels.

    Parameters
    ----------
    wavelength, flat_flux : numpy.ndarray
        Native-resolution rest-frame spectrum (Å, continuum-normalised).
    pixel_centers : numpy.ndarray
        Detector pixel centres, Å (increasing).
    rv : float
        Radial velocity, km/s (positive = redshift).
    vsini : float
        Projected rotational velocity, km/s (> 0).
    resolving_power : float
        Instrumental R (Gaussian FWHM = λ/R).
    limb_darkening : float
        Linear limb-darkening coefficient.
    snr : float
        Signal-to-noise ratio per pixel at the continuum.
    continuum_level : float
        Flux level of the continuum.
    step_kms : float
        Velocity step of the internal grid, km/s.
    seed : int
        Seed of the noise.
    """
    pixel_centers = np.asarray(pixel_centers, dtype=np.float64)
    mid = 0.5 * (pixel_centers[1:] + pixel_centers[:-1])
    edges = np.concatenate(
        [[2 * pixel_centers[0] - mid[0]], mid, [2 * pixel_centers[-1] - mid[-1]]]
    )
    pad = 1.0 + 200.0 / _C_KMS
    lo, hi = edges[0] / pad, edges[-1] * pad
    n = int(np.ceil(np.log(hi / lo) / (step_kms / _C_KMS))) + 1
    grid = lo * np.exp(np.arange(n) * step_kms / _C_KMS)
    # Doppler: the observed flux at λ is the rest-frame flux at λ / (1 + v/c).
    shifted = np.interp(grid / (1.0 + rv / _C_KMS), wavelength, flat_flux)
    # Rotation: kernel sampled on the velocity grid, normalised to unit sum.
    half = int(np.ceil(vsini / step_kms)) + 1
    v = np.arange(-half, half + 1) * step_kms
    kernel = _rotation_profile(v, vsini, limb_darkening)
    kernel /= kernel.sum()
    rotated = np.convolve(np.pad(shifted, half, mode="edge"), kernel, mode="valid")
    sigma_pix = _C_KMS / resolving_power / (2.0 * np.sqrt(2.0 * np.log(2.0))) / step_kms
    broadened = gaussian_filter1d(rotated, sigma_pix, mode="nearest", truncate=6.0)
    # Pixel integration through the cumulative integral.
    cum = np.concatenate([[0.0], cumulative_trapezoid(broadened, grid)])
    integral = np.interp(edges, grid, cum)
    noiseless = continuum_level * np.diff(integral) / np.diff(edges)
    rng = np.random.default_rng(seed)
    sigma = continuum_level / snr * np.sqrt(np.clip(noiseless / continuum_level, 1e-3, None))
    flux = noiseless + rng.normal(size=noiseless.size) * sigma
    truth = {
        "rv": rv,
        "vsini": vsini,
        "resolving_power": resolving_power,
        "limb_darkening": limb_darkening,
        "snr": snr,
    }
    return SyntheticObservation(pixel_centers, flux, sigma, noiseless, truth)
