"""Tests of the `.blase` accessor and its registration decorators."""

from __future__ import annotations

import gc
import importlib
import warnings
import weakref
from types import SimpleNamespace

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import StdDevUncertainty
from specutils import Spectrum, Spectrum1D, SpectrumList

import blase_specutils
from blase_specutils import datasets
from blase_specutils.astro import accessor as accessor_module
from blase_specutils.astro.accessor import (
    AccessorRegistrationWarning,
    BlaseAccessor,
    register_spectrum_accessor,
    register_spectrum_list_accessor,
)
from blase_specutils.astro.adapters import OrderArrays


def read_muler(reader, path):
    """Read with a muler reader; muler leaves its FITS files open, so the
    resulting ``ResourceWarning: unclosed file`` is silenced here (and only here)
    and the file objects are finalised before leaving."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="unclosed file", category=ResourceWarning)
        spectra = reader.read(str(path))
        gc.collect()
    return spectra


@pytest.fixture(scope="module")
def hpf_list():
    from muler.hpf import HPFSpectrumList

    return read_muler(HPFSpectrumList, datasets.hpf_path(0))  # HR 3039, 2021-02-12


def make_spectrum(n=40, start=10000.0, cls=Spectrum, **kwargs):
    wavelength = np.linspace(start, start + 10.0, n)
    flux = 1.0 - 0.5 * np.exp(-0.5 * ((wavelength - start - 5.0) / 0.3) ** 2)
    return cls(
        spectral_axis=wavelength * u.AA,
        flux=flux * u.one,
        uncertainty=StdDevUncertainty(np.full(n, 0.01)),
        **kwargs,
    )


@pytest.fixture
def temporary_attribute():
    """Remove the given names from Spectrum/SpectrumList after the test, restoring
    anything that was defined there before."""
    saved = []

    def track(target, name):
        saved.append((target, name, target.__dict__.get(name, _MISSING)))

    yield track
    for target, name, original in reversed(saved):
        if original is _MISSING:
            if name in target.__dict__:
                delattr(target, name)
        else:
            setattr(target, name, original)


_MISSING = object()


def test_accessor_on_spectrum_classes(hpf_list):
    from muler.hpf import HPFSpectrum, HPFSpectrumList

    assert Spectrum.blase is BlaseAccessor
    assert SpectrumList.blase is BlaseAccessor
    assert Spectrum1D.blase is BlaseAccessor and HPFSpectrum.blase is BlaseAccessor
    assert HPFSpectrumList.blase is BlaseAccessor
    assert isinstance(make_spectrum().blase, BlaseAccessor)
    assert isinstance(make_spectrum(cls=Spectrum1D).blase, BlaseAccessor)
    assert isinstance(hpf_list[0], HPFSpectrum) and isinstance(hpf_list[0].blase, BlaseAccessor)
    assert isinstance(hpf_list.blase, BlaseAccessor)
    assert isinstance(SpectrumList([make_spectrum()]).blase, BlaseAccessor)


def test_fresh_object_per_access_and_no_assignment():
    spectrum = make_spectrum()
    assert spectrum.blase is not spectrum.blase
    assert "blase" not in vars(spectrum)
    with pytest.raises(AttributeError, match="cannot be assigned"):
        spectrum.blase = 1
    with pytest.raises(TypeError, match="Spectrum or SpectrumList"):
        BlaseAccessor(np.ones(3))


def test_no_reference_cycle():
    """Without gc, the spectrum dies as soon as its last reference goes: the
    accessor adds no cycle.  The same test fails with a caching accessor."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        spectrum = make_spectrum()
        accessor = spectrum.blase
        arrays = accessor.to_arrays()
        reference = weakref.ref(spectrum)
        del spectrum
        assert reference() is not None  # the accessor still holds it
        del accessor
        assert reference() is None
        assert arrays.n_pixels == 40

        # Control: an xarray-style cached accessor keeps the spectrum alive.
        class Cached:
            def __get__(self, instance, owner):
                if instance is None:
                    return self
                value = BlaseAccessor(instance)
                instance.__dict__["_cached_blase"] = value
                return value

        class CachingSpectrum(Spectrum):
            cached = Cached()

        leaky = make_spectrum(cls=CachingSpectrum)
        leaky.cached.to_arrays()
        leaky_reference = weakref.ref(leaky)
        del leaky
        assert leaky_reference() is not None  # kept alive by the cycle
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


