"""Input checks shared by the public workflows: units in, plain float64 arrays out.

The astropy/specutils side of every entry point (``clone``, ``fit``, ``CloneResult``): a
spectral Quantity or a plain array (Å) becomes a checked float64 array, and a specutils
spectrum passed in place of arrays becomes per-order lists. It lives in ``astro`` so that
the astro modules can use it too; ``blase_specutils._validation`` re-exports it.
"""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np

from ..prep.noise import pixel_noise

__all__ = [
    "as_angstrom",
    "ascending_angstrom",
    "as_flux_array",
    "check_grid",
    "observed_object",
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
    wavelength (Å, Quantity), flux, 1-σ uncertainty and good-pixel mask, and the
    instrument the first order names (or None). The uncertainty is None when no order has
    one; when only some lack it, those get a constant noise estimated from their
    pixel-to-pixel scatter (with a warning naming them) and the others keep their own.

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
    from .adapters import spectra_to_arrays

    orders = spectra_to_arrays(wavelength)
    lacking = [k for k, order in enumerate(orders) if order.uncertainty is None]
    if len(lacking) == len(orders):
        sigmas = None  # none has any: the caller estimates (and says so)
    else:
        sigmas = []
        for order in orders:
            if order.uncertainty is None:
                usable = order.good & np.isfinite(order.flux)
                sigma = np.full(order.flux.shape, pixel_noise(order.flux, usable))
            else:
                sigma = order.uncertainty
            sigmas.append(sigma * order.flux_unit)
        if lacking:
            warnings.warn(
                f"{caller}: spectrum {_listed(lacking)} of {len(orders)} has no uncertainty; "
                "using a constant noise estimated from its pixel-to-pixel scatter there "
                "(the other spectra keep their own uncertainties)",
                UserWarning,
                stacklevel=3,
            )
    return (
        [order.wavelength * u.AA for order in orders],
        [order.flux * order.flux_unit for order in orders],
        sigmas,
        [order.good for order in orders],
        orders[0].meta.get("instrument"),
    )


def observed_object(observation) -> str | None:
    """The name of the observed object, when ``observation`` is a spectrum that says it.

    Looks at the first spectrum's ``meta["object"]``, then its FITS header's ``OBJECT``
    (``meta["header"]``, as muler and specutils' FITS readers keep it). None for arrays
    or when neither is there.
    """
    if not _looks_like_spectra(observation):
        return None
    # a SpectrumList is a list too: its first spectrum
    first = observation[0] if isinstance(observation, (list, tuple)) else observation
    meta = getattr(first, "meta", None) or {}
    name = meta.get("object")
    header = meta.get("header")
    if not name and header is not None and hasattr(header, "get"):
        name = header.get("OBJECT")
    name = str(name).strip() if name is not None else ""
    return name or None


def _listed(indices: list[int]) -> str:
    """``3`` or ``1, 4 and 6`` (indices into the list of spectra, from 0)."""
    text = [str(k) for k in indices]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " and " + text[-1]


#: Unitless wavelengths are taken as Å; when even the longest is below this many Å (an
#: X-ray wavelength) they are evidently in µm (optical and infrared µm values are 0.3–30)
#: or in m, and are refused rather than read as Å.
SMALLEST_UNITLESS_ANGSTROM = 100.0


def _check_unitless_angstrom(arr: np.ndarray, name: str) -> None:
    longest = float(np.max(arr))
    if 0 < longest < SMALLEST_UNITLESS_ANGSTROM:
        guess = "µm" if longest > 0.01 else "m" if longest < 1e-4 else "µm or m"
        scaled = "wavelength * u.um" if guess == "µm" else "wavelength * u.m"
        raise ValueError(
            f"{name} has no unit, so it is read as Å, but its values "
            f"({float(np.min(arr)):.4g} to {longest:.4g}) would then be X-ray wavelengths: "
            f"they look like {guess}. Pass a Quantity with its unit, e.g. {scaled} "
            "(astropy.units as u), or convert it to Å"
        )


def as_angstrom(value, name: str = "wavelength") -> np.ndarray:
    """A 1-D float64 array in Å from a spectral Quantity or a plain array (taken as Å).

    A plain array whose longest value is below :data:`SMALLEST_UNITLESS_ANGSTROM`
    (100 Å) is refused: such values are evidently µm or m, and read as Å they would give
    a nonsense clone or fit.

    Raises
    ------
    astropy.units.UnitConversionError
        The Quantity's unit is not spectral (e.g. a flux or time unit).
    ValueError
        Not 1-D, empty, non-finite values, or unitless values evidently not in Å.
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
    if not isinstance(value, u.Quantity):
        _check_unitless_angstrom(arr, name)
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
