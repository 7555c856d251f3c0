"""Input checks shared by the public workflows: units in, plain float64 arrays out."""

from __future__ import annotations

import astropy.units as u
import numpy as np

__all__ = ["as_angstrom", "as_flux_array", "check_grid"]


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
