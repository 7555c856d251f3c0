"""The line stage's common modes: what every line can do together belongs to a global.

When the line centres train, shifting all of them by the same velocity is exactly what the
RV does; when the widths train, widening all of them together is close to what v sin i
(and R) does. Left free, the lines take those changes over from the globals: on WASP 69
with every line property training, the polished RV moved 0.10 km/s (4.7 σ) from the
amplitude-only fit while χ² fell, because the centres had taken a common shift. The line
stage therefore keeps the lines' departures orthogonal to those directions: after each
optimiser step the information-weighted mean of the departures of the centres (as a
velocity) and of ln σ and ln γ is removed from the lines the data cover, so each line
changes only *relative to* its neighbours and the common part stays with the RV, v sin i
and R.

The weight of a stellar line is the information its data carry about its position, 1/σ_v²
from the curvature of χ² in the line's own centre (so the removed mean is the line-by-line
RV of the departures, and a polish of the RV sees no common shift); a telluric line's is
d² / w for its depth d and FWHM w (a single line's information in uniform noise). Lines
outside the data have weight 0 and are never moved by the projection.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.lineforest import SPEED_OF_LIGHT_KMS
from ..core.profiles import pseudo_voigt_peak

__all__ = [
    "COMMON_MODE_PARAMETERS",
    "common_mode_weights",
    "good_ranges",
    "remove_common_modes",
    "velocity_information",
]

#: Line parameters (forest attributes) whose common mode a global parameter carries.
COMMON_MODE_PARAMETERS = ("center_shift", "ln_sigma", "ln_gamma")


@torch.no_grad()
def common_mode_weights(forest, ranges: list[tuple[float, float]], rv: float) -> torch.Tensor:
    """Each line's weight in the common mode: depth² / FWHM inside the data, else 0.

    Parameters
    ----------
    forest : LineForest
        The clone (rest-frame centres).
    ranges : list of (float, float)
        Wavelength ranges (Å, the data's frame) of the good pixels of each order.
    rv : float
        Radial velocity (km/s) that moves the lines into the data's frame.

    Returns
    -------
    torch.Tensor
        One non-negative weight per line (the forest's dtype and device).
    """
    sigma, gamma = torch.exp(forest.ln_sigma), torch.exp(forest.ln_gamma)
    strength = torch.exp(forest.ln_amplitude) * pseudo_voigt_peak(sigma, gamma)
    depth = strength if forest.mode == "linear" else -torch.expm1(-strength)
    fwhm = torch.sqrt((2.3548 * sigma) ** 2 + (2.0 * gamma) ** 2)
    centre = (forest.center_ref + forest.center_shift.double()) * (1 + rv / SPEED_OF_LIGHT_KMS)
    inside = torch.zeros_like(centre, dtype=torch.bool)
    for lo, hi in ranges:
        inside |= (centre >= lo) & (centre <= hi)
    weight = depth.abs() ** 2 / fwhm
    weight = torch.where(inside.to(weight.device), weight, torch.zeros_like(weight))
    return torch.nan_to_num(weight, nan=0.0, posinf=0.0, neginf=0.0)


def velocity_information(sigma_v: np.ndarray, forest) -> torch.Tensor:
    """Weights ``1/σ_v²`` from each line's velocity error (NaN, no information: 0).

    ``sigma_v`` is :func:`~.diagnostics.line_velocities` without the local χ² scaling:
    the curvature of χ² in the line's own position, with everything else held.
    """
    weight = 1.0 / np.asarray(sigma_v, dtype=float) ** 2
    weight = np.where(np.isfinite(weight), weight, 0.0)
    return torch.as_tensor(weight, dtype=forest.dtype, device=forest.ln_amplitude.device)


@torch.no_grad()
def remove_common_modes(forest, start: dict, weight: torch.Tensor, names) -> dict:
    """Remove the weighted mean departure of each trained parameter in ``names``.

    Parameters
    ----------
    forest : LineForest
        Modified in place.
    start : dict
        The parameters at the start of the stage (:func:`~.diagnostics.line_values`).
    weight : torch.Tensor
        :func:`common_mode_weights`.
    names : iterable of str
        Forest attributes to treat (a subset of :data:`COMMON_MODE_PARAMETERS`); those
        that do not train are left alone.

    Returns
    -------
    dict
        The mean removed from each parameter (centres as a velocity, km/s).
    """
    total = float(weight.sum())
    removed: dict[str, float] = {}
    if not total > 0:
        return removed
    inside = weight > 0
    for name in names:
        parameter = getattr(forest, name)
        if not parameter.requires_grad:
            continue
        delta = parameter - start[name].to(parameter)
        if name == "center_shift":
            reference = (forest.center_ref + start[name].double()).to(parameter)
            velocity = SPEED_OF_LIGHT_KMS * delta / reference
            mean = float((weight * velocity).sum() / total)
            correction = reference * (mean / SPEED_OF_LIGHT_KMS)
        else:
            mean = float((weight * delta).sum() / total)
            correction = torch.full_like(parameter, mean)
        parameter.sub_(torch.where(inside, correction, torch.zeros_like(correction)))
        removed[name] = mean
    return removed


def good_ranges(orders) -> list[tuple[float, float]]:
    """(first, last) wavelength of the good pixels of each order that has any."""
    out = []
    for order in orders:
        wl = np.asarray(order.wavelength)[np.asarray(order.good, dtype=bool)]
        if wl.size:
            out.append((float(wl.min()), float(wl.max())))
    return out
