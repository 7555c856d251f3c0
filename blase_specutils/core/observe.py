"""The observe chain, one function for every model of an observed spectrum.

A rest-frame stellar flux on the uniform-velocity fine grid (already Doppler-shifted,
since RV acts on the line centres) is observed as::

    rotate → veil (an additive continuum fraction r: (F + r)/(1 + r)) → × telluric
    → instrument → average into the data pixels

Multiplication by the tellurics comes before the instrumental convolution (they do not
commute). :class:`~blase_specutils.core.forward.ForwardModel` (the fit) and the astropy
facade :class:`~blase_specutils.astro.models.ExtrinsicModel` both call
:func:`observe_fine`, so the order of the operations cannot drift apart between them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["observe_fine", "veil"]

Operator = Callable[[torch.Tensor], torch.Tensor]


def veil(flux: torch.Tensor, veiling: torch.Tensor | float | None) -> torch.Tensor:
    """``(flux + r) / (1 + r)``: an additive continuum fraction ``r`` (paper §8.7).

    ``None`` returns ``flux`` itself; ``r = 0`` is an exact identity in floating point
    (``(x + 0) / 1``), so a model that never frees veiling is unchanged bit for bit.
    """
    if veiling is None:
        return flux
    return (flux + veiling) / (1.0 + veiling)


def observe_fine(
    stellar: torch.Tensor,
    *,
    rotate: Operator,
    instrument: Operator,
    average: Operator | None = None,
    telluric: torch.Tensor | None = None,
    veiling: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Observe a (shifted) stellar flux on the fine grid through the whole chain.

    Parameters
    ----------
    stellar : torch.Tensor
        Stellar flux on the fine grid, ``[..., M]``, RV already applied.
    rotate, instrument : callable
        Rotational and instrumental broadening on the fine grid (``[..., M] → [..., M]``):
        modules such as :class:`~blase_specutils.core.broadening.RotationalBroadening`, or
        a convolution with a precomputed kernel.
    average : callable, optional
        Fine grid → data pixels (e.g. a :class:`~blase_specutils.core.resample.PixelAverager`);
        None returns the instrument-broadened fine flux.
    telluric : torch.Tensor, optional
        Telluric transmission on the same fine grid (observatory frame).
    veiling : torch.Tensor or float, optional
        Additive continuum fraction (see :func:`veil`).

    Returns
    -------
    torch.Tensor
        The observed flux at the data pixels (or on the fine grid without ``average``).
    """
    flux = veil(rotate(stellar), veiling)
    if telluric is not None:
        flux = flux * telluric
    flux = instrument(flux)
    return flux if average is None else average(flux)
