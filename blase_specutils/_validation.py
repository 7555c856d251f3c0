"""Input checks shared by the public workflows: units in, plain float64 arrays out."""

from __future__ import annotations

import astropy.units as u
import numpy as np

__all__ = [
    "as_angstrom",
    "ascending_angstrom",
    "as_flux_array",
    "check_grid",
    "unpack_spectra",
]


def _looks_like_spectra(obj) -> bool:
    """True for a specutils Spectrum/SpectrumList or a non-empty list/tuple of Spectrum."""
    try:
        from specutils import Spectrum, SpectrumList
    except ImportError:  # pragma: no cover - specutils is a dependency
        return False
    if isinstance(obj, (Spectrum, SpectrumList)):
        return True
    return (
        isinstance(obj, (list, tuple))
        and len(obj) > 0
        and all(isinstance(item, Spectrum) for item in obj)
    )


def unpack_spectra(wavelength, flux, uncertainty, mask, caller: str):
    """Arrays for ``caller`` when a specutils spectrum is passed in place of ``wavelength``.

    When ``wavelength`` is not a spectrum, the arguments are returned unchanged (and the
    instrument is None). When it is a specutils ``Spectrum``, a ``SpectrumList`` or a
    list/tuple of spectra (one per order), the result is per-order lists of vacuum
    wavelength (Å, Quantity), flux, 1-σ uncertainty (None when any order lacks it) and
    good-pixel mask, and the instrument the first order names (or None).

    Raises
    ------
    TypeError
        ``flux`` is missing and ``wavelength`` is not a spectrum.
    ValueError
        A spectrum is given together with a separate flux, uncertainty or mask.
    """
    spectra = _looks_like_spectra(wavelength)
    if not spectra:
        if flux is None:
            raise TypeError(
                f"{caller}: flux is missing; pass wavelength and flux arrays, or a specutils "
                "Spectrum, SpectrumList or list of spectra as the first argument"
            )
        return wavelength, flux, uncertainty, mask, None
    if flux is not None or uncertainty is not None or mask is not None:
        raise ValueError(
            f"{caller}: the spectrum carries its own flux, uncertainty and mask; pass it alone"
        )
    from .astro.adapters import spectra_to_arrays

    orders = spectra_to_arrays(wavelength)
    has_sigma = all(order.uncertainty is not None for order in orders)
    return (
        [order.wavelength * u.AA for order in orders],
        [order.flux * order.flux_unit for order in orders],
        [order.uncertainty * order.flux_unit for order in orders] if has_sigma else None,
        [order.good for order in orders],
        orders[0].meta.get("instrument"),
    )


def as_angstrom(value, name: str = "wavelength") -> np.ndarray:
    """A 1-D float64 array in Å from a spectral Quantity or a plain array (taken as Å).

    Raises
    ------
    astropy.units.UnitConversionError
        The Quantity's unit is not spectral (e.g. a flux or time unit).
    ValueError
        Not 1-D, empty, or non-finite values.
    """
    if isinstance(value, u.Quantity):
        if value.unit is u.dimensionless_unscaled or value.unit.physical_type == "dimensionless":
            raise u.UnitsError(f"{name} has no spectral unit; give it in Å, nm, µm, Hz or cm⁻¹")
        try:
            arr = value.to_value(u.AA, equivalencies=u.spectral())
        except u.UnitConversionError as err:
            raise u.UnitConversionError(
                f"{name} must be a spectral quantity (wavelength, frequency or wavenumber), "
                f"got unit {value.unit}"
            ) from err
    else:
        arr = value
    arr = np.array(arr, dtype=np.float64, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(arr)))} NaN or infinite values")
    return arr


def ascending_angstrom(value, name: str = "wavelength") -> tuple[np.ndarray, bool]:
    """:func:`as_angstrom`, turned round when a frequency or wavenumber axis ran upwards.

    Converting an increasing frequency or wavenumber axis to wavelength gives a decreasing
    one; it is reversed here so that it increases, and the caller reverses the arrays that
    go with it (flux, uncertainty, mask).

    Returns
    -------
    wavelength : numpy.ndarray
        Å, increasing when the input was monotonic.
    reversed : bool
        Whether the samples were reversed.
    """
    wavelength = as_angstrom(value, name)
    inverse_axis = isinstance(value, u.Quantity) and value.unit.physical_type != "length"
    if inverse_axis and wavelength.size > 1 and np.all(np.diff(wavelength) < 0):
        return wavelength[::-1].copy(), True
    return wavelength, False


def as_flux_array(value, name: str = "flux", *, size: int | None = None) -> np.ndarray:
    """A 1-D finite float64 array from a Quantity (unit dropped) or array."""
    if isinstance(value, u.Quantity):
        value = value.value
    arr = np.array(value, dtype=np.float64, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if size is not None and arr.size != size:
        raise ValueError(f"{name} has {arr.size} samples but the wavelength grid has {size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(arr)))} NaN or infinite values")
    return arr


def check_grid(wavelength: np.ndarray, name: str = "wavelength", *, min_size: int = 3) -> None:
    """Raise ValueError unless the grid is strictly increasing with ``min_size`` samples."""
    if wavelength.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} samples, got {wavelength.size}")
    step = np.diff(wavelength)
    if np.any(step == 0):
        raise ValueError(f"{name} has {int(np.sum(step == 0))} duplicated values")
    if np.any(step < 0):
        raise ValueError(f"{name} is not sorted in increasing order")
    if np.any(wavelength <= 0):
        raise ValueError(f"{name} must be positive")
