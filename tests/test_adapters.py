"""Tests of blase_specutils.astro.adapters: spectra <-> plain arrays, air/vacuum, files."""

from __future__ import annotations

import gc
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SpectralCoord
from astropy.io import fits
from astropy.modeling import models
from astropy.nddata import (
    InverseVariance,
    StdDevUncertainty,
    UnknownUncertainty,
    VarianceUncertainty,
)
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS
from specutils import Spectrum, SpectrumList
from specutils.utils import wcs_utils

from blase_specutils import datasets
from blase_specutils.astro.adapters import (
    InvalidUncertaintyWarning,
    OrderArrays,
    air_to_vacuum,
    arrays_to_spectrum,
    read_table_spectrum,
    refractive_index_air,
    spectra_to_arrays,
    spectrum_to_arrays,
    vacuum_to_air,
)


# The real files, found as a user's code finds them (BLASE_SPECUTILS_DATA or the cache).
def _hpf_files():
    return [datasets.hpf_path(0), datasets.hpf_path(1)]


def _igrins_file(band):
    return datasets.igrins_path(band)


def _wasp69_file():
    return datasets.wasp69_path()


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
def hpf_lists():
    from muler.hpf import HPFSpectrumList

    return [read_muler(HPFSpectrumList, path) for path in _hpf_files()]


@pytest.fixture(scope="module")
def igrins_lists():
    from muler.igrins import IGRINSSpectrumList

    return {band: read_muler(IGRINSSpectrumList, _igrins_file(band)) for band in "HK"}


def simple_spectrum(n=50, **kwargs):
    wavelength = np.linspace(10000.0, 10010.0, n)
    flux = 1.0 + 0.1 * np.sin(np.arange(n))
    return Spectrum(spectral_axis=wavelength * u.AA, flux=flux * u.Jy, **kwargs)


# ---------------------------------------------------------------------------
# air <-> vacuum
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "air, vacuum",
    [
        (6562.80, 6564.61),  # H alpha (NIST: 6562.80 air, 6564.61 vacuum)
        (5889.951, 5891.583),  # Na D2 (NIST)
        (8542.09, 8544.44),  # Ca II infrared triplet (NIST)
    ],
)
def test_air_vacuum_known_lines(air, vacuum):
    assert air_to_vacuum(air) == pytest.approx(vacuum, abs=0.01)
    assert vacuum_to_air(vacuum) == pytest.approx(air, abs=0.01)
    assert isinstance(air_to_vacuum(air), float)


def test_vacuum_to_air_matches_specutils_morton2000():
    vacuum = np.geomspace(3000.0, 26000.0, 501)
    reference = wcs_utils.vac_to_air(vacuum * u.AA, method="Morton2000").to_value(u.AA)
    np.testing.assert_allclose(vacuum_to_air(vacuum), reference, rtol=1e-14, atol=0)
    n = refractive_index_air(5000.0)
    assert 2.7e-4 < n - 1 < 2.9e-4  # dry air at 15 C, 101325 Pa


def test_air_to_vacuum_against_vald_closed_form_and_round_trip():
    air = np.geomspace(3000.0, 26000.0, 501)
    vacuum = air_to_vacuum(air)
    # VALD (N. Piskunov) closed-form inverse of the same dispersion formula
    # agrees to 2e-12 relative (Edlen 1966 constants would differ by 1.4e-8).
    s2 = (1e4 / air) ** 2
    n_vald = (
        1
        + 8.336624212083e-5
        + 2.408926869968e-2 / (130.1065924522 - s2)
        + 1.599740894897e-4 / (38.92568793293 - s2)
    )
    np.testing.assert_allclose(vacuum, air * n_vald, rtol=1e-10, atol=0)
    specutils_vacuum = wcs_utils.air_to_vac(air * u.AA, scheme="iteration", method="Morton2000")
    np.testing.assert_allclose(vacuum, specutils_vacuum.to_value(u.AA), rtol=1e-14, atol=0)
    np.testing.assert_allclose(vacuum_to_air(vacuum), air, rtol=0, atol=1e-8)
    np.testing.assert_allclose(air_to_vacuum(vacuum_to_air(air)), air, rtol=0, atol=1e-8)
    assert np.all(vacuum > air)


