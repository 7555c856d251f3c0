"""The result of :func:`blase_specutils.fit` and the warning that says when to distrust it.

:class:`FitResult` is defined in :mod:`blase_specutils.astro.results`, beside the
functions its views call and :func:`~blase_specutils.astro.results.read_fit`, which
returns the same class for a fit read back from its file.
"""

from __future__ import annotations

from ..astro.results import FitResult

__all__ = ["FitQualityWarning", "FitResult"]


class FitQualityWarning(UserWarning):
    """The fit may be wrong: see ``result.flags`` for the reasons."""
