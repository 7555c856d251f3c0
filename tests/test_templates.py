"""Template readers on the real PHOENIX samples, muler's packaged templates and small tables."""

from __future__ import annotations

import importlib.resources

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits

from blase_specutils.astro.templates import (
    Template,
    read_muler_template,
    read_phoenix_dat,
    read_phoenix_fits,
    read_template,
    read_two_column,
)

PHOENIX_BANDS = {
    # band: (samples, first Å, last Å, step Å) from shared/data/README.md and the files' ends
    "Z": (100_000, 8300.00, 9299.99, 0.01),
    "Y": (49_999, 10000.02, 10999.98, 0.02),
    "H": (83_333, 15000.03, 17499.99, 0.03),
}


def phoenix_file(data_dir, band):
    return data_dir / "phoenix" / f"{band}_band_test_sample_lte03900-PHOENIX-ACES.dat"


@pytest.mark.parametrize("band", sorted(PHOENIX_BANDS))
def test_phoenix_dat_grid_matches_readme(data_dir, band):
    samples, first, last, step = PHOENIX_BANDS[band]
    wavelength, flux = read_phoenix_dat(phoenix_file(data_dir, band))
    assert wavelength.dtype == np.float64 and flux.dtype == np.float64
    assert wavelength.size == flux.size == samples
    assert wavelength[0] == pytest.approx(first, abs=1e-9)
    assert wavelength[-1] == pytest.approx(last, abs=1e-9)
    steps = np.diff(wavelength)
    np.testing.assert_allclose(steps, step, rtol=0, atol=1e-8)  # uniform native sampling
    # Resolving power λ/Δλ of the native PHOENIX grid: about 500,000 near 1 µm (README).
    assert 4.0e5 < np.median(wavelength[:-1] / steps) < 1.0e6
    assert (flux > 0).all()


def test_phoenix_dat_agrees_with_plain_text_parse(data_dir):
    path = phoenix_file(data_dir, "Z")
    lines = path.read_text().splitlines()
    micron_first, flux_first = (float(token) for token in lines[0].split())
    micron_last, flux_last = (float(token) for token in lines[-1].split())
    wavelength, flux = read_phoenix_dat(path)
    expected = [micron_first * 1e4, micron_last * 1e4]
    np.testing.assert_allclose(wavelength[[0, -1]], expected, rtol=1e-15)
    np.testing.assert_array_equal(flux[[0, -1]], [flux_first, flux_last])


def test_read_template_on_phoenix_dat_gives_quantities_and_spectrum(data_dir):
    template = read_template(phoenix_file(data_dir, "Z"), wavelength_range=(8500.0, 8600.0))
    assert template.kind == "stellar"
    assert template.meta["format"] == "phoenix-dat"
    assert len(template) == 10_001  # 8500.00 ... 8600.00 at 0.01 Å, both ends included
    assert template.wavelength_quantity.unit == u.AA
    assert template.flux_quantity.unit == u.dimensionless_unscaled
    spectrum = template.to_spectrum()
    np.testing.assert_array_equal(spectrum.spectral_axis.to_value(u.AA), template.wavelength)
    np.testing.assert_array_equal(spectrum.flux.value, template.flux)
    assert spectrum.meta["kind"] == "stellar"


def test_muler_phoenix_10kk_template():
    template = read_template("PHOENIX_10kK_hpf_template.csv")
    assert template.kind == "stellar" and template.meta["format"] == "muler"
    assert len(template) == 338_649
    assert template.wavelength[0] == pytest.approx(8038.01, abs=1e-9)
    assert template.wavelength[-1] == pytest.approx(12848.98, abs=1e-9)
    # PHOENIX's native grid: 0.01 Å steps below 1 µm, 0.02 Å from 1 µm on.
    steps = np.diff(template.wavelength)
    blue = template.wavelength[:-1] < 10000.0
    np.testing.assert_allclose(steps[blue], 0.01, atol=1e-8)
    np.testing.assert_allclose(steps[~blue], 0.02, atol=1e-8)
    # An A0V-like 10 kK photosphere is bluer than any cool star: flux falls to the red.
    assert template.flux[:1000].mean() > 2 * template.flux[-1000:].mean()


def test_muler_telfit_template_is_a_transmission():
    wavelength, transmission = read_muler_template("telfit_hpf")
    assert wavelength.size == 57_344
    assert 8079.0 < wavelength[0] < 8079.1 and 12785.8 < wavelength[-1] < 12785.9
    assert transmission.min() >= 0 and transmission.max() <= 1
    # The 9300-9650 Å water band is deep; the 8700 Å region is nearly clear.
    water = (wavelength > 9300) & (wavelength < 9650)
    clear = (wavelength > 8650) & (wavelength < 8750)
    assert transmission[water].min() < 0.05 and np.median(transmission[clear]) > 0.97