def test_clash_warning_and_idempotent_registration(temporary_attribute):
    temporary_attribute(Spectrum, "flux")  # restored after the test

    class Shadow:
        def __init__(self, obj):
            self.obj = obj

    clash = "Shadow' under 'flux' overrides .*Spectrum"
    with pytest.warns(AccessorRegistrationWarning, match=clash):
        register_spectrum_accessor("flux")(Shadow)
    assert Spectrum.flux is Shadow

    temporary_attribute(SpectrumList, "_blase_test_accessor")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_spectrum_list_accessor("_blase_test_accessor")(Shadow)
        register_spectrum_list_accessor("_blase_test_accessor")(Shadow)  # same: silent

    class Shadow2(Shadow):
        pass

    with pytest.warns(AccessorRegistrationWarning, match="Shadow2' under '_blase_test_accessor'"):
        register_spectrum_list_accessor("_blase_test_accessor")(Shadow2)
    assert isinstance(SpectrumList()._blase_test_accessor, Shadow2)
    with pytest.raises(ValueError, match="identifier"):
        register_spectrum_accessor("not a name")


def test_reimport_does_not_warn():
    namespace = vars(accessor_module)
    snapshot = dict(namespace)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            reloaded = importlib.reload(accessor_module)
        assert reloaded.BlaseAccessor is not BlaseAccessor  # really re-executed
        assert Spectrum.blase is reloaded.BlaseAccessor
        assert isinstance(make_spectrum().blase.to_arrays(), OrderArrays)
    finally:
        # put back the module namespace and the class everything else imported
        namespace.clear()
        namespace.update(snapshot)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            register_spectrum_accessor("blase")(BlaseAccessor)
            register_spectrum_list_accessor("blase")(BlaseAccessor)
    assert Spectrum.blase is BlaseAccessor


def test_to_arrays_real_hpf(hpf_list):
    orders = hpf_list.blase.to_arrays()
    assert len(orders) == 28 and all(isinstance(o, OrderArrays) for o in orders)
    assert all(o.n_pixels == 2048 for o in orders)
    assert 8075 < orders[0].wavelength[0] < 8085 and 12780 < orders[-1].wavelength[-1] < 12790
    one = hpf_list[5].blase.to_arrays()
    np.testing.assert_array_equal(one.wavelength, hpf_list[5].spectral_axis.to_value(u.AA))
    np.testing.assert_array_equal(one.good, ~hpf_list[5].mask)


def test_to_tensors(hpf_list):
    import torch

    spectrum = make_spectrum(mask=np.arange(40) == 3)
    tensors = spectrum.blase.to_tensors(dtype=torch.float32)
    assert tensors["wavelength"].dtype == torch.float64  # never float32
    assert tensors["flux"].dtype == torch.float32 and tensors["uncertainty"].dtype == torch.float32
    assert tensors["good"].dtype == torch.bool and not tensors["good"][3]
    np.testing.assert_array_equal(
        tensors["wavelength"].numpy(), spectrum.spectral_axis.to_value(u.AA)
    )
    assert tensors["flux_unit"] == u.one

    stacked = hpf_list.blase.to_tensors()
    assert stacked["flux"].shape == (28, 2048) and stacked["flux"].dtype == torch.float64
    assert torch.all(stacked["wavelength"][1:, 0] > stacked["wavelength"][:-1, 0])
    good = stacked["good"]
    assert torch.all(stacked["uncertainty"][good] > 0)
    assert torch.isfinite(stacked["flux"]).all()

    ragged = SpectrumList([make_spectrum(40), make_spectrum(30, start=11000.0)])
    with pytest.raises(ValueError, match="differ in length"):
        ragged.blase.to_tensors()


def test_clone_forwards_to_package_function(monkeypatch):
    calls = []
    monkeypatch.setattr(
        blase_specutils, "clone", lambda *args, **kwargs: calls.append((args, kwargs)) or "cloned"
    )
    mask = np.zeros(40, dtype=bool)
    mask[[0, 7]] = True
    spectrum = make_spectrum(mask=mask)
    assert spectrum.blase.clone(prominence=0.01, device="cpu") == "cloned"
    ((args, kwargs),) = calls
    wavelength, flux = args
    assert wavelength.unit == u.AA
    np.testing.assert_array_equal(wavelength.value, spectrum.spectral_axis.value[~mask])
    assert flux.unit == spectrum.flux.unit  # the unit travels, for absolute spectra later
    np.testing.assert_array_equal(flux.value, spectrum.flux.value[~mask])
    assert kwargs == {"prominence": 0.01, "device": "cpu"}

    two = SpectrumList([make_spectrum(), make_spectrum(start=11000.0)])
    with pytest.raises(ValueError, match="clone takes one spectrum"):
        two.blase.clone()


