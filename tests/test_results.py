"""astro/results.py: line tables and equivalent widths, spectra, parameters, plots, files."""

from __future__ import annotations

import dataclasses
import math

import astropy.units as u
import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import QTable
from matplotlib.figure import Figure
from scipy.integrate import quad, trapezoid
from specutils import SpectralRegion, Spectrum, SpectrumList
from specutils.analysis import equivalent_width as specutils_equivalent_width

from blase_specutils.astro import results as R
from blase_specutils.cloning import CloneResult, clone, forest_from_table
from blase_specutils.core.lineforest import SPEED_OF_LIGHT_KMS, LineForest
from blase_specutils.core.profiles import pseudo_voigt, voigt
from blase_specutils.fitting import fit


# ----------------------------------------------------------------------------- fixtures
def _forest(
    center, amplitude, sigma, gamma, *, mode="linear", profile="pseudo_voigt", emission=None
):
    return LineForest(
        center,
        amplitude,
        sigma,
        gamma,
        mode=mode,
        profile=profile,
        emission=emission,
        dtype=torch.float64,
    )


def _synthetic_template(lo=8500.0, hi=8560.0, step=0.01, seed=3):
    """A flat-continuum spectrum of 25 Gaussian lines of known depths."""
    rng = np.random.default_rng(seed)
    wl = np.arange(lo, hi, step)
    centers = np.sort(rng.uniform(lo + 2, hi - 2, 25))
    depths = rng.uniform(0.1, 0.6, 25)
    flux = np.ones_like(wl)
    for c, d in zip(centers, depths):
        flux *= 1 - d * np.exp(-0.5 * ((wl - c) / 0.06) ** 2)
    return wl, flux


@pytest.fixture(scope="module")
def small_clone() -> CloneResult:
    wl, flux = _synthetic_template()
    return clone(wl, flux, flatten=False, prominence=0.02, epochs=30, progress=False)


@pytest.fixture(scope="module")
def telluric_clone() -> CloneResult:
    wl = np.arange(8495.0, 8565.0, 0.01)
    flux = np.ones_like(wl)
    for c in (8512.3, 8531.7, 8547.9):
        flux *= 1 - 0.4 * np.exp(-0.5 * ((wl - c) / 0.05) ** 2)
    return clone(wl, flux, flatten=False, prominence=0.05, epochs=10, progress=False)


def _observe(clone_result, rv_kms, lo, hi, n_pixels, rng, noise=0.004, tilt=0.0, telluric=None):
    wl = np.linspace(lo, hi, n_pixels)
    flux = clone_result.evaluate(wl, velocity_kms=rv_kms) * (
        1 + tilt * (wl - wl.mean()) / (hi - lo)
    )
    if telluric is not None:
        flux = flux * telluric.evaluate(wl)
    sigma = np.full_like(wl, noise)
    return wl, flux + rng.normal(0, noise, wl.size), sigma


@pytest.fixture(scope="module")
def two_order_fit(small_clone, telluric_clone):
    """Two orders, a telluric clone, true RV 12 km/s."""
    rng = np.random.default_rng(11)
    o1 = _observe(small_clone, 12.0, 8505.0, 8528.0, 700, rng, telluric=telluric_clone)
    o2 = _observe(small_clone, 12.0, 8530.0, 8553.0, 700, rng, tilt=0.05, telluric=telluric_clone)
    flux2 = o2[1].copy()
    flux2[50:60] = np.nan  # masked pixels travel through everything
    return fit(
        [o1[0], o2[0]],
        [o1[1], flux2],
        [o1[2], o2[2]],
        stellar=small_clone,
        telluric=telluric_clone,
        rv=0.0,
        rv_search=20.0,
        vsini=0.0,  # the injected spectrum is not broadened: a fitted v sin i ends below
        fit_vsini=False,  # half the grid step, without an error bar (and warns)
        resolving_power=60000.0,
        epochs=5,
        global_epochs=5,
        progress=False,
    )