def test_air_vacuum_quantities_keep_unit():
    result = air_to_vacuum([656.280, 589.1] * u.nm)
    assert result.unit == u.nm
    assert result[0].value == pytest.approx(656.461, abs=0.001)
    with pytest.raises(ValueError, match="length unit"):
        air_to_vacuum(5e14 * u.Hz)
    with pytest.raises(ValueError, match="2000 Angstrom"):
        air_to_vacuum(1500.0)
    with pytest.raises(ValueError, match="finite"):
        vacuum_to_air([5000.0, np.nan])


# ---------------------------------------------------------------------------
# spectrum_to_arrays on constructed spectra
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [u.AA, u.nm, u.um, u.m, u.Hz, u.GHz, 1 / u.cm, u.eV])
def test_spectral_units_give_the_same_angstrom(unit):
    rng = np.random.default_rng(1)
    wavelength = np.sort(rng.uniform(8000.0, 12000.0, 300))
    flux = rng.normal(1.0, 0.1, 300)
    axis = (wavelength * u.AA).to(unit, equivalencies=u.spectral())
    if axis[1] < axis[0]:
        axis, flux_in = axis[::-1], flux[::-1]  # a decreasing axis is fine too
    else:
        flux_in = flux
    arrays = spectrum_to_arrays(Spectrum(spectral_axis=axis, flux=flux_in * u.Jy))
    np.testing.assert_allclose(arrays.wavelength, wavelength, rtol=1e-9, atol=0)
    np.testing.assert_array_equal(arrays.flux, flux)  # carried along the sort
    assert arrays.wavelength.dtype == np.float64 and arrays.wavelength.flags.c_contiguous
    assert arrays.flux_unit == u.Jy
    assert arrays.uncertainty is None and arrays.good.all()
    assert u.Unit(arrays.meta["spectral_unit"]) == unit


def test_reversed_axis_carries_flux_uncertainty_and_mask():
    wavelength = np.linspace(9000.0, 9010.0, 11)
    flux = np.arange(11.0) + 1
    sigma = 0.1 * (np.arange(11.0) + 1)
    mask = np.zeros(11, dtype=bool)
    mask[2] = True
    spectrum = Spectrum(
        spectral_axis=wavelength[::-1] * u.AA,
        flux=flux[::-1] * u.Jy,
        uncertainty=StdDevUncertainty(sigma[::-1]),
        mask=mask[::-1],
    )
    arrays = spectrum_to_arrays(spectrum)
    np.testing.assert_array_equal(arrays.wavelength, wavelength)
    np.testing.assert_array_equal(arrays.flux, flux)
    np.testing.assert_array_equal(arrays.uncertainty, sigma)
    np.testing.assert_array_equal(arrays.good, ~mask)
    assert all(a.flags.c_contiguous for a in (arrays.wavelength, arrays.flux, arrays.good))


def test_arrays_do_not_share_memory_with_the_spectrum():
    spectrum = simple_spectrum(uncertainty=StdDevUncertainty(np.full(50, 0.1)))
    before = spectrum.spectral_axis.value.copy(), spectrum.flux.value.copy()
    arrays = spectrum_to_arrays(spectrum)
    for values in (arrays.wavelength, arrays.flux, arrays.uncertainty):
        values *= 2.0
    np.testing.assert_array_equal(spectrum.spectral_axis.value, before[0])
    np.testing.assert_array_equal(spectrum.flux.value, before[1])
    np.testing.assert_array_equal(spectrum.uncertainty.array, 0.1)


