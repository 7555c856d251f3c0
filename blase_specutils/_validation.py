"""The input checks, by the module name they had before they moved to ``astro.inputs``.

Everything here is :mod:`blase_specutils.astro.inputs` (kept so that existing imports of
``blase_specutils._validation`` keep working).
"""

from .astro.inputs import (
    SMALLEST_UNITLESS_ANGSTROM,
    as_angstrom,
    as_flux_array,
    ascending_angstrom,
    check_grid,
    unpack_spectra,
)

__all__ = [
    "SMALLEST_UNITLESS_ANGSTROM",
    "as_angstrom",
    "ascending_angstrom",
    "as_flux_array",
    "check_grid",
    "unpack_spectra",
]
