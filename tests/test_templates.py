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
    read_psg,
    read_sonora,
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


# --------------------------------------------------------------------------- Sonora
# Small files written in the layouts the Sonora grids ship in (see SONORA_MODELS): Bobcat
# text (2 header lines, µm descending, F_ν), Diamondback text (.spec, header lines, µm
# descending, F_λ in W m⁻² m⁻¹), Elf Owl netCDF (wavelength µm, flux erg s⁻¹ cm⁻² cm⁻¹).

C_ANGSTROM_PER_S = 2.99792458e18
BOBCAT_PARAMETERS = (
    "  1000.   1000.    0.28      nc     0.0    0.0   1.00   1.0    "
    "Teff, grav (MKS), Y, f_rain, Kzz, [Fe/H], C/O, f_hole"
)


def toy_flambda(wavelength_angstrom):
    """A smooth F_λ (erg s⁻¹ cm⁻² Å⁻¹) with a few absorption dips: the 'truth'."""
    flux = planck_lambda(wavelength_angstrom, 1000.0) * 1e-8  # per cm → per Å
    for centre in (11010.0, 11025.0, 11050.0):
        flux *= 1 - 0.5 * np.exp(-0.5 * ((wavelength_angstrom - centre) / 2.0) ** 2)
    return flux


def write_bobcat(
    path, wavelength_angstrom, flambda, *, unit_row="microns       Flux (erg/cm^2/s/Hz)"
):
    """Bobcat layout: parameters row, unit row, then µm and F_ν, wavelength descending."""
    fnu = flambda * wavelength_angstrom**2 / C_ANGSTROM_PER_S
    order = np.argsort(wavelength_angstrom)[::-1]
    rows = [f"  {w / 1e4:.6E}   {f:.6E}" for w, f in zip(wavelength_angstrom[order], fnu[order])]
    path.write_text("\n".join([BOBCAT_PARAMETERS, f" {unit_row}", *rows]) + "\n")
    return path


def write_diamondback(path, wavelength_angstrom, flambda):
    """Diamondback layout: text header lines, µm descending, F_λ in W m⁻² m⁻¹."""
    w_m2_m = flambda * 1e7  # erg s⁻¹ cm⁻² Å⁻¹ → W m⁻² m⁻¹ (× 1e-7 W · 1e4 cm² · 1e10 Å)
    order = np.argsort(wavelength_angstrom)[::-1]
    rows = [f"{w / 1e4:.8f}\t{f:.6e}" for w, f in zip(wavelength_angstrom[order], w_m2_m[order])]
    header = [
        " Teff=  1000 K, grav=  316 m/s2, fsed = 2, [M/H] = 0.0, C/O = 1.0",
        " Wavelength (microns)   Flux (W/m2/m)",
        " ----------------------------------",
    ]
    path.write_text("\n".join([*header, *rows]) + "\n")
    return path


def write_elfowl(
    path, wavelength_angstrom, flambda, *, flux_units="erg/cm**2/s/cm", variables=None
):
    """Elf Owl layout in NetCDF3 (scipy writes NetCDF3 only): µm and F_λ per cm."""
    from scipy.io import netcdf_file

    order = np.argsort(wavelength_angstrom)[::-1]
    values = {"wavelength": wavelength_angstrom[order] / 1e4, "flux": flambda[order] * 1e8}
    names = variables or {"wavelength": "wavelength", "flux": "flux"}
    with netcdf_file(path, "w") as dataset:
        dataset.createDimension("wavelength", wavelength_angstrom.size)
        for key, name in names.items():
            variable = dataset.createVariable(name, "d", ("wavelength",))
            variable[:] = values[key]
            variable.units = {"wavelength": "micron", "flux": flux_units}[key]
    return path


def test_sonora_bobcat_layout_gives_flambda_on_ascending_vacuum_angstrom(tmp_path):
    wavelength = np.linspace(11000.0, 11060.0, 601)
    truth = toy_flambda(wavelength)
    path = write_bobcat(tmp_path / "sp_t1000g1000nc_m0.0", wavelength, truth)
    template = read_template(path)  # the name says Bobcat
    assert template.meta["format"] == "sonora-bobcat" and template.kind == "stellar"
    assert np.all(np.diff(template.wavelength) > 0)  # the file runs the other way
    np.testing.assert_allclose(template.wavelength, wavelength, rtol=1e-7)
    # F_λ = F_ν c / λ², independently: the file holds F_ν to 7 significant digits
    np.testing.assert_allclose(template.flux, truth, rtol=2e-6)
    assert template.flux_quantity.unit == u.erg / u.s / u.cm**2 / u.AA
    assert template.meta["units_from"] == "header"
    assert template.meta["teff"] == 1000.0 and template.meta["gravity_mks"] == 1000.0
    assert template.to_spectrum().flux.unit.is_equivalent(u.erg / u.s / u.cm**2 / u.AA)
    # gzipped, as gollum reads them (sp_t…nc_m0.0.gz): the same numbers
    import gzip

    packed = tmp_path / "sp_t1000g1000nc_m0.0.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    wl, fl = read_sonora(packed, wavelength_range=(11010.0, 11020.0))
    keep = (template.wavelength >= 11010.0) & (template.wavelength <= 11020.0)
    np.testing.assert_array_equal(fl, template.flux[keep])
    np.testing.assert_array_equal(wl, template.wavelength[keep])


