"""The ``.blase`` accessor on `specutils.Spectrum` and `specutils.SpectrumList`.

specutils has no accessor hook, so this module installs a descriptor on the
two classes (subclasses such as the deprecated ``Spectrum1D`` and muler's
``HPFSpectrum``/``IGRINSSpectrum`` inherit it).  Each attribute access builds a
new accessor bound to that spectrum; nothing is cached on the spectrum, so no
reference cycle keeps spectra (or tensors derived from them) alive.  Accessing
the attribute on the class returns the accessor class, for documentation.

Importing ``blase_specutils`` registers :class:`BlaseAccessor` as ``.blase``::

    >>> import numpy as np, astropy.units as u
    >>> from specutils import Spectrum
    >>> import blase_specutils
    >>> spectrum = Spectrum(spectral_axis=[1.0, 1.1, 1.2] * u.um, flux=[1.0, 0.5, 1.0] * u.one)
    >>> spectrum.blase.to_arrays().wavelength
    array([10000., 11000., 12000.])
    >>> Spectrum.blase is blase_specutils.astro.accessor.BlaseAccessor
    True

The accessor is sugar over plain functions:
:func:`~blase_specutils.astro.adapters.spectra_to_arrays`,
:func:`blase_specutils.clone` and :func:`blase_specutils.fit`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import astropy.units as u
import numpy as np
from specutils import Spectrum, SpectrumList

from .adapters import OrderArrays, spectra_to_arrays, spectrum_to_arrays

__all__ = [
    "AccessorRegistrationWarning",
    "register_spectrum_accessor",
    "register_spectrum_list_accessor",
    "BlaseAccessor",
]

AccessorClass = TypeVar("AccessorClass", bound=type)

#: Attribute set on our descriptors so that re-registration (e.g. after
#: ``importlib.reload``) recognises them without relying on class identity.
_MARKER = "_blase_specutils_accessor_descriptor"


class AccessorRegistrationWarning(UserWarning):
    """An accessor was registered under a name the class already had."""


class _AccessorDescriptor:
    """Non-caching descriptor: a fresh accessor object on every instance access."""

    _blase_specutils_accessor_descriptor = True

    def __init__(self, name: str, accessor_class: type) -> None:
        self._name = name
        self._accessor_class = accessor_class

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self._accessor_class
        return self._accessor_class(instance)

    def __set__(self, instance: Any, value: Any) -> None:
        raise AttributeError(
            f"{self._name!r} is an accessor registered by blase_specutils and cannot be "
            "assigned on a spectrum"
        )

    def __repr__(self) -> str:
        return f"<accessor {self._name!r}: {self._accessor_class.__qualname__}>"


def _same_accessor(existing: Any, accessor_class: type) -> bool:
    """True when ``existing`` is our descriptor for an equally named accessor class."""
    if not getattr(existing, _MARKER, False):
        return False
    old = existing._accessor_class
    return (old.__module__, old.__qualname__) == (
        accessor_class.__module__,
        accessor_class.__qualname__,
    )


def _register_accessor(name: str, target: type) -> Callable[[AccessorClass], AccessorClass]:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"accessor name must be a Python identifier; got {name!r}")

    def decorator(accessor_class: AccessorClass) -> AccessorClass:
        if not isinstance(accessor_class, type):
            raise TypeError(f"register an accessor class, not a {type(accessor_class).__name__}")
        existing = inspect.getattr_static(target, name, None)
        clash = hasattr(target, name) and not _same_accessor(existing, accessor_class)
        if clash:
            warnings.warn(
                f"registering accessor {accessor_class.__qualname__!r} under {name!r} "
                f"overrides an existing attribute of {target.__module__}."
                f"{target.__qualname__} ({existing!r})",
                AccessorRegistrationWarning,
                stacklevel=2,
            )
        setattr(target, name, _AccessorDescriptor(name, accessor_class))
        return accessor_class

    return decorator


def register_spectrum_accessor(name: str) -> Callable[[AccessorClass], AccessorClass]:
    """Class decorator: register an accessor on `specutils.Spectrum`.

    ``spectrum.<name>`` then returns ``accessor_class(spectrum)``, a new
    object on every access (nothing is cached, so no reference cycle).
    ``Spectrum.<name>`` returns the accessor class.  Subclasses (``Spectrum1D``,
    muler spectra) inherit the accessor.

    Parameters
    ----------
    name : str
        Attribute name (a Python identifier).

    Returns
    -------
    callable
        Decorator that installs the accessor and returns the class unchanged.

    Warns
    -----
    AccessorRegistrationWarning
        When ``Spectrum`` already has an attribute ``name`` that is not this
        same accessor (re-registration of the same class is silent).
    """
    return _register_accessor(name, Spectrum)


def register_spectrum_list_accessor(name: str) -> Callable[[AccessorClass], AccessorClass]:
    """Class decorator: register an accessor on `specutils.SpectrumList`.

    Same behaviour as :func:`register_spectrum_accessor`; muler's
    ``HPFSpectrumList`` and ``IGRINSSpectrumList`` inherit it.

    Parameters
    ----------
    name : str
        Attribute name (a Python identifier).

    Returns
    -------
    callable
        Decorator that installs the accessor and returns the class unchanged.
    """
    return _register_accessor(name, SpectrumList)


@register_spectrum_list_accessor("blase")
@register_spectrum_accessor("blase")
class BlaseAccessor:
    """``spectrum.blase``: the blasé method on a spectrum or a list of orders.

    Parameters
    ----------
    obj : specutils.Spectrum or specutils.SpectrumList
        The spectrum (one order, or a synthetic spectrum) or the list of
        échelle orders this accessor works on.

    Notes
    -----
    A new accessor is built on every attribute access; keep a reference to
    the result of a method, not to the accessor.
    """

    def __init__(self, obj: Spectrum | SpectrumList) -> None:
        if not isinstance(obj, (Spectrum, SpectrumList)):
            raise TypeError(
                "BlaseAccessor needs a specutils.Spectrum or SpectrumList; got "
                f"{type(obj).__qualname__}"
            )
        self._obj = obj

    def __repr__(self) -> str:
        return f"<BlaseAccessor on {type(self._obj).__qualname__}>"

    @property
    def _is_list(self) -> bool:
        return isinstance(self._obj, SpectrumList)

    def _orders(self, medium: str | None) -> list[OrderArrays]:
        return spectra_to_arrays(self._obj, medium=medium)

    def to_arrays(self, *, medium: str | None = None) -> OrderArrays | list[OrderArrays]:
        """Plain numpy arrays in vacuum Å.

        See :class:`~blase_specutils.astro.adapters.OrderArrays`.

        Parameters
        ----------
        medium : {None, 'vacuum', 'air'}, optional
            Medium of the spectrum's wavelengths (``None``: vacuum unless the
            WCS declares air); the arrays are always in vacuum.

        Returns
        -------
        OrderArrays or list of OrderArrays
            One for a spectrum; one per order, sorted by wavelength, for a
            SpectrumList.
        """
        if self._is_list:
            return self._orders(medium)
        return spectrum_to_arrays(self._obj, medium=medium)

    def to_tensors(
        self, device: Any = "cpu", dtype: Any = None, *, medium: str | None = None
    ) -> dict[str, Any]:
        """PyTorch tensors of the spectrum, ready for the core.

        Parameters
        ----------
        device : str or torch.device, optional
            Device of the tensors (default ``"cpu"``).
        dtype : torch.dtype, optional
            Floating dtype of ``flux`` and ``uncertainty`` (default
            ``torch.float64``).  ``wavelength`` is always ``float64``: float32
            spacing near 10⁴ Å is ~1 mÅ, too coarse for line centres.
        medium : {None, 'vacuum', 'air'}, optional
            Medium of the input wavelengths (see :meth:`to_arrays`).

        Returns
        -------
        dict
            ``"wavelength"`` (vacuum Å, float64), ``"flux"`` (flux unit),
            ``"uncertainty"`` (1-σ, flux unit, or None), ``"good"`` (bool)
            and ``"flux_unit"`` (astropy unit).  1-D for a spectrum; for a
            SpectrumList, 2-D of shape (orders, pixels), orders sorted by
            wavelength.

        Raises
        ------
        ValueError
            For a SpectrumList whose orders differ in length (use
            :meth:`to_arrays` for ragged orders).
        """
        import torch

        dtype = torch.float64 if dtype is None else dtype
        orders = self._orders(medium)
        if self._is_list:
            lengths = sorted({arrays.n_pixels for arrays in orders})
            if len(lengths) > 1:
                raise ValueError(
                    f"orders differ in length ({lengths[0]} to {lengths[-1]} pixels) and "
                    "cannot be stacked; use .blase.to_arrays() for ragged orders"
                )

            def stack(name: str) -> np.ndarray:
                return np.stack([getattr(arrays, name) for arrays in orders])

            wavelength, flux, good = stack("wavelength"), stack("flux"), stack("good")
            has_sigma = all(arrays.uncertainty is not None for arrays in orders)
            sigma = stack("uncertainty") if has_sigma else None
        else:
            (arrays,) = orders
            wavelength, flux, good, sigma = (
                arrays.wavelength,
                arrays.flux,
                arrays.good,
                arrays.uncertainty,
            )
        return {
            "wavelength": torch.as_tensor(wavelength, dtype=torch.float64, device=device),
            "flux": torch.as_tensor(flux, dtype=dtype, device=device),
            "uncertainty": None
            if sigma is None
            else torch.as_tensor(sigma, dtype=dtype, device=device),
            "good": torch.as_tensor(good, dtype=torch.bool, device=device),
            "flux_unit": orders[0].flux_unit,
        }

    def clone(self, **kwargs: Any) -> Any:
        """Clone this (synthetic) spectrum with :func:`blase_specutils.clone`.

        Calls ``blase_specutils.clone(wavelength * u.AA, flux, **kwargs)``
        with the good pixels' vacuum wavelengths (Å) and fluxes (plain
        array, in the spectrum's flux unit).

        Parameters
        ----------
        **kwargs
            Passed on unchanged (``medium`` is consumed here: the medium of
            the spectrum's wavelengths, see :meth:`to_arrays`).

        Returns
        -------
        blase_specutils.CloneResult
            Whatever :func:`blase_specutils.clone` returns.

        Raises
        ------
        ValueError
            For a SpectrumList with more than one order.
        """
        import blase_specutils

        orders = self._orders(kwargs.pop("medium", None))
        if len(orders) != 1:
            raise ValueError(
                f"clone takes one spectrum; this SpectrumList has {len(orders)} orders "
                "(clone a synthetic spectrum, or one order)"
            )
        (arrays,) = orders
        # a telluric transmission is not flattened, as for a telluric Template
        first = self._obj[0] if isinstance(self._obj, (list, tuple)) else self._obj
        meta = getattr(first, "meta", None)
        if "flatten" not in kwargs and isinstance(meta, dict) and meta.get("kind") == "telluric":
            kwargs["flatten"] = False
        return blase_specutils.clone(
            arrays.wavelength[arrays.good] * u.AA,
            arrays.flux[arrays.good] * arrays.flux_unit,
            **kwargs,
        )

    def fit(self, stellar: Any, telluric: Any = None, **kwargs: Any) -> Any:
        """Transfer-learn clones against this spectrum with :func:`blase_specutils.fit`.

        Calls ``blase_specutils.fit(wavelength=[...], flux=[...],
        uncertainty=[...], mask=[...], stellar=stellar, telluric=telluric,
        **kwargs)`` with one 1-D array per order: vacuum wavelength (Å),
        flux and 1-σ uncertainty (flux unit; the list is None when the
        spectrum has no uncertainties) and ``mask`` True for *good* pixels.

        Parameters
        ----------
        stellar : blase_specutils.CloneResult
            Clone of the stellar template.
        telluric : blase_specutils.CloneResult or dict, optional
            Clone of the telluric transmission, or one per molecule ``{name: clone}``
            (a scale per molecule; see :func:`blase_specutils.fit`).
        **kwargs
            Passed on (``medium`` is consumed here, see :meth:`to_arrays`); the
            numeric ones are checked first, as :func:`blase_specutils.fit` checks them
            (a ValueError names a NaN, infinite or out-of-range value).

        Returns
        -------
        blase_specutils.FitResult
            Whatever :func:`blase_specutils.fit` returns.
        """
        import blase_specutils

        from ..fitting import check_fit_numbers, initial_resolving_power

        # the same checks as fit's, before the spectrum is converted
        kwargs = check_fit_numbers(kwargs)
        orders = self._orders(kwargs.pop("medium", None))
        has_sigma = all(arrays.uncertainty is not None for arrays in orders)
        source = None
        if kwargs.get("resolving_power") is None:
            instrument = orders[0].meta.get("instrument")
            kwargs["resolving_power"], source = initial_resolving_power(None, instrument)
        result = blase_specutils.fit(
            wavelength=[arrays.wavelength for arrays in orders],
            flux=[arrays.flux * arrays.flux_unit for arrays in orders],
            uncertainty=(
                [arrays.uncertainty * arrays.flux_unit for arrays in orders] if has_sigma else None
            ),
            mask=[arrays.good for arrays in orders],
            stellar=stellar,
            telluric=telluric,
            **kwargs,
        )
        if source is not None:  # chosen here, not given by the caller
            result.meta["resolving_power_source"] = source
        return result