def test_uncertainty_types_become_sigma():
    sigma = np.linspace(0.01, 0.2, 50)
    cases = {
        "std": StdDevUncertainty(sigma),
        "var": VarianceUncertainty(sigma**2),
        "ivar": InverseVariance(1 / sigma**2),
        "std in mJy": StdDevUncertainty(sigma * 1000, unit=u.mJy),
        "var in mJy2": VarianceUncertainty(sigma**2 * 1e6, unit=u.mJy**2),
        "ivar in 1/mJy2": InverseVariance(1e-6 / sigma**2, unit=u.mJy**-2),
    }
    for name, uncertainty in cases.items():
        arrays = spectrum_to_arrays(simple_spectrum(uncertainty=uncertainty))
        np.testing.assert_allclose(arrays.uncertainty, sigma, rtol=1e-13, err_msg=name)
        assert arrays.good.all(), name
    with pytest.raises(TypeError, match="UnknownUncertainty"):
        spectrum_to_arrays(simple_spectrum(uncertainty=UnknownUncertainty(sigma)))


def test_masks_nan_flux_and_bad_uncertainties():
    n = 50
    flux = np.ones(n)
    flux[3] = np.nan
    flux[4] = np.inf
    sigma = np.full(n, 0.1)
    sigma[10] = 0.0
    sigma[11] = -1.0
    sigma[12] = np.nan
    sigma[13] = 0.0  # also masked by specutils: not counted in the warning
    mask = np.zeros(n, dtype=bool)
    mask[[20, 13]] = True
    spectrum = Spectrum(
        spectral_axis=np.linspace(5000, 5050, n) * u.AA,
        flux=flux * u.one,
        uncertainty=StdDevUncertainty(sigma),
        mask=mask,
    )
    with pytest.warns(InvalidUncertaintyWarning, match=r"^3 pixel\(s\) with uncertainty"):
        arrays = spectrum_to_arrays(spectrum)
    expected_bad = {3, 4, 10, 11, 12, 13, 20}
    assert set(np.flatnonzero(~arrays.good)) == expected_bad
    assert np.all(np.isfinite(arrays.flux)) and np.all(np.isfinite(arrays.uncertainty))
    assert arrays.flux[3] == 0.0 and arrays.uncertainty[12] == 1.0  # placeholders
    assert arrays.n_good == n - len(expected_bad)
    # integer flag masks: non-zero means bad
    flags = np.zeros(n, dtype=np.int16)
    flags[7] = 4
    arrays = spectrum_to_arrays(simple_spectrum(mask=flags))
    assert list(np.flatnonzero(~arrays.good)) == [7]


def test_fits_wcs_spectral_axes():
    n = 20
    header = {"CTYPE1": "WAVE", "CUNIT1": "m", "CRVAL1": 1.0e-6, "CDELT1": 1.0e-10, "CRPIX1": 1}
    arrays = spectrum_to_arrays(Spectrum(flux=np.ones(n) * u.Jy, wcs=WCS(header=header)))
    np.testing.assert_allclose(arrays.wavelength, 10000.0 + np.arange(n), rtol=1e-12)
    assert arrays.meta["medium"] == "vacuum"

    header = {"CTYPE1": "FREQ", "CUNIT1": "Hz", "CRVAL1": 3.0e14, "CDELT1": 1.0e10, "CRPIX1": 1}
    flux = np.arange(n, dtype=float)
    arrays = spectrum_to_arrays(Spectrum(flux=flux * u.Jy, wcs=WCS(header=header)))
    frequency = 3.0e14 + 1.0e10 * np.arange(n)
    expected = (299792458.0 / frequency) * 1e10
    np.testing.assert_allclose(arrays.wavelength, expected[::-1], rtol=1e-12)
    np.testing.assert_array_equal(arrays.flux, flux[::-1])