def test_fit_forwards_lists_per_order(monkeypatch, hpf_list):
    calls = []
    monkeypatch.setattr(
        blase_specutils,
        "fit",
        lambda *args, **kwargs: calls.append((args, kwargs)) or SimpleNamespace(meta={}),
    )
    fitted = hpf_list.blase.fit("star-clone", telluric="sky-clone", n_epochs=3)
    assert fitted.meta == {"resolving_power_source": "nominal for HPF"}
    ((args, kwargs),) = calls
    assert args == ()
    assert kwargs["stellar"] == "star-clone" and kwargs["telluric"] == "sky-clone"
    assert kwargs["n_epochs"] == 3
    assert kwargs["resolving_power"] == 55_000.0  # HPF's nominal R, from INSTRUME
    for key in ("wavelength", "flux", "uncertainty", "mask"):
        assert isinstance(kwargs[key], list) and len(kwargs[key]) == 28
    orders = hpf_list.blase.to_arrays()
    for i in (0, 13, 27):
        np.testing.assert_array_equal(kwargs["wavelength"][i], orders[i].wavelength)
        assert kwargs["flux"][i].unit == kwargs["uncertainty"][i].unit == orders[i].flux_unit
        np.testing.assert_array_equal(kwargs["flux"][i].value, orders[i].flux)
        np.testing.assert_array_equal(kwargs["uncertainty"][i].value, orders[i].uncertainty)
        assert kwargs["mask"][i].dtype == bool
        np.testing.assert_array_equal(kwargs["mask"][i], orders[i].good)  # True = good

    calls.clear()
    no_sigma = Spectrum(spectral_axis=np.linspace(1.0, 1.1, 10) * u.um, flux=np.ones(10) * u.one)
    no_sigma.blase.fit("star-clone")
    ((_, kwargs),) = calls
    assert kwargs["uncertainty"] is None and kwargs["telluric"] is None
    np.testing.assert_allclose(kwargs["wavelength"][0], np.linspace(10000.0, 11000.0, 10))


def test_fit_starts_from_the_instruments_resolving_power(monkeypatch):
    from blase_specutils.astro.instruments import nominal_resolving_power

    calls = []
    monkeypatch.setattr(
        blase_specutils,
        "fit",
        lambda *args, **kwargs: calls.append(kwargs) or SimpleNamespace(meta={}),
    )
    igrins = make_spectrum(meta={"instrument": "IGRINS"})
    sources = [
        igrins.blase.fit("star-clone").meta,
        igrins.blase.fit("star-clone", resolving_power=40_000).meta,
        make_spectrum(meta={"instrument": "unknown-spectrograph"}).blase.fit("star-clone").meta,
    ]
    assert [kwargs["resolving_power"] for kwargs in calls] == [45_000.0, 40_000, 55_000.0]
    # what fit would record had it chosen R itself; a given R is left to fit ("given")
    assert sources == [
        {"resolving_power_source": "nominal for IGRINS"},
        {},
        {"resolving_power_source": "default"},
    ]
    assert nominal_resolving_power(" harps_n ") == 115_000.0
    assert nominal_resolving_power("CRIRES+") == 100_000.0
    assert nominal_resolving_power(None) is None


def test_clone_of_a_telluric_template_spectrum_is_not_flattened(monkeypatch):
    from blase_specutils.astro.templates import Template

    calls = []
    monkeypatch.setattr(blase_specutils, "clone", lambda *a, **k: calls.append(k) or "cloned")
    wavelength = np.linspace(9000.0, 9010.0, 200)
    sky = Template(wavelength, np.ones_like(wavelength), kind="telluric").to_spectrum()
    sky.blase.clone()
    sky.blase.clone(flatten=True)  # the caller's choice stands
    Template(wavelength, np.ones_like(wavelength), kind="stellar").to_spectrum().blase.clone()
    assert calls == [{"flatten": False}, {"flatten": True}, {}]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rv": np.nan}, "rv must be finite"),
        ({"epochs": -1}, "epochs must be >= 0"),
        ({"rv_search": float("inf")}, "rv_search must be finite"),
    ],
)
def test_fit_checks_numbers_before_converting(monkeypatch, kwargs, message):
    """`.blase.fit` applies fit's own checks up front: a bad value never reaches fit."""
    calls = []
    fit = lambda *a, **k: calls.append(k) or SimpleNamespace(meta={})  # noqa: E731
    monkeypatch.setattr(blase_specutils, "fit", fit)
    with pytest.raises(ValueError, match=message):
        make_spectrum().blase.fit("star-clone", **kwargs)
    assert calls == []
    make_spectrum().blase.fit("star-clone", rv=3.0 * u.km / u.s)  # a Quantity is converted
    assert calls[0]["rv"] == pytest.approx(3.0)