def test_muler_psg_template_reads_total_transmission():
    wavelength, total = read_muler_template("psg_trn_r100000_1.4_2.5_um.txt")
    assert wavelength.size == 57_983
    assert wavelength[0] == pytest.approx(14000.0, abs=1e-6)
    assert wavelength[-1] == pytest.approx(24999.88333, abs=1e-4)
    # Sampled at R = λ/Δλ = 100,000 (file name), log-uniform.
    resolving_power = wavelength[:-1] / np.diff(wavelength)
    np.testing.assert_allclose(np.median(resolving_power), 1.0e5, rtol=1e-3)
    # "Total" is the product of the per-species columns (exact up to band-averaging
    # within a resolution element): an independent parse of every column checks the pick.
    resource = importlib.resources.files("muler") / "templates" / "psg_trn_r100000_1.4_2.5_um.txt"
    with importlib.resources.as_file(resource) as path:
        table = np.loadtxt(path)
    product_of_species = np.prod(table[:, 2:], axis=1)
    difference = np.abs(total - product_of_species)
    assert np.median(difference) < 1e-5
    assert np.percentile(difference, 99) < 2e-3
    assert not np.allclose(total, table[:, 2])  # not the H2O column alone


def test_muler_aliases_and_unknown_names():
    np.testing.assert_array_equal(
        read_muler_template("psg")[0], read_muler_template("psg_trn_r100000_1.4_2.5_um.txt")[0]
    )
    with pytest.raises(ValueError, match="unknown muler template 'vega'"):
        read_muler_template("vega")
    with pytest.raises(TypeError, match="must be a str"):
        read_muler_template(42)


def write_phoenix_grid(root, wavelength_angstrom, flux, *, wave_unit="Angstrom"):
    """A tiny file pair laid out like the PHOENIX HiRes grid."""
    wave_hdu = fits.PrimaryHDU(wavelength_angstrom * u.AA.to(wave_unit))
    wave_hdu.header["UNIT"] = wave_unit
    wave_path = root / "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits"
    wave_hdu.writeto(wave_path)
    folder = root / "PHOENIX-ACES-AGSS-COND-2011" / "Z-0.0"
    folder.mkdir(parents=True)
    flux_hdu = fits.PrimaryHDU(flux.astype(np.float32))
    flux_hdu.header["BUNIT"] = "erg/s/cm^2/cm"
    flux_hdu.header["PHXTEFF"] = 3900.0
    flux_hdu.header["PHXLOGG"] = 4.5
    flux_hdu.header["PHXM_H"] = 0.0
    flux_path = folder / "lte03900-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"
    flux_hdu.writeto(flux_path)
    return flux_path, wave_path


def planck_lambda(wavelength_angstrom, temperature_kelvin):
    """B_λ in erg s⁻¹ cm⁻² cm⁻¹ sr⁻¹ (written out, independent of astropy.modeling)."""
    h, c, k = 6.62607015e-27, 2.99792458e10, 1.380649e-16  # cgs
    lam = wavelength_angstrom * 1e-8
    return 2 * h * c**2 / lam**5 / np.expm1(h * c / (lam * k * temperature_kelvin))


def test_phoenix_fits_synthetic_grid_layout(tmp_path):
    wavelength = np.linspace(8300.0, 8310.0, 1001)
    flux = np.pi * planck_lambda(wavelength, 3900.0)
    flux_path, wave_path = write_phoenix_grid(tmp_path, wavelength, flux)

    found_wavelength, found_flux = read_phoenix_fits(flux_path)  # wave file found two levels up
    np.testing.assert_array_equal(found_wavelength, wavelength)
    np.testing.assert_allclose(found_flux, flux, rtol=1e-7)  # stored as float32

    template = read_template(flux_path, wavelength_range=(8301.0, 8302.0))
    assert template.meta["format"] == "phoenix-fits"
    assert template.meta["teff"] == 3900.0 and template.meta["logg"] == 4.5
    assert u.Unit(template.meta["flux_unit"]) == u.erg / u.s / u.cm**3
    assert template.flux_quantity.unit.physical_type == u.Unit("erg s-1 cm-3").physical_type
    assert len(template) == 101 and template.kind == "stellar"


def test_phoenix_fits_wavelength_units_and_mismatch(tmp_path):
    wavelength = np.linspace(9000.0, 9001.0, 11)
    flux_path, _ = write_phoenix_grid(tmp_path, wavelength, np.ones(11), wave_unit="nm")
    found_wavelength, _ = read_phoenix_fits(flux_path)
    np.testing.assert_allclose(found_wavelength, wavelength, rtol=1e-14)

    short_wave = tmp_path / "short_wave.fits"
    fits.PrimaryHDU(wavelength[:5]).writeto(short_wave)
    with pytest.raises(ValueError, match="11 flux samples but wavelength file .* has 5"):
        read_phoenix_fits(flux_path, wavelength_path=short_wave)


def test_phoenix_fits_without_wavelength_file(tmp_path):
    lonely = tmp_path / "a" / "b" / "c"
    lonely.mkdir(parents=True)
    flux_path = lonely / "lte03900-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"
    fits.PrimaryHDU(np.ones(4)).writeto(flux_path)
    with pytest.raises(FileNotFoundError, match="pass wavelength_path"):
        read_phoenix_fits(flux_path)