def test_fits_wcs_air_wavelengths_are_converted():
    n = 20
    header = {"CTYPE1": "AWAV", "CUNIT1": "Angstrom", "CRVAL1": 6560.0, "CDELT1": 0.2, "CRPIX1": 1}
    spectrum = Spectrum(flux=np.ones(n) * u.Jy, wcs=WCS(header=header))
    air = 6560.0 + 0.2 * np.arange(n)
    arrays = spectrum_to_arrays(spectrum)  # medium read from the WCS
    np.testing.assert_allclose(arrays.wavelength, air_to_vacuum(air), rtol=1e-13)
    assert arrays.meta["medium"] == "air"
    with pytest.warns(AstropyUserWarning, match="AWAV"):
        arrays = spectrum_to_arrays(spectrum, medium="vacuum")
    np.testing.assert_allclose(arrays.wavelength, air, rtol=1e-13)


def test_gwcs_spectral_axis():
    from gwcs import WCS as GWCS
    from gwcs import coordinate_frames as cf

    detector = cf.CoordinateFrame(
        naxes=1,
        axes_type=("PIXEL",),
        axes_order=(0,),
        axes_names=("x",),
        unit=(u.pix,),
        name="detector",
    )
    world = cf.SpectralFrame(unit=(u.nm,), axes_names=("wavelength",), name="world")
    dispersion = models.Polynomial1D(2, c0=1000.0, c1=0.01, c2=1e-6)
    spectrum = Spectrum(flux=np.ones(40) * u.Jy, wcs=GWCS([(detector, dispersion), (world, None)]))
    pixels = np.arange(40.0)
    expected = 10.0 * (1000.0 + 0.01 * pixels + 1e-6 * pixels**2)
    np.testing.assert_allclose(spectrum_to_arrays(spectrum).wavelength, expected, rtol=1e-13)


def test_air_medium_on_explicit_axis():
    air = np.linspace(6550.0, 6570.0, 30)
    spectrum = Spectrum(spectral_axis=air * u.AA, flux=np.ones(30) * u.one)
    arrays = spectrum_to_arrays(spectrum, medium="air")
    np.testing.assert_allclose(arrays.wavelength, air_to_vacuum(air), rtol=1e-14)
    assert 1.80 < arrays.wavelength[0] - air[0] < 1.82  # ~1.8 A near H alpha
    spectrum_nm = Spectrum(spectral_axis=air / 10 * u.nm, flux=np.ones(30) * u.one)
    np.testing.assert_allclose(
        spectrum_to_arrays(spectrum_nm, medium="air").wavelength, arrays.wavelength, rtol=1e-13
    )
    frequency = Spectrum(
        spectral_axis=np.linspace(4e14, 4.1e14, 30) * u.Hz, flux=np.ones(30) * u.one
    )
    with pytest.raises(ValueError, match="medium='air' needs wavelengths"):
        spectrum_to_arrays(frequency, medium="air")
    with pytest.raises(ValueError, match="medium must be"):
        spectrum_to_arrays(spectrum, medium="water")


def test_velocity_axis_needs_a_rest_wavelength():
    velocity = np.linspace(-50.0, 50.0, 11) * u.km / u.s
    with_rest = SpectralCoord(
        velocity, doppler_rest=6563.0 * u.AA, doppler_convention="relativistic"
    )
    arrays = spectrum_to_arrays(Spectrum(spectral_axis=with_rest, flux=np.ones(11) * u.one))
    beta = velocity.to_value(u.m / u.s) / 299792458.0
    np.testing.assert_allclose(
        arrays.wavelength, 6563.0 * np.sqrt((1 + beta) / (1 - beta)), rtol=1e-12
    )
    bare = Spectrum(spectral_axis=velocity, flux=np.ones(11) * u.one)
    with pytest.raises(ValueError, match="velocity .* without a rest wavelength"):
        spectrum_to_arrays(bare)