@pytest.fixture(scope="module")
def one_order_fit(small_clone):
    rng = np.random.default_rng(5)
    wl, flux, sigma = _observe(small_clone, -7.0, 8510.0, 8550.0, 1200, rng)
    return fit(
        wl,
        flux,
        sigma,
        stellar=small_clone,
        rv=0.0,
        rv_search=15.0,
        vsini=0.0,  # not broadened (see two_order_fit)
        fit_vsini=False,
        epochs=3,
        global_epochs=3,
        progress=False,
    )


# ----------------------------------------------------------------------------- equivalent widths
@pytest.mark.parametrize("mode", ["linear", "log"])
def test_equivalent_width_matches_specutils_on_isolated_lines(mode):
    centers = [8600.0, 8700.0, 8800.0]
    forest = _forest(centers, [0.02, 0.08, 0.15], [0.03, 0.05, 0.04], [0.02, 0.03, 0.06], mode=mode)
    table = R.line_table(forest)
    half = 40.0  # Å each side: the Lorentzian wings beyond hold < 0.1 % of the area
    for k, c in enumerate(centers):
        wl = np.arange(c - half, c + half, 0.002)
        flux = forest.dense_flux(wl).detach().numpy()
        spectrum = Spectrum(flux=flux * u.dimensionless_unscaled, spectral_axis=wl * u.AA)
        reference = specutils_equivalent_width(spectrum).to_value(u.AA)
        assert table["equivalent_width"][k].to_value(u.AA) == pytest.approx(reference, rel=0.01)
    if mode == "linear":
        # Area-normalised profile: EW = a exactly.
        assert np.array_equal(
            table["equivalent_width"].to_value(u.AA), table["amplitude"].to_value(u.AA)
        )


@pytest.mark.parametrize("profile", ["pseudo_voigt", "voigt"])
@pytest.mark.parametrize("strength", [0.3, 3.0])
def test_log_mode_equivalent_width_matches_quadrature(profile, strength):
    sigma, gamma = 0.04, 0.03
    shape = pseudo_voigt if profile == "pseudo_voigt" else voigt
    peak = float(
        shape(
            torch.zeros(1, dtype=torch.float64),
            torch.tensor(sigma, dtype=torch.float64),
            torch.tensor(gamma, dtype=torch.float64),
        )
    )
    amplitude = strength / peak  # centre optical depth = strength (3.0 is a saturated line)

    def absorbed(x):
        v = float(
            shape(
                torch.tensor([x], dtype=torch.float64),
                torch.tensor(sigma, dtype=torch.float64),
                torch.tensor(gamma, dtype=torch.float64),
            )
        )
        return -math.expm1(-amplitude * v)

    reference = sum(
        quad(absorbed, a, b, limit=400, epsabs=1e-14)[0]
        for a, b in ((-np.inf, -1.0), (-1.0, 1.0), (1.0, np.inf))
    )
    ew = R.equivalent_widths([amplitude], [sigma], [gamma], mode="log", profile=profile)
    assert ew[0] == pytest.approx(reference, rel=1e-6)
    assert ew[0] < amplitude  # saturation: less than the optically thin value


def test_emission_lines_have_negative_equivalent_width():
    a, s, g = [0.05], [0.04], [0.03]
    lin = R.equivalent_widths(a, s, g, mode="linear", emission=[True])
    log = R.equivalent_widths(a, s, g, mode="log", emission=[True])
    assert lin[0] == -0.05

    # exp(+aV) brightens more than aV: |EW| > a; reference by quadrature.
    def profile(x):
        return float(
            pseudo_voigt(
                torch.tensor([x], dtype=torch.float64),
                torch.tensor(0.04, dtype=torch.float64),
                torch.tensor(0.03, dtype=torch.float64),
            )
        )

    reference = sum(
        quad(lambda x: -math.expm1(0.05 * profile(x)), lo, hi, limit=400)[0]
        for lo, hi in ((-np.inf, -1.0), (-1.0, 1.0), (1.0, np.inf))
    )
    assert log[0] == pytest.approx(reference, rel=1e-6)
    assert log[0] < -0.05