def test_sonora_diamondback_and_elfowl_layouts_agree_with_bobcat(tmp_path):
    wavelength = np.linspace(11000.0, 11060.0, 601)
    truth = toy_flambda(wavelength)
    bobcat = read_template(write_bobcat(tmp_path / "sp_t1000g316nc_m0.0", wavelength, truth))
    diamondback = read_template(
        write_diamondback(tmp_path / "t1000g316f2_m0.0_co1.0.spec", wavelength, truth)
    )
    elfowl = read_template(
        write_elfowl(
            tmp_path / "spectra_logzz_2.0_teff_1000.0_grav_316.0_mh_0.0_co_1.0.nc",
            wavelength,
            truth,
        )
    )
    assert diamondback.meta["format"] == "sonora-diamondback"
    assert elfowl.meta["format"] == "sonora-elfowl"
    assert elfowl.meta["units_from"] == "file attributes"
    assert diamondback.meta["teff"] == elfowl.meta["teff"] == 1000.0
    for other in (diamondback, elfowl):
        np.testing.assert_allclose(other.wavelength, bobcat.wavelength, rtol=1e-8)
        np.testing.assert_allclose(other.flux, truth, rtol=2e-6)
        np.testing.assert_allclose(other.flux, bobcat.flux, rtol=4e-6)


def test_sonora_header_without_a_unit_row_takes_the_published_units(tmp_path):
    wavelength = np.linspace(11000.0, 11010.0, 11)
    fnu = np.full(wavelength.size, 2.0e-6)
    rows = [f"{w / 1e4:.7f} {f:.6e}" for w, f in zip(wavelength[::-1], fnu)]
    path = tmp_path / "sp_t900g100nc_m0.0"
    path.write_text("\n".join([BOBCAT_PARAMETERS, *rows]) + "\n")
    wl, flux = read_sonora(path)
    np.testing.assert_allclose(flux, 2.0e-6 * C_ANGSTROM_PER_S / wl**2, rtol=1e-12)
    assert read_template(path).meta["units_from"] == "published default"


def test_sonora_bad_input_gives_clear_errors(tmp_path):
    wavelength = np.linspace(11000.0, 11010.0, 21)
    truth = toy_flambda(wavelength)
    # a grid that runs down, then up again
    mixed = write_bobcat(tmp_path / "sp_t1000g1000nc_m0.0", wavelength, truth)
    lines = mixed.read_text().splitlines()
    lines[8], lines[9] = lines[9], lines[8]
    mixed.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="neither strictly descending nor strictly ascending"):
        read_sonora(mixed)
    assert read_sonora(mixed, sort=True)[0].size == wavelength.size  # sort=True still sorts
    # a unit row naming a flux unit the reader does not know
    odd = write_bobcat(
        tmp_path / "sp_t1100g1000nc_m0.0", wavelength, truth, unit_row="microns  Flux (Jy/sr)"
    )
    with pytest.raises(ValueError, match=r"unrecognised flux unit 'Jy/sr'.*F_ν"):
        read_sonora(odd)
    furlongs = write_bobcat(
        tmp_path / "sp_t1200g1000nc_m0.0", wavelength, truth, unit_row="furlongs  Flux (W/m2/m)"
    )
    with pytest.raises(ValueError, match="unrecognised wavelength unit 'furlongs'"):
        read_sonora(furlongs)
    garbled = write_bobcat(
        tmp_path / "sp_t1300g1000nc_m0.0", wavelength, truth, unit_row="microns erg per s per Hz"
    )
    with pytest.raises(ValueError, match="unrecognised header row"):
        read_sonora(garbled)
    # no data rows; a name that says no grid; an unknown model
    empty = tmp_path / "sp_t1000g100nc_m0.0"
    empty.write_text(BOBCAT_PARAMETERS + "\n microns  Flux (erg/cm^2/s/Hz)\n")
    with pytest.raises(ValueError, match="no data rows"):
        read_sonora(empty)
    plain = tmp_path / "spectrum.txt"
    plain.write_text("1.1 1e-6\n1.0 2e-6\n")
    with pytest.raises(ValueError, match="cannot tell which Sonora grid"):
        read_sonora(plain)
    with pytest.raises(ValueError, match="Sonora model must be one of"):
        read_sonora(plain, model="cholla")
    np.testing.assert_allclose(read_sonora(plain, model="bobcat")[0], [10000.0, 11000.0])


