"""Broad intrinsic lines of the stellar clone (hydrogen in A stars, Brackett and Paschen
lines in young stars): found by their width, masked from the fit's χ².

A template's hydrogen line rarely matches the star's (Stark-broadened wings that depend
on gravity and temperature, a different depth); left in the χ², the mismatch of a line
hundreds of km/s wide is absorbed by the only global that broadens, v sin i, which then
runs to its ceiling (HPF A0V single orders: 185–208 km/s; an IGRINS T Tauri star with
Brackett lines: the 495 km/s ceiling). Masking the pixels around such lines leaves the
narrow lines to measure RV and v sin i; the broad lines stay in the model, so the model
(and the continuum and tellurics fitted under it) is still right where the mask ends.

A line is *broad* when its intrinsic (clone) FWHM exceeds a velocity threshold,
:data:`DEFAULT_BROAD_FWHM_KMS`. The threshold is about the template, not the star: a
clone is unrotated, so its metal lines have the thermal and pressure widths of a few to
~ 20 km/s whatever the star's v sin i, while hydrogen lines of hot stars are 500–2000 km/s
wide. 200 km/s lies in the gap between the two populations. A broad line must also be
at least :data:`BROAD_MIN_DEPTH` deep: a cool star's clone has a few shallow pseudo-lines
that wide (PHOENIX 3900 K, 10280–10380 Å: 268 and 200 km/s, 0.3 % deep, the clone's
mop-up of the pseudo-continuum), whose shape cannot pull v sin i, while the hydrogen
lines of the PHOENIX 10 kK clone are 16–26 % deep.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.lineforest import SPEED_OF_LIGHT_KMS
from ..core.profiles import pseudo_voigt_peak

__all__ = [
    "BROAD_LINE_HANDLINGS",
    "DEFAULT_BROAD_FWHM_KMS",
    "BROAD_MIN_DEPTH",
    "MASK_HALF_WIDTH_FWHM",
    "MIN_NARROW_LINES",
    "NARROW_LINE_DEPTH",
    "broad_line_index",
    "broad_line_pixels",
    "narrow_lines_in_good_pixels",
]

#: Accepted values of ``FitOptions.broad_lines``.
BROAD_LINE_HANDLINGS = ("mask", "keep")

#: Intrinsic FWHM (km/s) above which a clone line counts as broad.
DEFAULT_BROAD_FWHM_KMS = 200.0

#: Peak depth (1 − F at the centre, single line) below which a wide line is not broad.
BROAD_MIN_DEPTH = 0.02

#: Pixels within this many FWHM of a broad line's (Doppler-shifted) centre are masked:
#: there a Lorentzian still has ≥ 20 % of its peak depth, and a 30 % mismatch of its
#: width leaves residuals of several per cent of the line's depth.
MASK_HALF_WIDTH_FWHM = 1.5

#: Fewer narrow lines than this (at least :data:`NARROW_LINE_DEPTH` deep) left in the
#: good pixels: RV and v sin i are not constrained once the broad lines are masked, and
#: they are kept instead (HPF HR 3039 single orders with 3–7 narrow lines left: RVs of
#: −511 to +880 km/s, rv_ambiguous; the synthetic test, 14 lines: recovered).
MIN_NARROW_LINES = 10
NARROW_LINE_DEPTH = 0.01


def _depth(props: dict) -> np.ndarray:
    with torch.no_grad():
        peak = pseudo_voigt_peak(
            torch.as_tensor(props["sigma"]), torch.as_tensor(props["gamma"])
        ).numpy()
    return 1.0 - np.exp(-props["amplitude"] * peak)


def broad_line_index(
    forest, fwhm_kms: float = DEFAULT_BROAD_FWHM_KMS, min_depth: float = BROAD_MIN_DEPTH
) -> np.ndarray:
    """Rows of ``forest`` whose intrinsic FWHM exceeds ``fwhm_kms`` and whose single-line
    depth is at least ``min_depth`` (emission lines too, by the same measure).

    Parameters
    ----------
    forest : LineForest
        The stellar clone.
    fwhm_kms : float
        The threshold in velocity, km/s (FWHM × c / λ).
    min_depth : float
        Smallest peak depth, 1 − exp(−a V(0)).

    Returns
    -------
    numpy.ndarray of int
    """
    if not np.isfinite(fwhm_kms) or fwhm_kms <= 0:
        raise ValueError(f"broad_fwhm_kms must be a positive number, got {fwhm_kms!r}")
    props = forest.line_properties()
    width = SPEED_OF_LIGHT_KMS * props["fwhm"] / props["center"]
    return np.flatnonzero((width > fwhm_kms) & (_depth(props) >= min_depth))


def broad_line_pixels(
    wavelengths, forest, index: np.ndarray, rv: float,
    half_width_fwhm: float = MASK_HALF_WIDTH_FWHM,
) -> list[np.ndarray]:  # fmt: skip
    """Per order, the pixels within ``half_width_fwhm`` FWHM of a broad line at ``rv``.

    Parameters
    ----------
    wavelengths : list of numpy.ndarray
        Pixel wavelengths of each order (Å, the data's frame).
    forest : LineForest
        The stellar clone (rest frame).
    index : numpy.ndarray of int
        The broad lines (:func:`broad_line_index`).
    rv : float
        Radial velocity, km/s, that moves the lines into the data's frame.
    half_width_fwhm : float
        Half-width of each masked interval in units of the line's FWHM.

    Returns
    -------
    list of numpy.ndarray of bool
        True where a pixel lies inside a broad line's interval.
    """
    props = forest.line_properties()
    factor = 1.0 + rv / SPEED_OF_LIGHT_KMS
    centre = props["center"][index] * factor
    half = half_width_fwhm * props["fwhm"][index] * factor
    out = []
    for w in wavelengths:
        w = np.asarray(w, dtype=float)
        inside = np.zeros(w.shape, dtype=bool)
        for c, h in zip(centre, half):
            inside |= np.abs(w - c) <= h
        out.append(inside)
    return out


def narrow_lines_in_good_pixels(
    wavelengths, goods, forest, broad: np.ndarray, rv: float,
    depth: float = NARROW_LINE_DEPTH,
) -> int:  # fmt: skip
    """How many of the clone's other lines at least ``depth`` deep fall on good pixels."""
    props = forest.line_properties()
    line_depth = _depth(props)
    keep = np.ones(props["center"].size, dtype=bool)
    keep[broad] = False
    keep &= line_depth >= depth
    centre = props["center"][keep] * (1.0 + rv / SPEED_OF_LIGHT_KMS)
    count = 0
    for w, good in zip(wavelengths, goods):
        w = np.asarray(w, dtype=float)
        if w.size < 2:
            continue
        pos = np.clip(np.searchsorted(w, centre), 1, w.size - 1)
        inside = (centre >= w[0]) & (centre <= w[-1])
        # the nearer pixel of the two around each centre
        nearest = np.where(np.abs(w[pos] - centre) < np.abs(w[pos - 1] - centre), pos, pos - 1)
        count += int(np.sum(inside & np.asarray(good)[nearest]))
    return count
