"""Input checks shared by the preprocessing functions (numpy only): ``check_spectrum``."""

from __future__ import annotations

import numpy as np


def check_spectrum(wavelength, flux, flux_name: str = "flux") -> tuple[np.ndarray, np.ndarray]:
    """float64 copies of a 1-D spectrum, or a ValueError naming what is wrong.

    Rejects different lengths, fewer than 3 pixels, NaN/inf values, and wavelengths
    that are duplicated or not increasing.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    if wavelength.ndim != 1 or flux.ndim != 1:
        raise ValueError(f"wavelength and {flux_name} must be one-dimensional arrays")
    if wavelength.shape != flux.shape:
        raise ValueError(
            f"length mismatch: {wavelength.size} wavelengths but {flux.size} flux values"
        )
    if wavelength.size < 3:
        raise ValueError("need at least 3 pixels")
    if not np.all(np.isfinite(wavelength)):
        raise ValueError("wavelength contains NaN or inf")
    if not np.all(np.isfinite(flux)):
        raise ValueError(f"{flux_name} contains NaN or inf")
    steps = np.diff(wavelength)
    if np.any(steps == 0):
        raise ValueError("wavelength contains duplicated values")
    if np.any(steps < 0):
        raise ValueError("wavelength must be sorted in increasing order")
    return wavelength, flux