def test_sonora_elfowl_netcdf_errors(tmp_path):
    wavelength = np.linspace(11000.0, 11010.0, 21)
    truth = toy_flambda(wavelength)
    wrong_unit = write_elfowl(tmp_path / "a.nc", wavelength, truth, flux_units="photons/s")
    with pytest.raises(ValueError, match="unrecognised flux unit 'photons/s'"):
        read_sonora(wrong_unit)
    renamed = write_elfowl(
        tmp_path / "b.nc", wavelength, truth, variables={"wavelength": "wavelength", "flux": "fnu"}
    )
    with pytest.raises(ValueError, match=r"no variable 'flux'.*\['fnu', 'wavelength'\]"):
        read_sonora(renamed)
    not_netcdf = tmp_path / "c.nc"
    not_netcdf.write_text("1.0 2.0\n")
    with pytest.raises(ValueError, match="is not a netCDF file"):
        read_sonora(not_netcdf)


def test_sonora_elfowl_netcdf4_needs_h5py(tmp_path):
    try:
        import h5py  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("h5py is installed: the NetCDF4 path is taken instead of the error")
    hdf5 = tmp_path / "spectra_logzz_2.0_teff_700.0_grav_100.0_mh_0.0_co_1.0.nc"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(ImportError, match=r"NetCDF4 \(HDF5\) file; reading it needs .*h5py"):
        read_template(hdf5)


def t_dwarf_like(wavelength, rng):
    """A line-blanketed T-dwarf-like F_λ: a 1000 K black body under a broad molecular
    trough, times ~120 absorption lines (Gaussian cores, depths 3–70 %, some blended)."""
    sed = planck_lambda(wavelength, 1000.0) * 1e-8
    sed *= 1 - 0.4 * np.exp(-0.5 * ((wavelength - 12030.0) / 25.0) ** 2)
    centres = rng.uniform(wavelength[0] + 0.5, wavelength[-1] - 0.5, 120)
    depths = rng.uniform(0.03, 0.7, centres.size)
    widths = rng.uniform(0.03, 0.07, centres.size)
    lines = np.ones_like(wavelength)
    for centre, depth, width in zip(centres, depths, widths):
        lines *= 1 - depth * np.exp(-0.5 * ((wavelength - centre) / width) ** 2)
    return sed * lines


def test_brown_dwarf_clone_end_to_end_from_a_bobcat_file(tmp_path):
    from blase_specutils import clone

    wavelength = np.arange(12000.0, 12060.0, 0.01)
    truth = t_dwarf_like(wavelength, np.random.default_rng(7))
    path = write_bobcat(tmp_path / "sp_t1000g1000nc_m0.0", wavelength, truth)
    template = read_template(path, wavelength_range=(12010.0, 12050.0))
    assert template.kind == "stellar" and len(template) == 4001
    result = clone(template, teff=template.meta["teff"], epochs=80, progress=False)
    restored = result.model_flux * result.continuum
    relative = restored / np.interp(template.wavelength, wavelength, truth) - 1
    # measured: clone RMS 0.94 % of the continuum, 1.3 % relative to the F_λ truth (89 lines)
    assert result.rms < 0.015
    assert np.sqrt(np.mean(relative**2)) < 0.02
    assert result.n_lines > 60


# --------------------------------------------------------------------------- PSG
PSG_COLUMNS = "Wave/freq Total H2O CO2 O3 N2O CO CH4 O2 N2 Rayleigh CIA"


def muler_psg_table():
    resource = importlib.resources.files("muler") / "templates" / "psg_trn_r100000_1.4_2.5_um.txt"
    with importlib.resources.as_file(resource) as path:
        return np.loadtxt(path)