def test_spectrum_to_arrays_errors():
    with pytest.raises(TypeError, match="numpy.ndarray"):
        spectrum_to_arrays(np.ones(5))
    pixels = Spectrum(flux=np.ones(5) * u.Jy)  # spectral axis in pixels
    with pytest.raises(ValueError, match=r"pix .*not a spectral unit"):
        spectrum_to_arrays(pixels)
    two_d = Spectrum(spectral_axis=np.arange(1.0, 6.0) * u.um, flux=np.ones((3, 5)) * u.Jy)
    with pytest.raises(ValueError, match="use a SpectrumList"):
        spectrum_to_arrays(two_d)
    all_bad = simple_spectrum(n=5, mask=np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="all 5 pixels are bad"):
        spectrum_to_arrays(all_bad)
    duplicate = Spectrum(spectral_axis=[1.0, 2.0, 2.0, 3.0] * u.um, flux=np.ones(4) * u.Jy)
    with pytest.raises(ValueError, match="1 duplicate wavelength"):
        spectrum_to_arrays(duplicate)

    class NaNAxisSpectrum(Spectrum):
        @property
        def spectral_axis(self):
            return u.Quantity([1.0, np.nan, 3.0, 4.0], u.um)

    nan_axis = NaNAxisSpectrum(spectral_axis=[1.0, 2.0, 3.0, 4.0] * u.um, flux=np.ones(4) * u.Jy)
    with pytest.raises(ValueError, match="1 NaN or infinite wavelength"):
        spectrum_to_arrays(nan_axis)


def test_order_arrays_validates():
    with pytest.raises(ValueError, match="strictly increasing"):
        OrderArrays(wavelength=[3.0, 2.0, 1.0], flux=[1, 1, 1], uncertainty=None, good=[True] * 3)
    with pytest.raises(ValueError, match=r"flux has shape \(2,\)"):
        OrderArrays(wavelength=[1.0, 2.0, 3.0], flux=[1, 1], uncertainty=None, good=[True] * 3)


# ---------------------------------------------------------------------------
# spectra_to_arrays and arrays_to_spectrum
# ---------------------------------------------------------------------------


def test_spectra_to_arrays_collections():
    red = Spectrum(spectral_axis=np.linspace(2.0, 2.1, 30) * u.um, flux=np.ones(30) * u.Jy)
    blue = Spectrum(
        spectral_axis=np.linspace(1.0, 1.1, 20) * u.um,
        flux=np.full(20, 2000.0) * u.mJy,
        uncertainty=StdDevUncertainty(np.full(20, 100.0)),
    )
    for collection in (SpectrumList([red, blue]), [red, blue], (red, blue)):
        orders = spectra_to_arrays(collection)
        assert [o.n_pixels for o in orders] == [20, 30]  # sorted by wavelength
        assert [o.meta["index"] for o in orders] == [1, 0]
        assert all(o.flux_unit == u.Jy for o in orders)
        np.testing.assert_allclose(orders[0].flux, 2.0)  # mJy -> Jy
        np.testing.assert_allclose(orders[0].uncertainty, 0.1)
    single = spectra_to_arrays(red)
    assert len(single) == 1 and single[0].n_pixels == 30

    flam = Spectrum(
        spectral_axis=np.linspace(3.0, 3.1, 10) * u.um,
        flux=np.ones(10) * u.erg / u.s / u.cm**2 / u.AA,
    )
    with pytest.raises(ValueError, match="incompatible flux units"):
        spectra_to_arrays([red, flam])
    with pytest.raises(ValueError, match="empty"):
        spectra_to_arrays(SpectrumList())
    with pytest.raises(TypeError, match="element 1 is a numpy.ndarray"):
        spectra_to_arrays([red, np.ones(3)])
    with pytest.raises(TypeError, match="dict"):
        spectra_to_arrays({"a": red})
    bad = Spectrum(spectral_axis=np.linspace(3.0, 3.1, 4) * u.um, flux=np.full(4, np.nan) * u.Jy)
    with pytest.raises(ValueError, match="order at index 1: all 4 pixels are bad"):
        spectra_to_arrays([red, bad])


