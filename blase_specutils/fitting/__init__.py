"""Transfer learning: fit stellar (× telluric) clones to observed échelle spectra.

:func:`fit` is a pipeline of stages over one state (:mod:`.pipeline`); its settings are
frozen option objects (:mod:`.options`); the one result class is :class:`FitResult`
(:mod:`.result`). The modules:

``options``
    :class:`FitOptions` (:class:`SearchOptions`, :class:`LineOptions`,
    :class:`RunOptions`), the free-parameter set, the checked numbers.
``orders``
    The one order type made from the user's arrays, masks, noise, ranges.
``global_stage``
    The continuum-profiled χ², the joint start search, clipping, L-BFGS on the globals.
``diagnostics``
    Uncertainties (lines held; lines marginalised), per-order estimates, flags.
``pipeline``
    The stages and :func:`fit`.
``result``
    :class:`FitResult`.

(A package named ``fitting``, not ``fit``: ``blase_specutils.fit`` is the function.)
"""

from .global_stage import initial_resolving_power
from .options import (
    DEFAULT_FREE,
    FREE_PARAMETERS,
    FitOptions,
    LineOptions,
    RunOptions,
    SearchOptions,
    check_fit_numbers,
    free_parameters,
)
from .orders import BadPixelWarning, Order, envelope_degree, pixel_noise
from .pipeline import FitState, fit
from .result import FitQualityWarning, FitResult

__all__ = [
    "fit",
    "FitResult",
    "FitOptions",
    "SearchOptions",
    "LineOptions",
    "RunOptions",
    "FitState",
    "BadPixelWarning",
    "FitQualityWarning",
    "FREE_PARAMETERS",
    "DEFAULT_FREE",
    "free_parameters",
    "check_fit_numbers",
    "initial_resolving_power",
    "envelope_degree",
    "pixel_noise",
    "Order",
]
