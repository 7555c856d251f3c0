"""Noise estimates from the data alone (numpy)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["pixel_noise"]


def pixel_noise(flux: np.ndarray, good: np.ndarray) -> float:
    """Robust per-pixel noise from second differences of good neighbouring pixels.

    ``2 f_i − f_{i−1} − f_{i+1}`` has variance 6σ² for white noise, and cancels a line
    profile to second order, so it follows the noise more closely than first differences
    on a line-rich spectrum (injection tests at S/N 300, v sin i 3 km/s: 1.4× the true σ,
    against 2.2× from first differences). 1.4826 × median|·|/√6, or 1 with too few pixels.

    Parameters
    ----------
    flux : numpy.ndarray
        Flux of one order, any units.
    good : numpy.ndarray
        Boolean mask of the pixels to use.

    Returns
    -------
    float
        The noise, in the flux's units.
    """
    triple = good[1:-1] & good[:-2] & good[2:]
    second = (2.0 * flux[1:-1] - flux[:-2] - flux[2:])[triple]
    if second.size <= 5:
        return 1.0
    noise = 1.4826 * float(np.median(np.abs(second))) / math.sqrt(6.0)
    return noise if noise > 0 else 1.0
