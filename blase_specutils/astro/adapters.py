"""Adapters between specutils spectra and the plain arrays the core works on.

The numerical core of ``blase_specutils`` takes numpy ``float64`` arrays in
vacuum ångström.  This module is the only place where spectral units, air
versus vacuum wavelengths, specutils masks and uncertainty classes are
translated into that convention:

* :func:`spectrum_to_arrays` turns one `specutils.Spectrum` (or the deprecated
  ``Spectrum1D``, or a muler HPF/IGRINS order) into an :class:`OrderArrays`;
* :func:`spectra_to_arrays` does the same for a `specutils.SpectrumList`, a
  muler ``EchelleSpectrumList``, a list of spectra or a single spectrum;
* :func:`arrays_to_spectrum` goes the other way;
* :func:`read_table_spectrum` reads a FITS binary table with wavelength, flux
  and uncertainty columns (e.g. the WASP 69 HPF stack);
* :func:`air_to_vacuum` and :func:`vacuum_to_air` convert wavelengths with the
  refractive index of standard dry air of Morton (2000, ApJS 130, 403, eq. 8).

Pixel convention: :class:`OrderArrays` carries ``good`` (``True`` = use the
pixel), the *inverse* of the specutils ``mask`` (``True`` = bad).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import astropy.units as u
import numpy as np
from astropy.nddata import (
    InverseVariance,
    NDUncertainty,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.utils.exceptions import AstropyUserWarning
from specutils import Spectrum, SpectrumList

__all__ = [
    "OrderArrays",
    "InvalidUncertaintyWarning",
    "spectrum_to_arrays",
    "spectra_to_arrays",
    "arrays_to_spectrum",
    "read_table_spectrum",
    "air_to_vacuum",
    "vacuum_to_air",
    "refractive_index_air",
]

#: Shortest wavelength (Å) where the dispersion formula of dry air is used;
#: it has a pole near 877 Å and is fitted to data above ~2000 Å.
MINIMUM_AIR_WAVELENGTH_ANGSTROM = 2000.0

_MEDIA = ("vacuum", "air")


class InvalidUncertaintyWarning(AstropyUserWarning):
    """Some uncertainties were zero, negative or not finite; those pixels were
    marked not good."""


@dataclasses.dataclass
class OrderArrays:
    """One spectral order as plain numpy arrays in the core's convention.

    Parameters
    ----------
    wavelength : numpy.ndarray
        Vacuum wavelength of each pixel centre, in Å; ``float64``, 1-D,
        finite and strictly increasing.
    flux : numpy.ndarray
        Flux of each pixel, in ``flux_unit``; ``float64``, same shape as
        ``wavelength``.  Pixels that are not good hold a finite placeholder
        (``0.0`` where the input flux was NaN or infinite) so that a mask
        applied by multiplication never meets a NaN.
    uncertainty : numpy.ndarray or None
        1-σ uncertainty of each pixel, in ``flux_unit``; ``float64``, same
        shape as ``flux``, or None when the spectrum had no uncertainty.
        Pixels that are not good hold a finite placeholder (``1.0`` where the
        input σ was ≤ 0 or not finite).
    good : numpy.ndarray
        Boolean, same shape as ``flux``: True for pixels to use (the inverse
        of the specutils ``mask``, which is True for bad pixels).
    flux_unit : astropy.units.UnitBase
        Unit of ``flux`` and ``uncertainty``.
    meta : dict
        Light bookkeeping (no FITS headers): ``"order"`` (echelle order
        label when the input had one), ``"instrument"``, ``"object"``,
        ``"index"`` (position in the input list), ``"medium"`` (medium of the
        *input* wavelengths, the arrays are always vacuum) and
        ``"spectral_unit"`` (unit of the input spectral axis).
    """

    wavelength: np.ndarray
    flux: np.ndarray
    uncertainty: np.ndarray | None
    good: np.ndarray
    flux_unit: u.UnitBase = u.dimensionless_unscaled
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Contiguous float64 arrays: reversed views would have
        # negative strides, which torch.from_numpy refuses.
        self.wavelength = np.ascontiguousarray(self.wavelength, dtype=np.float64)
        self.flux = np.ascontiguousarray(self.flux, dtype=np.float64)
        self.good = np.ascontiguousarray(self.good, dtype=bool)
        if self.uncertainty is not None:
            self.uncertainty = np.ascontiguousarray(self.uncertainty, dtype=np.float64)
        self.flux_unit = u.Unit(self.flux_unit)
        _check_wavelength(self.wavelength, "OrderArrays.wavelength")
        shapes = {"flux": self.flux.shape, "good": self.good.shape}
        if self.uncertainty is not None:
            shapes["uncertainty"] = self.uncertainty.shape
        for name, shape in shapes.items():
            if shape != self.wavelength.shape:
                raise ValueError(
                    f"OrderArrays.{name} has shape {shape} but wavelength has "
                    f"shape {self.wavelength.shape}"
                )

    @property
    def n_pixels(self) -> int:
        """Number of pixels in the order (good or not)."""
        return int(self.wavelength.size)

    @property
    def n_good(self) -> int:
        """Number of good pixels."""
        return int(np.count_nonzero(self.good))


# ---------------------------------------------------------------------------
# Air and vacuum wavelengths
# ---------------------------------------------------------------------------


def refractive_index_air(vacuum_wavelength_angstrom: Any) -> np.ndarray:
    """Refractive index of standard dry air at a vacuum wavelength.

    Morton (2000, ApJS 130, 403, eq. 8), the Birch & Downs (1994) update of
    Edlén (1966), as used by VALD and by the IAU convention for wavelengths
    above 2000 Å::

        n - 1 = 8.34254e-5 + 2.406147e-2 / (130 - s**2) + 1.5998e-4 / (38.9 - s**2)

    with ``s = 1e4 / λ_vac`` the vacuum wavenumber in µm⁻¹.

    Parameters
    ----------
    vacuum_wavelength_angstrom : array_like
        Vacuum wavelength, in Å; every value must be ≥ 2000 Å.

    Returns
    -------
    numpy.ndarray
        Refractive index n (dimensionless), same shape as the input.
    """
    wavelength = _as_air_wavelength_array(vacuum_wavelength_angstrom)
    s2 = (1.0e4 / wavelength) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def vacuum_to_air(wavelength_angstrom: Any) -> Any:
    """Convert vacuum wavelengths to air wavelengths (λ_air = λ_vac / n).

    Parameters
    ----------
    wavelength_angstrom : array_like or astropy.units.Quantity
        Vacuum wavelength, in Å when a plain number/array; a Quantity of
        length is converted and the result comes back in its unit.  Every
        value must be ≥ 2000 Å.

    Returns
    -------
    numpy.ndarray or float or astropy.units.Quantity
        Air wavelength, in Å (or in the input Quantity's unit).

    See Also
    --------
    refractive_index_air : the dispersion formula used.
    air_to_vacuum : the inverse.
    """
    values, unit = _strip_length_quantity(wavelength_angstrom)
    air = values / refractive_index_air(values)
    return _restore(air, unit, wavelength_angstrom)


def air_to_vacuum(
    wavelength_angstrom: Any, *, rtol: float = 1e-15, max_iterations: int = 20
) -> Any:
    """Convert air wavelengths to vacuum wavelengths.

    The refractive index is a function of the vacuum wavelength, so
    λ_vac = λ_air · n(λ_vac) is solved by fixed-point iteration, which
    contracts by λ dn/dλ ≈ 1e-5 per step and reaches double precision in
    three or four steps; the result is the exact inverse of
    :func:`vacuum_to_air`.

    Parameters
    ----------
    wavelength_angstrom : array_like or astropy.units.Quantity
        Air wavelength, in Å when a plain number/array; a Quantity of length
        is converted and the result comes back in its unit.  Every value must
        be ≥ 2000 Å.
    rtol : float, optional
        Relative change (dimensionless) below which the iteration stops.
    max_iterations : int, optional
        Iteration limit; `RuntimeError` if it is reached.

    Returns
    -------
    numpy.ndarray or float or astropy.units.Quantity
        Vacuum wavelength, in Å (or in the input Quantity's unit).
    """
    air, unit = _strip_length_quantity(wavelength_angstrom)
    vacuum = np.array(air, dtype=np.float64, copy=True)
    for _ in range(max_iterations):
        updated = air * refractive_index_air(vacuum)
        change = np.max(np.abs(updated - vacuum) / updated, initial=0.0)
        vacuum = updated
        if change <= rtol:
            break
    else:
        raise RuntimeError(
            f"air_to_vacuum did not converge to rtol={rtol} in {max_iterations} iterations"
        )
    return _restore(vacuum, unit, wavelength_angstrom)


def _as_air_wavelength_array(wavelength_angstrom: Any) -> np.ndarray:
    wavelength = np.asarray(wavelength_angstrom, dtype=np.float64)
    if not np.all(np.isfinite(wavelength)):
        raise ValueError("air/vacuum conversion: wavelengths must be finite")
    if wavelength.size and np.min(wavelength) < MINIMUM_AIR_WAVELENGTH_ANGSTROM:
        raise ValueError(
            "air/vacuum conversion is defined for wavelengths >= "
            f"{MINIMUM_AIR_WAVELENGTH_ANGSTROM:g} Angstrom; got "
            f"{np.min(wavelength):g} Angstrom"
        )
    return wavelength


def _strip_length_quantity(wavelength: Any) -> tuple[np.ndarray, u.UnitBase | None]:
    if isinstance(wavelength, u.Quantity):
        if wavelength.unit.physical_type != "length":
            raise ValueError(
                "air/vacuum conversion needs wavelengths (a length unit); got "
                f"unit {wavelength.unit}"
            )
        values = wavelength.to_value(u.AA)
        return _as_air_wavelength_array(values), wavelength.unit
    return _as_air_wavelength_array(wavelength), None


def _restore(values_angstrom: np.ndarray, unit: u.UnitBase | None, original: Any) -> Any:
    if unit is not None:
        return (values_angstrom * u.AA).to(unit)
    if np.ndim(original) == 0:
        return float(values_angstrom)
    return values_angstrom


# ---------------------------------------------------------------------------
# Spectrum -> arrays
# ---------------------------------------------------------------------------


def _check_wavelength(wavelength: np.ndarray, what: str) -> None:
    """Raise ValueError unless ``wavelength`` is 1-D, finite, strictly increasing."""
    if wavelength.ndim != 1:
        raise ValueError(f"{what} must be 1-D; got shape {wavelength.shape}")
    if wavelength.size == 0:
        raise ValueError(f"{what} is empty")
    n_bad = int(np.count_nonzero(~np.isfinite(wavelength)))
    if n_bad:
        raise ValueError(f"{what} has {n_bad} NaN or infinite wavelength(s)")
    steps = np.diff(wavelength)
    n_duplicate = int(np.count_nonzero(steps == 0))
    if n_duplicate:
        first = wavelength[1:][steps == 0][0]
        raise ValueError(
            f"{what} has {n_duplicate} duplicate wavelength(s) (first at {first!r} "
            "Angstrom); pixel centres must be distinct"
        )
    if np.any(steps < 0):
        raise ValueError(f"{what} must be strictly increasing")


def _check_medium(medium: str | None) -> None:
    if medium is not None and medium not in _MEDIA:
        raise ValueError(f"medium must be 'vacuum', 'air' or None; got {medium!r}")


def _wcs_declares_air(spectrum: Spectrum) -> bool:
    """True when the spectrum's WCS says its wavelengths are in air (FITS AWAV)."""
    wcs = getattr(spectrum, "wcs", None)
    # A FITS WCS names the axis type directly (older astropy reports AWAV's physical
    # type as plain "em.wl", so check the CTYPE first).
    ctypes = getattr(getattr(wcs, "wcs", None), "ctype", None)
    if ctypes is not None and any(str(c).upper().startswith("AWAV") for c in ctypes):
        return True
    try:
        physical_types = wcs.world_axis_physical_types
    except Exception:  # noqa: BLE001 - no WCS API: nothing declared
        return False
    return any(ptype is not None and "obs.atmos" in ptype for ptype in physical_types)


def _spectral_axis_to_angstrom(spectrum: Spectrum, medium: str) -> np.ndarray:
    """Pixel-centre wavelengths in Å in the input medium (no air correction)."""
    spectral_axis = spectrum.spectral_axis
    unit = spectral_axis.unit
    physical_type = unit.physical_type  # compares equal to each of its names
    if any(physical_type == name for name in ("length", "frequency", "wavenumber", "energy")):
        if medium == "air" and any(physical_type == name for name in ("frequency", "energy")):
            raise ValueError(
                f"medium='air' needs wavelengths or wavenumbers; the spectral axis "
                f"is in {unit} ({physical_type}), which does not depend on the medium"
            )
        values = u.Quantity(spectral_axis).to_value(u.AA, equivalencies=u.spectral())
    elif physical_type == "speed" and getattr(spectral_axis, "doppler_rest", None) is not None:
        # SpectralCoord applies its own Doppler convention and rest value.
        values = spectral_axis.to_value(u.AA)
    elif physical_type == "speed":
        raise ValueError(
            f"the spectral axis is a velocity ({unit!s}) without a rest wavelength; "
            "give it as a SpectralCoord with doppler_rest and doppler_convention, "
            "or in a spectral unit (wavelength, frequency, wavenumber or energy)"
        )
    else:
        raise ValueError(
            f"the spectral axis is in {unit!s} ({physical_type}), not a spectral "
            "unit (wavelength, frequency, wavenumber or energy); give the "
            "spectrum a spectral axis or a spectral WCS"
        )
    return np.array(values, dtype=np.float64, copy=True)  # never a view of the spectrum


def _uncertainty_to_sigma(
    uncertainty: NDUncertainty | None, flux_unit: u.UnitBase, n_pixels: int
) -> np.ndarray | None:
    """1-σ array in ``flux_unit`` from any supported astropy uncertainty."""
    if uncertainty is None:
        return None
    array = np.asarray(uncertainty.array, dtype=np.float64)
    own_unit = uncertainty.unit  # None means "the parent's unit (squared, ...)"
    with np.errstate(divide="ignore", invalid="ignore"):
        if isinstance(uncertainty, StdDevUncertainty):
            sigma = array if own_unit is None else (array * own_unit).to_value(flux_unit)
        elif isinstance(uncertainty, VarianceUncertainty):
            if own_unit is not None:
                array = (array * own_unit).to_value(flux_unit**2)
            sigma = np.sqrt(np.where(array >= 0, array, np.nan))
        elif isinstance(uncertainty, InverseVariance):
            if own_unit is not None:
                array = (array * own_unit).to_value(flux_unit**-2)
            sigma = 1.0 / np.sqrt(np.where(array > 0, array, np.nan))
        else:
            raise TypeError(
                f"uncertainty of type {type(uncertainty).__name__} is not supported; "
                "use StdDevUncertainty, VarianceUncertainty or InverseVariance"
            )
    sigma = np.broadcast_to(sigma, (n_pixels,)) if sigma.ndim == 0 else sigma
    if sigma.shape != (n_pixels,):
        raise ValueError(f"uncertainty has shape {sigma.shape} but flux has shape ({n_pixels},)")
    return np.array(sigma, dtype=np.float64)


def _light_meta(spectrum: Spectrum) -> dict:
    meta_in = spectrum.meta if isinstance(spectrum.meta, dict) else dict(spectrum.meta or {})
    meta: dict = {}
    for key in ("order", "m"):
        if key in meta_in and np.ndim(meta_in[key]) == 0:
            meta["order"] = meta_in[key]
            break
    header = meta_in.get("header")
    for key, header_key in (("instrument", "INSTRUME"), ("object", "OBJECT")):
        if key in meta_in and isinstance(meta_in[key], str):
            meta[key] = meta_in[key]
        elif header is not None and hasattr(header, "get") and header.get(header_key):
            meta[key] = str(header.get(header_key)).strip()
    return meta


def spectrum_to_arrays(spectrum: Spectrum, *, medium: str | None = None) -> OrderArrays:
    """Convert one spectrum (one échelle order) into an :class:`OrderArrays`.

    Parameters
    ----------
    spectrum : specutils.Spectrum
        A 1-D spectrum: `specutils.Spectrum`, the deprecated ``Spectrum1D``
        or a subclass (muler ``HPFSpectrum``, ``IGRINSSpectrum``).  Its
        spectral axis may be in any spectral unit (Å, nm, µm, m, Hz, cm⁻¹,
        eV, or a velocity with a ``doppler_rest``), come from an explicit
        axis, a FITS WCS or a gwcs, and may run in either direction.
    medium : {None, 'vacuum', 'air'}, optional
        Medium of the *input* wavelengths.  ``'air'`` converts them to vacuum
        with :func:`air_to_vacuum`; ``None`` (default) means vacuum unless the
        spectrum's FITS WCS declares air wavelengths (``CTYPE = 'AWAV'``).

    Returns
    -------
    OrderArrays
        Vacuum wavelengths in Å sorted increasing (flux, uncertainty and mask
        carried along), flux in the spectrum's unit, 1-σ uncertainties in
        the same unit and the ``good`` pixel mask.

    Raises
    ------
    TypeError
        If ``spectrum`` is not a `specutils.Spectrum`, or its uncertainty
        class is not StdDev/Variance/InverseVariance.
    ValueError
        If the spectral axis has no spectral unit, the flux is not 1-D, the
        wavelengths contain NaN or duplicates, or no pixel is good.

    Warns
    -----
    InvalidUncertaintyWarning
        When pixels not already masked have σ ≤ 0 or a non-finite σ; they
        are marked not good.

    Notes
    -----
    A pixel is good when the specutils mask does not flag it (mask values
    that are non-zero flag a pixel), its flux is finite and, when an
    uncertainty is present, its σ is finite and positive.
    """
    if not isinstance(spectrum, Spectrum):
        raise TypeError(
            "spectrum_to_arrays expects a specutils.Spectrum (or Spectrum1D); got "
            f"{type(spectrum).__module__}.{type(spectrum).__qualname__}"
        )
    _check_medium(medium)
    flux_quantity = spectrum.flux
    if flux_quantity.ndim != 1:
        raise ValueError(
            f"flux must be 1-D (one order); got shape {flux_quantity.shape}: use a "
            "SpectrumList with one spectrum per order, or pass one order"
        )
    declares_air = _wcs_declares_air(spectrum)
    if medium is None:
        medium = "air" if declares_air else "vacuum"
    elif medium == "vacuum" and declares_air:
        warnings.warn(
            "the spectrum's WCS declares air wavelengths (AWAV) but medium='vacuum' "
            "was requested; the wavelengths are used as vacuum wavelengths",
            AstropyUserWarning,
            stacklevel=2,
        )

    flux_unit = flux_quantity.unit
    flux = np.array(flux_quantity.value, dtype=np.float64)
    n_pixels = flux.size
    wavelength = _spectral_axis_to_angstrom(spectrum, medium)
    if wavelength.shape != flux.shape:
        raise ValueError(
            f"spectral axis has {wavelength.size} values but flux has {n_pixels} pixels"
        )
    if not np.all(np.isfinite(wavelength)):
        n_bad = int(np.count_nonzero(~np.isfinite(wavelength)))
        raise ValueError(f"the spectral axis has {n_bad} NaN or infinite wavelength(s)")
    if medium == "air":
        wavelength = air_to_vacuum(wavelength)

    sigma = _uncertainty_to_sigma(spectrum.uncertainty, flux_unit, n_pixels)

    if spectrum.mask is None:
        good = np.ones(n_pixels, dtype=bool)
    else:
        mask = np.asarray(spectrum.mask)
        if mask.shape != flux.shape:
            raise ValueError(f"mask has shape {mask.shape} but flux has shape {flux.shape}")
        good = mask == 0
    flux_finite = np.isfinite(flux)
    good &= flux_finite
    if sigma is not None:
        sigma_valid = np.isfinite(sigma) & (sigma > 0)
        n_invalid = int(np.count_nonzero(good & ~sigma_valid))
        if n_invalid:
            warnings.warn(
                f"{n_invalid} pixel(s) with uncertainty <= 0 or not finite were marked not good",
                InvalidUncertaintyWarning,
                stacklevel=2,
            )
        good &= sigma_valid
        sigma = np.where(sigma_valid, sigma, 1.0)
    flux = np.where(flux_finite, flux, 0.0)

    if not np.any(good):
        raise ValueError(
            f"all {n_pixels} pixels are bad (masked, NaN/inf flux, or σ <= 0 / not finite)"
        )

    order = _sorting_order(wavelength)
    if order is not None:
        wavelength, flux, good = wavelength[order], flux[order], good[order]
        sigma = None if sigma is None else sigma[order]
    _check_wavelength(wavelength, "the spectral axis")

    meta = _light_meta(spectrum)
    meta["medium"] = medium
    meta["spectral_unit"] = str(spectrum.spectral_axis.unit)
    return OrderArrays(
        wavelength=wavelength,
        flux=flux,
        uncertainty=sigma,
        good=good,
        flux_unit=flux_unit,
        meta=meta,
    )


def _sorting_order(wavelength: np.ndarray) -> np.ndarray | slice | None:
    """Indices that sort ``wavelength`` increasing, or None when already sorted."""
    steps = np.diff(wavelength)
    if np.all(steps >= 0):
        return None
    if np.all(steps <= 0):
        return slice(None, None, -1)
    return np.argsort(wavelength, kind="stable")


def _is_spectrum_sequence(obj: Any) -> bool:
    return isinstance(obj, (SpectrumList, list, tuple))


def spectra_to_arrays(obj: Any, *, medium: str | None = None) -> list[OrderArrays]:
    """Convert a spectrum or a collection of orders into a list of :class:`OrderArrays`.

    Parameters
    ----------
    obj : specutils.Spectrum, specutils.SpectrumList, list or tuple of specutils.Spectrum
        One spectrum (gives a list of one), a `specutils.SpectrumList`
        (including muler ``HPFSpectrumList`` / ``IGRINSSpectrumList``) or a
        list/tuple of spectra, one per order; orders may differ in length.
    medium : {None, 'vacuum', 'air'}, optional
        Medium of the input wavelengths, passed to :func:`spectrum_to_arrays`.

    Returns
    -------
    list of OrderArrays
        One per order, sorted by increasing first wavelength (Å); all in the
        flux unit of the first order of the input (orders in other but
        convertible units, e.g. mJy vs Jy, are converted).  ``meta["index"]``
        holds each order's position in the input.

    Raises
    ------
    TypeError
        If ``obj`` or one of its elements is not a spectrum.
    ValueError
        If the collection is empty, an order fails :func:`spectrum_to_arrays`
        (the message names the order), or the orders' flux units cannot be
        converted into one another without equivalencies.
    """
    if isinstance(obj, Spectrum):
        arrays = spectrum_to_arrays(obj, medium=medium)
        arrays.meta["index"] = 0
        return [arrays]
    if not _is_spectrum_sequence(obj):
        raise TypeError(
            "spectra_to_arrays expects a specutils.Spectrum, SpectrumList or a list of "
            f"spectra; got {type(obj).__module__}.{type(obj).__qualname__}"
        )
    spectra: list[Any] = list(obj)
    if not spectra:
        raise ValueError("no spectra given: the collection is empty")

    orders: list[OrderArrays] = []
    for index, spectrum in enumerate(spectra):
        if not isinstance(spectrum, Spectrum):
            raise TypeError(
                f"element {index} is a {type(spectrum).__module__}."
                f"{type(spectrum).__qualname__}, not a specutils.Spectrum"
            )
        try:
            arrays = spectrum_to_arrays(spectrum, medium=medium)
        except ValueError as error:
            raise ValueError(f"order at index {index}: {error}") from error
        arrays.meta["index"] = index
        orders.append(arrays)

    common_unit = orders[0].flux_unit
    for arrays in orders[1:]:
        if arrays.flux_unit == common_unit:
            continue
        try:
            scale = arrays.flux_unit.to(common_unit)
        except u.UnitConversionError:
            raise ValueError(
                f"orders have incompatible flux units: order at index "
                f"{arrays.meta['index']} is in {arrays.flux_unit}, order at index 0 in "
                f"{common_unit}"
            ) from None
        arrays.flux = arrays.flux * scale
        if arrays.uncertainty is not None:
            arrays.uncertainty = np.where(arrays.good, arrays.uncertainty * scale, 1.0)
        arrays.flux_unit = common_unit

    orders.sort(key=lambda arrays: arrays.wavelength[0])
    return orders


# ---------------------------------------------------------------------------
# arrays -> Spectrum, and files
# ---------------------------------------------------------------------------


def arrays_to_spectrum(
    wavelength_angstrom: Any,
    flux: Any,
    *,
    uncertainty: Any = None,
    good: Any = None,
    flux_unit: Any = None,
    meta: dict | None = None,
) -> Spectrum:
    """Build a `specutils.Spectrum` from plain arrays.

    Parameters
    ----------
    wavelength_angstrom : array_like or astropy.units.Quantity
        Vacuum wavelength of each pixel, in Å (a spectral Quantity is
        converted to Å); 1-D, finite and strictly increasing.
    flux : array_like or astropy.units.Quantity
        Flux of each pixel, in ``flux_unit``; same shape as the wavelengths.
    uncertainty : array_like or astropy.units.Quantity, optional
        1-σ uncertainty of each pixel, in the flux unit; stored as a
        `~astropy.nddata.StdDevUncertainty`.
    good : array_like of bool, optional
        True for good pixels; stored as the specutils ``mask = ~good``.
    flux_unit : str or astropy.units.UnitBase, optional
        Unit of ``flux``.  Default: the unit of ``flux`` when it is a
        Quantity (converted otherwise), dimensionless for plain arrays.
    meta : dict, optional
        Copied into the spectrum's ``meta``.

    Returns
    -------
    specutils.Spectrum
        Spectral axis in Å, flux in ``flux_unit``.

    Raises
    ------
    ValueError
        If the wavelengths are not 1-D, finite, strictly increasing and
        distinct, or the shapes disagree.
    """
    if isinstance(wavelength_angstrom, u.Quantity):
        wavelength = wavelength_angstrom.to_value(u.AA, equivalencies=u.spectral())
    else:
        wavelength = wavelength_angstrom
    wavelength = np.asarray(wavelength, dtype=np.float64)
    _check_wavelength(wavelength, "wavelength_angstrom")

    if isinstance(flux, u.Quantity):
        unit = flux.unit if flux_unit is None else u.Unit(flux_unit)
        flux_values = flux.to_value(unit)
    else:
        unit = u.dimensionless_unscaled if flux_unit is None else u.Unit(flux_unit)
        flux_values = flux
    flux_values = np.asarray(flux_values, dtype=np.float64)
    if flux_values.shape != wavelength.shape:
        raise ValueError(
            f"flux has shape {flux_values.shape} but wavelength_angstrom has shape "
            f"{wavelength.shape}"
        )

    uncertainty_object = None
    if uncertainty is not None:
        if isinstance(uncertainty, u.Quantity):
            sigma = uncertainty.to_value(unit)
        else:
            sigma = uncertainty
        sigma = np.asarray(sigma, dtype=np.float64)
        if sigma.shape != wavelength.shape:
            raise ValueError(
                f"uncertainty has shape {sigma.shape} but wavelength_angstrom has shape "
                f"{wavelength.shape}"
            )
        uncertainty_object = StdDevUncertainty(sigma)

    mask = None
    if good is not None:
        good_array = np.asarray(good)
        if good_array.dtype != bool:
            raise ValueError(f"good must be a boolean array; got dtype {good_array.dtype}")
        if good_array.shape != wavelength.shape:
            raise ValueError(
                f"good has shape {good_array.shape} but wavelength_angstrom has shape "
                f"{wavelength.shape}"
            )
        mask = ~good_array

    return Spectrum(
        spectral_axis=wavelength * u.AA,
        flux=flux_values * unit,
        uncertainty=uncertainty_object,
        mask=mask,
        meta=dict(meta) if meta else {},
    )


_WAVELENGTH_COLUMNS = ("wavelength", "wave", "lambda", "wavelength_angstrom", "wl")
_FLUX_COLUMNS = ("flux", "f", "spec", "spectrum")
_UNCERTAINTY_COLUMNS = ("uncertainty", "unc", "error", "err", "sigma", "flux_err", "e_flux")


def _find_column(
    names: Iterable[str], wanted: str | None, candidates: Sequence[str], role: str, required: bool
) -> str | None:
    by_lower = {name.lower(): name for name in names}
    if wanted is not None:
        if wanted.lower() not in by_lower:
            raise ValueError(f"{role} column {wanted!r} not in the table; columns: {list(names)}")
        return by_lower[wanted.lower()]
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    if required:
        raise ValueError(
            f"no {role} column found (looked for {list(candidates)}); columns: "
            f"{list(names)}; name it with the {role}_column argument"
        )
    return None


def read_table_spectrum(
    path: str | os.PathLike,
    *,
    hdu: int | str = 1,
    wavelength_column: str | None = None,
    flux_column: str | None = None,
    uncertainty_column: str | None = None,
    wavelength_unit: Any = u.AA,
) -> Spectrum:
    """Read a FITS binary table of wavelength, flux and uncertainty as a spectrum.

    Written for tables such as ``WASP_69_hpf_stack.fits`` (columns
    ``wavelength`` [Angstrom], ``flux``, ``uncertainty``; NaN where a pixel
    has no data).

    Parameters
    ----------
    path : str or os.PathLike
        FITS file.
    hdu : int or str, optional
        Extension holding the table (default 1).
    wavelength_column, flux_column, uncertainty_column : str, optional
        Column names (case-insensitive).  By default the first match of the
        usual names: ``wavelength``/``wave``/``lambda``…, ``flux``…,
        ``uncertainty``/``error``/``sigma``… (no uncertainty column is fine).
    wavelength_unit : str or astropy.units.UnitBase, optional
        Unit of the wavelength column when its ``TUNIT`` is empty (default Å).

    Returns
    -------
    specutils.Spectrum
        Spectral axis in Å; flux in the column's unit (dimensionless when the
        column has none); `~astropy.nddata.StdDevUncertainty` when an
        uncertainty column exists; ``mask`` True where the flux or the
        uncertainty is not finite.  ``meta`` holds ``path`` and the
        extension's header.

    Raises
    ------
    ValueError
        If a column cannot be found, or the extension is not a table.
    """
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        table_hdu = hdul[hdu]
        if not isinstance(table_hdu, (fits.BinTableHDU, fits.TableHDU)):
            raise ValueError(
                f"extension {hdu!r} of {os.fspath(path)!r} is a "
                f"{type(table_hdu).__name__}, not a table"
            )
        data = table_hdu.data
        columns = table_hdu.columns
        names = list(columns.names)
        header = table_hdu.header.copy()
        wave_name = _find_column(names, wavelength_column, _WAVELENGTH_COLUMNS, "wavelength", True)
        flux_name = _find_column(names, flux_column, _FLUX_COLUMNS, "flux", True)
        unc_name = _find_column(
            names, uncertainty_column, _UNCERTAINTY_COLUMNS, "uncertainty", False
        )

        def column(name: str) -> tuple[np.ndarray, u.UnitBase | None]:
            unit_text = (columns[name].unit or "").strip()
            unit = u.Unit(unit_text, parse_strict="raise") if unit_text else None
            return np.array(data[name], dtype=np.float64), unit

        wavelength, wave_unit = column(wave_name)
        flux, flux_unit = column(flux_name)
        sigma, sigma_unit = column(unc_name) if unc_name is not None else (None, None)

    wave_unit = u.Unit(wavelength_unit) if wave_unit is None else wave_unit
    flux_unit = u.dimensionless_unscaled if flux_unit is None else flux_unit
    if sigma is not None and sigma_unit is not None:
        try:
            sigma = (sigma * sigma_unit).to_value(flux_unit)
        except u.UnitConversionError:
            raise ValueError(
                f"uncertainty column {unc_name!r} is in {sigma_unit}, which does not "
                f"convert to the flux column's unit ({flux_unit})"
            ) from None

    bad = ~np.isfinite(flux)
    if sigma is not None:
        bad |= ~np.isfinite(sigma)
    wavelength_angstrom = (wavelength * wave_unit).to_value(u.AA, equivalencies=u.spectral())
    return Spectrum(
        spectral_axis=wavelength_angstrom * u.AA,
        flux=flux * flux_unit,
        uncertainty=None if sigma is None else StdDevUncertainty(sigma),
        mask=bad,
        meta={"path": os.fspath(path), "header": header},
    )
