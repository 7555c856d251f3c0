"""Input checks shared by the public workflows: units in, plain float64 arrays out.

The astropy/specutils side of every entry point (``clone``, ``fit``, ``CloneResult``): a
spectral Quantity or a plain array (Å) becomes a checked float64 array, and a specutils
spectrum passed in place of arrays becomes per-order lists. It lives in ``astro`` so that
the astro modules can use it too; ``blase_specutils._validation`` re-exports it.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np

from ..prep.noise import pixel_noise

__all__ = [
    "as_angstrom",
    "as_mask",
    "as_path",
    "check_flag",
    "check_input_file",
    "check_output_file",
    "check_numbers",
    "n_masked",
    "real_values",
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
    if not _looks_like_spectra(observation) or (isinstance(observation, list) and not observation):
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
        if n_masked(value):
            raise ValueError(
                f"{name} has {n_masked(value)} masked values; a wavelength grid cannot have "
                "holes (mask the flux instead, or drop those samples)"
            )
        arr = value
    arr = real_values(arr, name)
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
    """A 1-D finite float64 array from a Quantity (unit dropped) or array.

    Complex or non-numeric values raise a TypeError; the masked entries of a numpy masked
    array count as NaN (and so raise here: drop them first, as ``clone`` does).
    """
    arr = real_values(value, name)
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


# --------------------------------------------------------------------------- numbers
#: A row of a numbers table (see :func:`check_numbers`): (unit a Quantity may carry, or
#: None for plain numbers only; smallest value or None; whether the smallest value itself
#: is excluded, or ``"both"`` for an open interval (low, high); largest value or None;
#: whether None is allowed; whether it is an integer).
NumberRule = tuple


def check_numbers(values: dict, table: dict[str, NumberRule]) -> dict:
    """Check the numeric settings in ``values`` against ``table``; plain numbers out.

    Every entry of ``values`` named in ``table`` must be a real number (not a bool or a
    string), finite, within its range, an integer where the table says so, and may be a
    Quantity where the table gives a unit (converted to it). Entries not in the table are
    returned unchanged.

    Raises
    ------
    ValueError
        Naming the setting and what is wrong with its value.
    """
    out = dict(values)
    for name, value in values.items():
        if name not in table:
            continue
        unit, low, exclusive, high, none_ok, integer = table[name]
        if value is None:
            if none_ok:
                continue
            raise ValueError(f"{name} must be a number, not None")
        if isinstance(value, u.Quantity):
            if unit is None:
                raise ValueError(f"{name} is a plain number, not a Quantity (got {value})")
            try:
                value = value.to_value(unit)
            except u.UnitConversionError as err:
                raise ValueError(
                    f"{name} must be in {unit.to_string() or 'dimensionless units'}, "
                    f"got {value.unit}"
                ) from err
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if isinstance(value, (complex, np.complexfloating)):
            raise ValueError(f"{name} must be a real number, got {value!r}")
        if integer:
            if not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if exclusive == "both" and not low < value < high:
            raise ValueError(f"{name} must be in ({low:g}, {high:g}), got {value:g}")
        if low is not None and (value <= low if exclusive else value < low):
            relation = ">" if exclusive else ">="
            raise ValueError(f"{name} must be {relation} {low:g}, got {value:g}")
        if high is not None and value > high:
            raise ValueError(f"{name} must be <= {high:g}, got {value:g}")
        out[name] = value
    return out


def check_flag(value, name: str) -> bool:
    """``value`` as a bool, or a TypeError when it is not one (``"no"`` is not False)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


# --------------------------------------------------------------------------- arrays
def real_values(value, name: str):
    """``value`` with a Quantity's unit dropped, refusing complex and non-numeric data.

    A numpy masked array comes back as a float64 array with NaN at its masked entries
    (``np.asarray`` would silently hand back the values under the mask). Complex values
    raise rather than lose their imaginary part (numpy's cast only warns), and strings or
    objects raise a TypeError naming ``name`` instead of numpy's conversion error.
    """
    if isinstance(value, u.Quantity):
        value = value.value
    if isinstance(value, np.ma.MaskedArray):
        _refuse_complex(value, name)
        data = np.ma.getdata(value).astype(np.float64, copy=True)
        data[np.ma.getmaskarray(value)] = np.nan
        return data
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged lists
        raise ValueError(
            f"{name} must be a numeric array, got {type(value).__name__} ({err})"
        ) from err
    _refuse_complex(arr, name)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got {arr.dtype} values")
    return np.array(arr, dtype=np.float64, copy=True)


def _refuse_complex(arr, name: str) -> None:
    if np.iscomplexobj(arr):
        raise TypeError(
            f"{name} is complex; pass real values (e.g. its .real or abs(), whichever you mean)"
        )


def n_masked(value) -> int:
    """How many entries of a numpy masked array are masked (0 for anything else)."""
    if isinstance(value, np.ma.MaskedArray):
        return int(np.ma.getmaskarray(value).sum())
    return 0


def as_mask(value, name: str, shape: tuple) -> np.ndarray:
    """A boolean good-pixel mask of ``shape`` (True: use the pixel).

    Booleans, and integers or floats that are all 0 or 1, are taken as they are; other
    numbers (0.5, pixel indices) raise rather than turn silently into True.
    """
    arr = np.asarray(np.ma.filled(value, False) if isinstance(value, np.ma.MaskedArray) else value)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape} but wavelength has {tuple(shape)}")
    if arr.dtype == bool:
        return arr.copy()
    if arr.dtype.kind in "iuf" and np.all((arr == 0) | (arr == 1)):
        return arr.astype(bool)
    flat = arr.ravel()
    if arr.dtype.kind in "iuf":
        flat = flat[~((flat == 0) | (flat == 1))]
    raise ValueError(
        f"{name} must be booleans (True: use the pixel), or 0 and 1; got {arr.dtype} "
        f"values such as {flat[:3].tolist()}"
    )


# --------------------------------------------------------------------------- paths
def as_path(path, what: str) -> Path:
    """``path`` as a Path, or a TypeError naming ``what`` (None, numbers, …)."""
    if isinstance(path, (str, os.PathLike)):
        return Path(path).expanduser()
    raise TypeError(f"{what} must be a path (str or os.PathLike), not {type(path).__name__}")


def check_input_file(path, what: str) -> Path:
    """An existing regular file, or a FileNotFoundError / IsADirectoryError naming it."""
    path = as_path(path, what)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a {what}")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    return path


def check_output_file(path, what: str, *, overwrite: bool) -> Path:
    """A path a file can be written to, or an error that says why not.

    Raises
    ------
    IsADirectoryError
        ``path`` is a folder (a file name inside it is needed).
    FileNotFoundError
        The folder it would go in does not exist (nothing is created).
    NotADirectoryError
        What should be its folder is a file.
    FileExistsError
        A file is there and ``overwrite`` is False.
    """
    path = as_path(path, what)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder; give the {what} a file name (e.g. {path / 'name'})"
        )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(
            f"cannot write the {what} {path}: {parent} is a file, not a folder"
        )
    if not parent.exists():
        raise FileNotFoundError(
            f"cannot write the {what} {path}: the folder {parent} does not exist (create it first)"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    return path