def test_arrays_to_spectrum_round_trip():
    rng = np.random.default_rng(3)
    wavelength = np.sort(rng.uniform(15000.0, 15100.0, 64))
    flux = rng.normal(1.0, 0.05, 64)
    sigma = rng.uniform(0.01, 0.02, 64)
    good = rng.uniform(size=64) > 0.2
    spectrum = arrays_to_spectrum(
        wavelength, flux, uncertainty=sigma, good=good, flux_unit=u.Jy, meta={"order": 7}
    )
    assert type(spectrum) is Spectrum
    assert spectrum.spectral_axis.unit == u.AA and spectrum.flux.unit == u.Jy
    assert isinstance(spectrum.uncertainty, StdDevUncertainty)
    np.testing.assert_array_equal(spectrum.mask, ~good)
    arrays = spectrum_to_arrays(spectrum)
    np.testing.assert_array_equal(arrays.wavelength, wavelength)
    np.testing.assert_array_equal(arrays.flux, flux)
    np.testing.assert_array_equal(arrays.uncertainty, sigma)
    np.testing.assert_array_equal(arrays.good, good)
    assert arrays.meta["order"] == 7

    default = arrays_to_spectrum(wavelength, flux)
    assert default.flux.unit == u.dimensionless_unscaled and default.mask is None
    quantity = arrays_to_spectrum(
        wavelength / 1e4 * u.um, flux * u.mJy, flux_unit=u.Jy, uncertainty=sigma * u.mJy
    )
    np.testing.assert_allclose(quantity.spectral_axis.value, wavelength, rtol=1e-14)
    np.testing.assert_allclose(quantity.flux.value, flux / 1000, rtol=1e-14)
    np.testing.assert_allclose(quantity.uncertainty.array, sigma / 1000, rtol=1e-14)