def test_psg_reader_knows_the_header_and_every_molecule():
    wavelength, transmission = read_psg()  # muler's packaged PSG file
    assert list(transmission) == PSG_COLUMNS.split()[1:]
    table = muler_psg_table()  # an independent parse
    np.testing.assert_allclose(wavelength, table[:, 0] * 1e4, rtol=1e-15)
    for index, name in enumerate(transmission, start=1):
        np.testing.assert_array_equal(transmission[name], table[:, index])
    # the muler route reads the same Total; the Template carries the PSG column's name
    np.testing.assert_array_equal(read_muler_template("psg")[1], transmission["Total"])
    water = read_template("psg", column="H2O", wavelength_range=(17500.0, 18200.0))
    assert water.kind == "telluric" and water.meta["column"] == "H2O"
    assert "CIA" in water.meta["columns"] and len(water) == 3922
    np.testing.assert_array_equal(
        water.flux, transmission["H2O"][(wavelength >= 17500.0) & (wavelength <= 18200.0)]
    )
    some_wavelength, some = read_psg("psg", ["CH4", "O2"], wavelength_range=(20000.0, 20100.0))
    assert list(some) == ["CH4", "O2"] and some_wavelength[0] >= 20000.0


def write_psg(path, spectral, values, *, unit="Wavelength [um]", names=PSG_COLUMNS):
    lines = [
        "# ------------------------------------------------------------------------",
        "# NASA-GSFC Planetary Spectrum Generator (PSG, Villanueva et al. 2018, 2022)",
        "# Atmospheric transmittance spectrum synthesized with PUMAS",
    ]
    if unit is not None:
        lines.append(f"# Spectral unit: {unit}")
    lines += ["# ------------------------------------------------------------------------"]
    lines += [f"# {names}"]
    lines += [f"{x:.9e} " + " ".join(f"{v:.5e}" for v in row) for x, row in zip(spectral, values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_psg_wavenumber_axis_and_file_guessing(tmp_path):
    wavenumber = np.linspace(5000.0, 5010.0, 41)  # cm⁻¹, ascending: wavelength descending
    rng = np.random.default_rng(3)
    values = rng.uniform(0.2, 1.0, (wavenumber.size, 11))
    path = write_psg(tmp_path / "trn.txt", wavenumber, values, unit="Wavenumber [cm-1]")
    template = read_template(path, column="CH4")  # guessed from the PSG header line
    assert template.meta["format"] == "psg" and template.meta["spectral_unit"] == "1 / cm"
    np.testing.assert_allclose(template.wavelength, 1e8 / wavenumber[::-1], rtol=1e-12)
    np.testing.assert_allclose(template.flux, values[::-1, 6], rtol=1e-5)  # CH4
    # rounding just above 1 is accepted and clipped to 1
    values[5, 1] = 1.000004
    wavelength, columns = read_psg(
        write_psg(tmp_path / "psg_b.txt", wavenumber, values, unit="Wavenumber [cm-1]")
    )
    assert columns["H2O"].max() == 1.0


def test_psg_bad_input_gives_clear_errors(tmp_path):
    micron = np.linspace(1.70, 1.71, 21)
    good = np.full((micron.size, 11), 0.5)

    above = good.copy()
    above[4, 1] = 1.2
    with pytest.raises(
        ValueError, match=r"column 'H2O' is not a transmission: 1 values above 1.*1\.2"
    ):
        read_psg(write_psg(tmp_path / "a.txt", micron, above))
    below = good.copy()
    below[[2, 3], 0] = -0.05
    with pytest.raises(ValueError, match=r"column 'Total' is not a transmission: 2 values below 0"):
        read_psg(write_psg(tmp_path / "b.txt", micron, below), "Total")
    read_psg(tmp_path / "b.txt", "H2O")  # only the columns asked for are checked

    ragged = write_psg(tmp_path / "c.txt", micron, good)
    lines = ragged.read_text().splitlines()
    lines[10] = " ".join(lines[10].split()[:-2])
    ragged.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 11 has 10 values but the header names 12 columns"):
        read_psg(ragged)

    with pytest.raises(
        ValueError, match=r"no column 'NH3' in this PSG file; its columns are \['Total'"
    ):
        read_psg(write_psg(tmp_path / "d.txt", micron, good), ["H2O", "NH3"])
    with pytest.raises(ValueError, match="the header names 11 columns"):
        read_psg(write_psg(tmp_path / "e.txt", micron, good, names=PSG_COLUMNS.rsplit(" ", 1)[0]))
    with pytest.raises(ValueError, match="no '# Spectral unit: ...' line"):
        read_psg(write_psg(tmp_path / "f.txt", micron, good, unit=None))
    with pytest.raises(ValueError, match="unrecognised spectral unit 'Wavelength \\[parsec\\]'"):
        read_psg(write_psg(tmp_path / "g.txt", micron, good, unit="Wavelength [parsec]"))
    with pytest.raises(TypeError, match="column= applies to PSG files"):
        read_template(tmp_path / "g.txt", format="two-column", column="H2O")
    with pytest.raises(TypeError, match="only to muler's PSG template"):
        read_template("telfit_hpf", column="H2O")