def test_linear_mode_line_below_zero_flux_is_integrated_with_the_clip():
    sigma, gamma = 0.03, 0.01
    peak = float(
        pseudo_voigt(
            torch.zeros(1, dtype=torch.float64),
            torch.tensor(sigma, dtype=torch.float64),
            torch.tensor(gamma, dtype=torch.float64),
        )
    )
    amplitude = 1.6 / peak  # 1 − aV would reach −0.6 at the centre; the forest clips it at 1e-6
    wl = np.arange(8600.0 - 30, 8600.0 + 30, 0.0005)
    forest = _forest([8600.0], [amplitude], [sigma], [gamma])
    flux = (
        torch.exp(
            forest.log_transmission(
                forest.make_layout(wl, tolerance=1e-12, max_half_width=40.0), fused=False
            )
        )
        .detach()
        .numpy()
    )
    direct = trapezoid(1 - flux, wl)
    ew = R.equivalent_widths([amplitude], [sigma], [gamma], mode="linear")
    assert ew[0] < amplitude
    assert ew[0] == pytest.approx(direct, rel=2e-3)


def test_cayrel_uncertainty_formula_and_its_meaning():
    # By hand: 1.5 * sqrt(0.2 Å * 0.05 Å) / 100 = 1.5e-3 Å.
    assert R.cayrel_equivalent_width_uncertainty(0.2, 0.05, 100.0) == pytest.approx(
        1.5e-3, rel=1e-12
    )
    assert np.isnan(R.cayrel_equivalent_width_uncertainty(0.2, 0.05, 0.0))
    # Meaning: the scatter of EWs summed over 2.25 FWHM of pixels with white noise 1/SNR.
    rng = np.random.default_rng(0)
    fwhm, pixel, snr = 0.3, 0.03, 50.0
    n_pix = int(round(2.25 * fwhm / pixel))
    trials = rng.normal(0, 1 / snr, (20000, n_pix)).sum(1) * pixel
    assert np.std(trials) == pytest.approx(
        float(R.cayrel_equivalent_width_uncertainty(fwhm, pixel, snr)), rel=0.03
    )


# ----------------------------------------------------------------------------- line table
def test_line_table_columns_units_flags_and_meta(small_clone):
    table = R.line_table(small_clone)
    for name in (
        "center",
        "amplitude",
        "sigma",
        "gamma",
        "fwhm",
        "equivalent_width",
        "equivalent_width_uncertainty",
        "amplitude_init",
        "equivalent_width_init",
    ):
        assert table[name].unit == u.AA, name
    assert table.colnames[:12] == [
        "center",
        "amplitude",
        "sigma",
        "gamma",
        "fwhm",
        "lorentz_fraction",
        "depth",
        "equivalent_width",
        "equivalent_width_uncertainty",
        "emission",
        "saturated",
        "blended",
    ]
    assert np.all(np.isnan(table["equivalent_width_uncertainty"]))  # a clone has no data
    assert table.meta["source"] == "clone"
    assert table.meta["mode"] == "linear" and table.meta["profile"] == "pseudo_voigt"
    assert table.meta["blase_specutils_version"]
    assert table.meta["prominence"] == 0.02
    assert "date" in table.meta
    # The raw columns rebuild the forest bit-exactly.
    rebuilt = forest_from_table(table)
    for name in ("ln_amplitude", "ln_sigma", "ln_gamma", "center_shift", "center_ref"):
        assert torch.equal(getattr(rebuilt, name), getattr(small_clone.forest, name)), name


def test_saturated_and_blended_flags():
    # Line 0 and 1 are 0.05 Å apart (FWHM ≈ 0.1 Å): blended; line 2 is alone and deep.
    forest = _forest(
        [8600.0, 8600.05, 8610.0], [0.005, 0.005, 0.3], [0.04, 0.04, 0.04], [0.02, 0.02, 0.02]
    )
    table = R.line_table(forest)
    assert list(table["blended"]) == [True, True, False]
    assert list(table["saturated"]) == [False, False, True]
    assert table["depth"][2] > R.SATURATION_DEPTH > table["depth"][0]