def vacuum_to_air_morton2000(wavelength_vacuum_angstrom):
    """λ_air = λ_vac / n (Morton 2000, ApJS 130, 403, eq. 8), written out independently."""
    s2 = (1e4 / wavelength_vacuum_angstrom) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    return wavelength_vacuum_angstrom / n


def test_two_column_units_headers_and_air(tmp_path):
    vacuum = np.linspace(8600.0, 8700.0, 51)
    flux = 1 - 0.5 * np.exp(-0.5 * ((vacuum - 8650.0) / 0.2) ** 2)

    csv = tmp_path / "model.csv"
    rows = "".join(f"{float(w) / 10!r},{float(f)!r}\n" for w, f in zip(vacuum, flux))
    csv.write_text("# a comment\nwave_nm,flux\n" + rows)
    wavelength, read_flux = read_two_column(csv, "nm", columns=("wave_nm", "flux"))
    np.testing.assert_allclose(wavelength, vacuum, rtol=1e-15)
    np.testing.assert_array_equal(read_flux, flux)

    air = vacuum_to_air_morton2000(vacuum)
    assert 2.0 < (vacuum - air).min() < 3.0  # about 2.4 Å near 8650 Å
    text = tmp_path / "air.txt"
    text.write_text("".join(f"{float(w)!r}  {float(f)!r}\n" for w, f in zip(air, flux)))
    recovered, _ = read_two_column(text, medium="air")
    np.testing.assert_allclose(recovered, vacuum, rtol=0, atol=1e-4)

    template = read_template(text, kind="telluric", medium="air")
    assert template.kind == "telluric" and template.meta["format"] == "two-column"


def test_unsorted_repeated_and_nonfinite_input(tmp_path):
    unsorted = tmp_path / "unsorted.txt"
    unsorted.write_text("3 30\n1 10\n2 20\n")
    with pytest.raises(ValueError, match="not strictly increasing.*sort=True"):
        read_two_column(unsorted)
    wavelength, flux = read_two_column(unsorted, sort=True)
    np.testing.assert_array_equal(wavelength, [1, 2, 3])
    np.testing.assert_array_equal(flux, [10, 20, 30])  # flux travels with its wavelength

    repeated = tmp_path / "repeated.txt"
    repeated.write_text("1 10\n2 20\n1 11\n")
    with pytest.raises(ValueError, match="repeated wavelength"):
        read_two_column(repeated, sort=True)

    with_nan = tmp_path / "nan.txt"
    with_nan.write_text("1 10\n2 nan\n3 30\n")
    with pytest.raises(ValueError, match="1 non-finite .*flux values, first at index 1"):
        read_two_column(with_nan)


@pytest.mark.parametrize(
    ("unit", "pattern"),
    [("bogus_unit", "unknown wavelength unit 'bogus_unit'"), ("Hz", "must be a length")],
)
def test_wrong_wavelength_units(tmp_path, unit, pattern):
    table = tmp_path / "t.txt"
    table.write_text("1 10\n2 20\n")
    with pytest.raises(ValueError, match=pattern):
        read_two_column(table, unit)


def test_missing_files_and_bad_options(tmp_path, data_dir):
    missing = tmp_path / "nowhere.dat"
    with pytest.raises(FileNotFoundError, match="nowhere.dat"):
        read_phoenix_dat(missing)
    with pytest.raises(FileNotFoundError, match="nor is it a muler template"):
        read_template(str(missing))
    with pytest.raises(ValueError, match="template format must be one of"):
        read_template(phoenix_file(data_dir, "Z"), format="sonora")
    with pytest.raises(TypeError, match="only apply to format='two-column'"):
        read_template(phoenix_file(data_dir, "Z"), columns=(0, 1))
    with pytest.raises(ValueError, match="fewer than 2 samples within"):
        read_phoenix_dat(phoenix_file(data_dir, "Y"), wavelength_range=(5000.0, 6000.0))
    with pytest.raises(ValueError, match="low < high"):
        read_phoenix_dat(phoenix_file(data_dir, "Y"), wavelength_range=(11000.0, 10000.0))
    table = tmp_path / "t.csv"
    table.write_text("w,f\n1,10\n2,20\n")
    with pytest.raises(ValueError, match="no column named 'flux'"):
        read_two_column(table, columns=("w", "flux"))


def test_template_container_checks():
    with pytest.raises(ValueError, match="kind must be one of"):
        Template(np.array([1.0, 2.0]), np.array([1.0, 1.0]), kind="planet")
    with pytest.raises(ValueError, match="3 samples but flux has 2"):
        Template(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="must be positive"):
        Template(np.array([-1.0, 2.0]), np.array([1.0, 1.0]))
    template = Template([1, 2, 3], [0.5, 0.6, 0.7], kind="telluric")
    assert template.wavelength.dtype == np.float64