def test_arrays_to_spectrum_errors():
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        arrays_to_spectrum([1.0, np.nan, 3.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="duplicate"):
        arrays_to_spectrum([1.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        arrays_to_spectrum([3.0, 2.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="flux has shape"):
        arrays_to_spectrum([1.0, 2.0, 3.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="good must be a boolean"):
        arrays_to_spectrum([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], good=[1, 0, 1])


# ---------------------------------------------------------------------------
# files and real data
# ---------------------------------------------------------------------------


def test_read_table_spectrum_wasp69():
    spectrum = read_table_spectrum(_wasp69_file())
    table = Table.read(_wasp69_file(), hdu=1)  # independent read of the same columns
    assert len(spectrum.flux) == 2048
    assert spectrum.spectral_axis.unit == u.AA
    assert spectrum.flux.unit == u.dimensionless_unscaled
    np.testing.assert_array_equal(spectrum.spectral_axis.value, np.asarray(table["wavelength"]))
    assert spectrum.spectral_axis[0].value == pytest.approx(8656.17, abs=0.01)
    assert spectrum.spectral_axis[-1].value == pytest.approx(8768.05, abs=0.01)
    assert int(spectrum.mask.sum()) == 26

    arrays = spectrum_to_arrays(spectrum)
    assert arrays.n_good == 2048 - 26
    good = np.isfinite(np.asarray(table["flux"]))
    np.testing.assert_array_equal(arrays.good, good)
    np.testing.assert_array_equal(arrays.uncertainty[good], np.asarray(table["uncertainty"])[good])
    assert 0.9 < np.median(arrays.flux[good]) < 1.05  # continuum-normalised
    assert arrays.meta["instrument"] == "HPF"


def test_read_table_spectrum_units_and_columns(tmp_path):
    path = tmp_path / "table.fits"
    table = Table()
    table["WAVE"] = np.linspace(1000.0, 1001.0, 5) * u.nm
    table["FLUX"] = np.ones(5) * u.Jy
    table["ERR"] = np.full(5, 20.0) * u.mJy
    table["other"] = np.zeros(5)
    table.write(path)
    spectrum = read_table_spectrum(path)
    np.testing.assert_allclose(spectrum.spectral_axis.value, np.linspace(10000, 10010, 5))
    assert spectrum.flux.unit == u.Jy
    np.testing.assert_allclose(spectrum.uncertainty.array, 0.02)
    with pytest.raises(ValueError, match="uncertainty column 'sigma' not in the table"):
        read_table_spectrum(path, uncertainty_column="sigma")
    unitless = read_table_spectrum(path, flux_column="other", uncertainty_column="other")
    assert unitless.flux.unit == u.dimensionless_unscaled
    with pytest.raises(ValueError, match="'ERR' is in mJy, which does not convert"):
        read_table_spectrum(path, flux_column="other")
    with pytest.raises(ValueError, match="ImageHDU, not a table"):
        read_table_spectrum(_hpf_files()[0], hdu=1)
    bare = tmp_path / "bare.fits"
    Table({"x": np.arange(3.0), "y": np.ones(3)}).write(bare)
    with pytest.raises(ValueError, match="no wavelength column found"):
        read_table_spectrum(bare)


@pytest.mark.parametrize("file_index", [0, 1])
def test_hpf_real_orders(hpf_lists, file_index):
    spectra = hpf_lists[file_index]
    orders = spectra_to_arrays(spectra)
    assert len(orders) == 28
    assert all(o.n_pixels == 2048 for o in orders)
    assert 8075 < orders[0].wavelength[0] < 8085
    assert 12780 < orders[-1].wavelength[-1] < 12790
    starts = [o.wavelength[0] for o in orders]
    assert starts == sorted(starts)
    assert all(np.all(np.diff(o.wavelength) > 0) for o in orders)
    assert all(o.flux_unit == u.ct and o.meta["instrument"] == "HPF" for o in orders)

    # Independent read of the Goldilocks file: science fiber (Sci Flux/Error/Wavl).
    with fits.open(_hpf_files()[file_index]) as hdul:
        flux = hdul["Sci Flux"].data.astype(float)
        sigma = hdul["Sci Error"].data.astype(float)
        wavelength = hdul["Sci Wavl"].data.astype(float)
    for o in orders:
        row = o.meta["index"]
        np.testing.assert_array_equal(o.wavelength, wavelength[row])
        expected_good = np.isfinite(flux[row]) & np.isfinite(sigma[row]) & (sigma[row] > 0)
        np.testing.assert_array_equal(o.good, expected_good)
        np.testing.assert_array_equal(o.flux[o.good], flux[row][o.good])
        np.testing.assert_array_equal(o.uncertainty[o.good], sigma[row][o.good])
    assert sum(o.n_good for o in orders) > 0.9 * 28 * 2048


@pytest.mark.parametrize(
    "band, n_orders, low, high", [("H", 28, 14250, 18400), ("K", 26, 18400, 25250)]
)
def test_igrins_real_orders(igrins_lists, band, n_orders, low, high):
    orders = spectra_to_arrays(igrins_lists[band])
    assert len(orders) == n_orders
    assert all(o.n_pixels == 2048 for o in orders)
    assert low < orders[0].wavelength[0] and orders[-1].wavelength[-1] < high
    assert all(o.meta["instrument"] == "IGRINS" for o in orders)

    # Independent read: flux, variance and wavelength (micron) images, row by row.
    spec_path = _igrins_file(band)
    with (
        fits.open(spec_path) as spec_hdul,
        fits.open(str(spec_path).replace(".spec.fits", ".variance.fits")) as var_hdul,
    ):
        flux = spec_hdul[0].data.astype(float)
        wavelength = spec_hdul[1].data * 1e4
        variance = var_hdul[0].data.astype(float)
    rows = {round(float(w[0]), 3): i for i, w in enumerate(wavelength)}
    for o in orders:
        row = rows[round(float(o.wavelength[0]), 3)]
        np.testing.assert_allclose(o.wavelength, wavelength[row], rtol=1e-14)
        expected_good = np.isfinite(flux[row]) & np.isfinite(variance[row]) & (variance[row] > 0)
        np.testing.assert_array_equal(o.good, expected_good)
        np.testing.assert_allclose(o.uncertainty[o.good] ** 2, variance[row][o.good], rtol=1e-12)
        np.testing.assert_array_equal(o.flux[o.good], flux[row][o.good])