def test_line_table_with_explicit_noise_uses_cayrel():
    forest = _forest([8600.0, 8610.0], [0.01, 0.02], [0.04, 0.05], [0.02, 0.03])
    resolution = 8600.0 / 55000 * u.AA
    table = R.line_table(forest, data_snr=200.0, resolution_fwhm=resolution, pixel_size=0.05 * u.AA)
    fwhm_obs = np.hypot(table["fwhm"].to_value(u.AA), resolution.to_value(u.AA))
    expected = 1.5 * np.sqrt(fwhm_obs * 0.05) / 200.0
    assert np.allclose(table["equivalent_width_uncertainty"].to_value(u.AA), expected, rtol=1e-12)


def test_line_table_bad_inputs():
    forest = _forest([8600.0, 8610.0], [0.01, 0.02], [0.04, 0.05], [0.02, 0.03])
    with pytest.raises(TypeError, match="line_table expects a LineForest"):
        R.line_table(np.ones(3))
    with pytest.raises(ValueError, match="data_snr needs pixel_size"):
        R.line_table(forest, data_snr=100.0)
    with pytest.raises(ValueError, match="data_snr must be a scalar or have one value per line"):
        R.line_table(forest, data_snr=[1.0, 2.0, 3.0], pixel_size=0.05)
    with pytest.raises(ValueError, match=r"initial\['amplitude'\] has shape \(3,\)"):
        R.line_table(forest, initial={"amplitude": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="mode must be 'linear' or 'log'"):
        R.equivalent_widths([1.0], [1.0], [1.0], mode="exp")


def test_fit_line_table_has_data_uncertainties(two_order_fit):
    table = R.line_table(two_order_fit)
    assert table.meta["source"] == "fit"
    assert table.meta["fit_rv_kms"] == pytest.approx(two_order_fit.rv.value)
    observed = table["center"].to_value(u.AA) * (1 + two_order_fit.rv.value / SPEED_OF_LIGHT_KMS)
    in_data = ((observed > 8505.0) & (observed < 8528.0)) | (
        (observed > 8530.0) & (observed < 8553.0)
    )
    sigma_ew = table["equivalent_width_uncertainty"].to_value(u.AA)
    assert np.all(np.isfinite(sigma_ew[in_data])) and in_data.sum() > 10
    # lines in the gap between the orders or beyond them are flagged (the good pixels
    # span a pixel less than the nominal ranges: compare away from the edges)
    edges = np.min(np.abs(observed[:, None] - [8505.0, 8528.0, 8530.0, 8553.0]), axis=1) > 0.05
    assert np.array_equal(np.asarray(table["in_data"])[edges], in_data[edges])
    assert (~in_data).sum() > 0
    assert "in_data" not in R.line_table(two_order_fit.template).colnames  # clones: no data
    assert np.all(np.isnan(sigma_ew[~in_data]))
    # SNR ≈ 1/0.004 = 250 and pixel ≈ 23 Å / 699 in these data.
    fwhm_obs = np.hypot(
        table["fwhm"].to_value(u.AA),
        table["center"].to_value(u.AA) / two_order_fit.resolving_power.value
    )
    expected = 1.5 * np.sqrt(fwhm_obs * 23.0 / 699) / 250.0
    # lines the L1 prior held: the Cayrel photon-noise estimate; lines whose amplitude
    # trained: the fit's own Fisher error (finite, positive)
    held = in_data & np.isnan(np.asarray(table["ln_amplitude_uncertainty"]))
    trained = in_data & ~held
    assert trained.sum() > 10
    assert np.allclose(sigma_ew[held], expected[held], rtol=0.06)  # (may be none)
    # the Cayrel floor for the same lines is of the same order (photon noise at S/N 250)
    ratio = sigma_ew[trained] / expected[trained]
    assert 0.3 < np.median(ratio) < 30
    assert np.all(sigma_ew[trained] > 0)


# ----------------------------------------------------------------------------- ECSV
def test_line_table_ecsv_round_trip_is_bit_exact(small_clone, tmp_path):
    table = R.line_table(small_clone)
    path = R.write_line_table(table, tmp_path / "lines.ecsv")
    back = R.read_line_table(path)
    assert back.colnames == table.colnames
    for name in table.colnames:
        assert getattr(back[name], "unit", None) == getattr(table[name], "unit", None), name
        assert back[name].dtype == table[name].dtype, name
        assert np.array_equal(np.asarray(back[name]), np.asarray(table[name]), equal_nan=True), name
    assert dict(back.meta) == dict(table.meta)
    assert back["equivalent_width"].info.description == table["equivalent_width"].info.description
    with pytest.raises(FileExistsError, match="overwrite=True"):
        R.write_line_table(table, path)
    with pytest.raises(TypeError, match="astropy Table"):
        R.write_line_table({"a": 1}, tmp_path / "x.ecsv")
    (tmp_path / "junk.ecsv").write_text("not a table\x00")
    with pytest.raises(ValueError, match="is not an ECSV table"):
        R.read_line_table(tmp_path / "junk.ecsv")
    with pytest.raises(FileNotFoundError):
        R.read_line_table(tmp_path / "missing.ecsv")


# ----------------------------------------------------------------------------- spectra
def test_template_spectrum(small_clone):
    spec = R.template_spectrum(small_clone)
    assert isinstance(spec, Spectrum)
    assert spec.spectral_axis.unit == u.AA and spec.flux.unit == u.dimensionless_unscaled
    assert np.array_equal(spec.spectral_axis.value, small_clone.wavelength)
    assert np.allclose(spec.flux.value, small_clone.model_flux, rtol=0, atol=1e-12)
    assert spec.meta["n_lines"] == small_clone.n_lines
    grid_nm = np.linspace(851.0, 852.0, 500) * u.nm
    on_grid = R.template_spectrum(small_clone, grid_nm)
    assert np.allclose(on_grid.spectral_axis.to_value(u.nm), grid_nm.value, rtol=1e-14)
    assert np.allclose(on_grid.flux.value, small_clone.evaluate(grid_nm.to_value(u.AA)), atol=1e-12)


def test_template_spectrum_absolute_multiplies_the_continuum():
    wl, flux = _synthetic_template()
    slope = 2.0 + (wl - wl[0]) / 100.0  # a tilted continuum, flattened away by the clone
    result = clone(wl, flux * slope, prominence=0.02, epochs=5, progress=False)
    absolute = R.template_spectrum(result, absolute=True)
    assert np.allclose(absolute.flux.value, result.model_flux * result.continuum, rtol=1e-12)
    assert np.allclose(np.median(absolute.flux.value / flux), np.median(slope), rtol=0.05)
    with pytest.raises(ValueError, match="continuum is known only over"):
        R.template_spectrum(result, np.linspace(8400.0, 8600.0, 100), absolute=True)


def test_fit_spectra_and_parameters(two_order_fit):
    spectra = R.fit_spectra(two_order_fit)
    assert set(spectra) == {
        "data",
        "model",
        "residual",
        "continuum",
        "telluric",
        "telluric_corrected",
    }
    assert all(isinstance(s, SpectrumList) and len(s) == 2 for s in spectra.values())
    data, model = spectra["data"][1], spectra["model"][1]
    assert data.spectral_axis.unit == u.AA
    assert np.array_equal(data.mask, ~two_order_fit.good[1])
    assert data.mask[50:60].all() and data.mask.sum() == 10
    assert np.array_equal(data.uncertainty.array, two_order_fit.uncertainty[1])
    good = ~data.mask
    assert np.allclose(
        spectra["residual"][1].flux.value[good], (data.flux - model.flux).value[good], atol=1e-12
    )
    reconstructed = (
        spectra["telluric_corrected"][1].flux
        * spectra["telluric"][1].flux
        * spectra["continuum"][1].flux
    ).value
    assert np.allclose(reconstructed[good], data.flux.value[good], rtol=1e-10)
    assert np.any(spectra["telluric"][0].flux.value < 0.9)  # the telluric lines show
    params = R.fit_parameters(two_order_fit)
    assert len(params) == 1
    assert params["rv"].unit == u.km / u.s and params["vsini_uncertainty"].unit == u.km / u.s
    assert params["rv"][0].value == two_order_fit.rv.value
    assert params["rv_uncertainty"][0].value == two_order_fit.uncertainties["rv"]
    assert params["chi2_reduced"][0] == two_order_fit.chi2_reduced
    assert np.isnan(params["resolving_power_uncertainty"][0])  # R held fixed
    assert "telluric_scale" in params.colnames
    # The fit found the injected RV (12 km/s) to well within a pixel (≈ 1.4 km/s).
    assert params["rv"][0].to_value(u.km / u.s) == pytest.approx(12.0, abs=0.5)


def test_fit_spectra_single_order_is_a_spectrum(one_order_fit):
    spectra = R.fit_spectra(one_order_fit)
    assert all(isinstance(s, Spectrum) for s in spectra.values())
    assert np.all(spectra["telluric"].flux.value == 1.0)
    params = R.fit_parameters(one_order_fit)
    assert "telluric_scale" not in params.colnames
    assert params["rv"][0].to_value(u.km / u.s) == pytest.approx(-7.0, abs=0.5)


# ----------------------------------------------------------------------------- plots
def test_plot_fit(two_order_fit):
    fig = R.plot_fit(two_order_fit)
    assert isinstance(fig, Figure)
    top, bottom = fig.axes
    assert "Å" in bottom.get_xlabel() and "σ" in bottom.get_ylabel()
    assert "RV =" in top.get_title()
    labels = [line.get_label() for line in top.get_lines()]
    assert {"data", "model", "telluric × continuum"} <= set(labels)
    zoom = R.plot_fit(two_order_fit, region=(851.0, 851.5) * u.nm)
    assert zoom.axes[0].get_xlim() == pytest.approx((8510.0, 8515.0))
    spectral_region = R.plot_fit(
        two_order_fit, region=SpectralRegion(8535 * u.AA, 8540 * u.AA), order=1
    )
    assert spectral_region.axes[0].get_xlim() == pytest.approx((8535.0, 8540.0))
    with pytest.raises(ValueError, match="does not overlap"):
        R.plot_fit(two_order_fit, region=(9000.0, 9010.0))
    with pytest.raises(ValueError, match="order must be an index"):
        R.plot_fit(two_order_fit, order=5)
    with pytest.raises(u.UnitConversionError, match="not a spectral quantity"):
        R.plot_fit(two_order_fit, region=(1, 2) * u.s)
    fig2 = Figure()
    axes = fig2.subplots(2, 1)
    assert R.plot_fit(two_order_fit, ax=axes) is fig2


def test_plot_fit_draws_only_good_pixels_and_names_the_object(two_order_fit):
    """Masked pixels (NaN flux in order 2) are gaps in data, model and telluric lines alike:
    the continuum there is an extrapolation, never drawn. Dimensionless flux is labelled
    as normalised; the object's name, when the fit knows it, heads the title."""
    good = two_order_fit.order_data[1].good
    assert not good[50:60].any()
    fig = R.plot_fit(two_order_fit, order=1)
    top = fig.axes[0]
    by_label = {line.get_label(): line for line in top.get_lines()}
    for label in ("data", "model", "telluric × continuum"):
        y = np.asarray(by_label[label].get_ydata(), float)
        assert np.all(np.isnan(y[~good])), label
        assert np.all(np.isfinite(y[good])), label
    # the data are drawn above the model, so that both stay visible
    assert by_label["data"].get_zorder() > by_label["model"].get_zorder()
    assert top.get_ylabel() == "Normalised flux"
    assert two_order_fit.meta["object"] is None  # arrays name no object
    assert not top.get_title().startswith("HD")
    named = dataclasses.replace(two_order_fit, meta={**two_order_fit.meta, "object": "HD 189733"})
    assert R.plot_fit(named).axes[0].get_title().startswith("HD 189733: RV =")


def test_observed_object_from_meta_or_fits_header():
    from blase_specutils.astro.inputs import observed_object

    wl = np.linspace(8500, 8510, 20) * u.AA
    header = fits.Header({"OBJECT": " WASP 69 "})
    from_header = Spectrum(spectral_axis=wl, flux=np.ones(20) * u.one, meta={"header": header})
    from_meta = Spectrum(spectral_axis=wl, flux=np.ones(20) * u.one, meta={"object": "HR 3039"})
    assert observed_object(from_header) == "WASP 69"
    assert observed_object(SpectrumList([from_meta, from_header])) == "HR 3039"
    assert observed_object([from_header]) == "WASP 69"
    assert observed_object(Spectrum(spectral_axis=wl, flux=np.ones(20) * u.one)) is None
    assert observed_object(wl.value) is None


def test_plot_clone(small_clone):
    fig = R.plot_clone(small_clone, region=(8520, 8530))
    top, bottom = fig.axes
    assert "Å" in bottom.get_xlabel()
    assert top.get_xlim() == pytest.approx((8520.0, 8530.0))
    bare = CloneResult(small_clone.forest, np.array([]), np.array([]), np.array([]))
    with pytest.raises(ValueError, match="no target spectrum"):
        R.plot_clone(bare)


# ----------------------------------------------------------------------------- ASDF
def test_write_read_fit_round_trip_is_bit_exact(two_order_fit, tmp_path):
    path = R.write_fit(two_order_fit, tmp_path / "fit.asdf")
    loaded = R.read_fit(path)
    assert isinstance(loaded, R.LoadedFit)
    for name in ("rv", "vsini", "resolving_power", "limb_darkening", "chi2_reduced"):
        assert getattr(loaded, name) == getattr(two_order_fit, name), name
    assert loaded.uncertainties == pytest.approx(two_order_fit.uncertainties, nan_ok=True)
    for name in (
        "wavelength",
        "flux",
        "uncertainty",
        "good",
        "model_flux",
        "continuum_flux",
        "telluric_flux",
        "telluric_corrected_flux",
        "residual",
    ):
        for k in range(2):
            assert np.array_equal(
                getattr(loaded, name)[k], getattr(two_order_fit, name)[k], equal_nan=True
            ), name
    expected_lines = R.line_table(two_order_fit)
    for name in expected_lines.colnames:
        assert np.array_equal(
            np.asarray(loaded.line_table[name]), np.asarray(expected_lines[name]), equal_nan=True
        ), name
        assert getattr(loaded.line_table[name], "unit", None) == getattr(
            expected_lines[name], "unit", None
        )
    expected_params = R.fit_parameters(two_order_fit)
    for name in expected_params.colnames:
        assert np.array_equal(
            np.asarray(loaded.parameters[name]), np.asarray(expected_params[name]), equal_nan=True
        ), name
    assert loaded.parameters["rv"].unit == u.km / u.s
    # The template forest is rebuilt bit-exactly, and so is its spectrum.
    for name in ("ln_amplitude", "ln_sigma", "ln_gamma", "center_shift", "center_ref", "sign"):
        assert torch.equal(
            getattr(loaded.template.forest, name), getattr(two_order_fit.template.forest, name)
        )
    assert np.array_equal(loaded.template.wavelength, two_order_fit.template.wavelength)
    assert np.array_equal(loaded.spectrum.flux.value, R.template_spectrum(two_order_fit).flux.value)
    assert isinstance(loaded.model, SpectrumList) and isinstance(
        loaded.residual_spectrum, SpectrumList
    )
    assert loaded.has_telluric
    assert isinstance(loaded.plot(region=(8510, 8520)), Figure)
    assert loaded.residual_rms_over_noise() == pytest.approx(
        two_order_fit.residual_rms_over_noise(), rel=1e-12
    )
    # Writing the loaded fit again preserves everything.
    again = R.read_fit(loaded.write(tmp_path / "again.asdf"))
    assert np.array_equal(again.model_flux[1], loaded.model_flux[1])
    # One class: the loaded fit is a FitResult without a forward model, whose recomputed
    # line table equals the stored one.
    assert type(loaded) is type(two_order_fit) is R.FitResult
    assert loaded.forward_model is None and loaded.path == path
    assert two_order_fit.path is None and two_order_fit.stored is None
    assert loaded.n_orders == two_order_fit.n_orders == 2
    recomputed = R.line_table(loaded)
    for name in ("equivalent_width", "equivalent_width_uncertainty", "center", "depth"):
        assert np.array_equal(
            np.asarray(recomputed[name]), np.asarray(loaded.line_table[name]), equal_nan=True
        ), name
    assert f"path={str(path)!r}" in repr(loaded)


def test_flags_survive_the_fit_file(two_order_fit, tmp_path):
    """A fit that says it may be wrong still says so after write/read (and a file from
    before flags were stored reads as no flags, not as an error)."""
    import dataclasses

    flagged = dataclasses.replace(
        two_order_fit, flags={"rv_ambiguous": "a second minimum 3 km/s away"}
    )
    loaded = R.read_fit(R.write_fit(flagged, tmp_path / "flagged.asdf"))
    assert loaded.flags == {"rv_ambiguous": "a second minimum 3 km/s away"}
    assert not loaded.converged and "converged=False" in repr(loaded)
    clean = R.read_fit(R.write_fit(dataclasses.replace(two_order_fit, flags={}), tmp_path / "c"))
    assert clean.flags == {} and clean.converged


def test_global_results_are_quantities_for_fits_and_loaded_fits(two_order_fit, tmp_path):
    """rv, vsini (km/s), R and ε (dimensionless) and their errors are Quantities, the
    same value to the bit in a fit and its file, and both reprs show the ± errors."""
    loaded = R.read_fit(R.write_fit(two_order_fit, tmp_path / "fit.asdf"))
    kms = u.km / u.s
    for result in (two_order_fit, loaded):
        for name, unit in (
            ("rv", kms),
            ("vsini", kms),
            ("rv_uncertainty", kms),
            ("vsini_uncertainty", kms),
            ("resolving_power", u.one),
            ("resolving_power_uncertainty", u.one),
            ("limb_darkening", u.one),
        ):
            value = getattr(result, name)
            assert isinstance(value, u.Quantity) and value.unit == unit, name
        assert result.rv.to_value(u.m / u.s) == 1000 * result.rv.value
        assert result.rv_uncertainty.value == result.uncertainties["rv"]
        assert float(result.resolving_power) == result.parameters["resolving_power"][0]
        assert result.rv.value == result.parameters["rv"][0].to_value(kms)
        assert f"rv={result.rv.value:.4f} ± {result.rv_uncertainty.value:.4f} km/s" in repr(result)
    assert loaded.rv == two_order_fit.rv and loaded.vsini == two_order_fit.vsini


def test_read_fit_rejects_foreign_files(tmp_path, one_order_fit):
    import asdf

    with pytest.raises(FileNotFoundError, match="no fit file"):
        R.read_fit(tmp_path / "missing.asdf")
    text = tmp_path / "text.asdf"
    text.write_text("hello")
    with pytest.raises(ValueError, match="is not an ASDF file"):
        R.read_fit(text)
    other = tmp_path / "other.asdf"
    asdf.AsdfFile({"data": np.arange(3)}).write_to(other)
    with pytest.raises(ValueError, match="not a blase_specutils fit"):
        R.read_fit(other)
    fits_file = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros(3)).writeto(fits_file)
    with pytest.raises(ValueError, match="is not an ASDF file"):
        R.read_fit(fits_file)
    path = R.write_fit(one_order_fit, tmp_path / "one.asdf")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        R.write_fit(one_order_fit, path)
    loaded = R.read_fit(path)
    assert isinstance(loaded.model, Spectrum) and not loaded.has_telluric
    assert isinstance(loaded.wavelength, np.ndarray)
    with pytest.raises(TypeError, match="write_fit expects a FitResult"):
        R.write_fit(QTable(), tmp_path / "x.asdf")
