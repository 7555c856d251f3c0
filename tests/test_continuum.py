"""Continuum flattening (prep/continuum.py) on real PHOENIX spectra and on injected continua."""

from __future__ import annotations

import numpy as np
import pytest

from blase_specutils.prep.continuum import ContinuumFit, flatten_continuum, planck_lambda

TEFF = 3900.0


def _phoenix(data_dir, band):
    table = np.loadtxt(data_dir / "phoenix" / f"{band}_band_test_sample_lte03900-PHOENIX-ACES.dat")
    return table[:, 0] * 1e4, table[:, 1]  # vacuum micron -> Å


@pytest.fixture(scope="module", params=["Z", "Y"])
def band_fit(request, data_dir):
    wavelength, flux = _phoenix(data_dir, request.param)
    return request.param, wavelength, flux, flatten_continuum(wavelength, flux, teff=TEFF)


def test_real_phoenix_continuum_is_flat_upper_envelope(band_fit):
    band, wavelength, flux, fit = band_fit
    assert isinstance(fit, ContinuumFit)
    flat = fit.flat_flux
    # measured (Z, Y): 99th percentile 0.9994, 1.0001; fraction above 1.02: 0, 0; max 1.0031, 1.0010
    assert abs(np.percentile(flat, 99) - 1.0) < 0.01, band
    assert np.mean(flat > 1.02) < 0.01, band
    # the envelope, not the mean: the median pixel sits well below the continuum in a line-rich star
    assert np.median(flat) < 0.995, band  # measured: Z 0.985, Y 0.993 (a mean fit would give ~1.0)
    assert fit.anchor_used.sum() >= 0.8 * fit.anchor_used.size, band


def test_round_trip_flux_equals_flat_times_continuum(band_fit):
    _, _, flux, fit = band_fit
    np.testing.assert_allclose(
        fit.flat_flux * fit.continuum, flux, rtol=4 * np.finfo(float).eps, atol=0
    )
    np.testing.assert_allclose(
        fit.continuum, fit.blackbody * fit.smooth, rtol=4 * np.finfo(float).eps
    )
    # the stored coefficients reproduce the continuum on the grid
    np.testing.assert_allclose(fit.evaluate(fit.wavelength), fit.continuum, rtol=1e-12)


def test_spline_method_is_also_flat(data_dir):
    wavelength, flux = _phoenix(data_dir, "Z")
    fit = flatten_continuum(
        wavelength, flux, teff=TEFF, method="spline", knot_spacing_angstrom=50.0
    )
    assert abs(np.percentile(fit.flat_flux, 99) - 1.0) < 0.01
    assert np.mean(fit.flat_flux > 1.02) < 0.01
    np.testing.assert_allclose(fit.evaluate(wavelength), fit.continuum, rtol=1e-12)


def test_planck_matches_astropy_blackbody():
    from astropy import units as u
    from astropy.modeling.physical_models import BlackBody

    wavelength = np.geomspace(1000.0, 50000.0, 400)
    for teff in (3000.0, 3900.0, 10000.0):
        ours = planck_lambda(wavelength, teff)
        model = BlackBody(temperature=teff * u.K, scale=1.0 * u.erg / (u.cm**2 * u.AA * u.s * u.sr))
        reference = model(wavelength * u.AA).to_value(u.erg / (u.cm**2 * u.AA * u.s * u.sr))
        np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=0)
        # shape alone (what flattening uses), also to 1e-10
        np.testing.assert_allclose(ours / ours[0], reference / reference[0], rtol=1e-10)


def test_planck_does_not_overflow_and_validates():
    values = planck_lambda(np.array([10.0, 1e3, 1e8]), 50.0)  # x up to ~3e4 at 10 Å
    assert np.all(np.isfinite(values)) and np.all(values >= 0)
    with pytest.raises(ValueError, match="teff must be finite and > 0"):
        planck_lambda(5000.0, 0.0)
    with pytest.raises(ValueError, match="wavelengths must be finite and > 0"):
        planck_lambda(np.array([5000.0, -1.0]), 5000.0)


def _injected_spectrum(seed=1, n_lines=3000):
    """Known smooth continuum times Gaussian absorption lines on 8400-9400 Å.

    The continuum is a cubic times a gentle non-polynomial modulation (so no
    fit reproduces it exactly); 3000 lines in 1000 Å is a Z-band-like density.
    """
    rng = np.random.default_rng(seed)
    wavelength = np.arange(8400.0, 9400.0, 0.02)
    x = (wavelength - 8900.0) / 500.0
    continuum = (
        2.0e5 * (1.0 + 0.15 * x - 0.08 * x**2 + 0.05 * x**3) * np.exp(0.03 * np.sin(2.5 * x))
    )
    centres = rng.uniform(8400.0, 9400.0, n_lines)
    depths = rng.uniform(0.02, 0.8, n_lines)
    sigmas = rng.uniform(0.03, 0.15, n_lines)
    lines = np.ones_like(wavelength)
    for centre, depth, sigma in zip(centres, depths, sigmas):
        near = np.abs(wavelength - centre) < 8 * sigma
        lines[near] *= 1.0 - depth * np.exp(-0.5 * ((wavelength[near] - centre) / sigma) ** 2)
    return wavelength, continuum, lines


@pytest.mark.parametrize("method", ["peaks", "spline"])
@pytest.mark.parametrize("n_lines", [3000, 5000])
def test_injected_continuum_is_recovered(method, n_lines):
    wavelength, continuum, lines = _injected_spectrum(n_lines=n_lines)
    fit = flatten_continuum(wavelength, continuum * lines, method=method)
    relative = np.abs(fit.continuum / continuum - 1.0)
    # measured max over all pixels: 2.2e-5 (3000 lines), 2.5e-4 (5000 lines), both methods
    assert relative.max() < 0.005
    assert fit.anchor_used.sum() < fit.anchor_used.size  # line-blanketed windows were rejected
    np.testing.assert_allclose(fit.flat_flux, lines, atol=0.005)


def test_injected_continuum_times_blackbody_is_recovered():
    wavelength, continuum, lines = _injected_spectrum(seed=2)
    blackbody = planck_lambda(wavelength, TEFF)
    flux = 1e-3 * blackbody * (continuum / continuum.mean()) * lines
    fit = flatten_continuum(wavelength, flux, teff=TEFF)
    truth = 1e-3 * blackbody * continuum / continuum.mean()
    # measured: 6e-5
    assert np.max(np.abs(fit.continuum / truth - 1.0)) < 0.005


def test_short_range_uses_fewer_anchors_and_low_order():
    wavelength, continuum, lines = _injected_spectrum(seed=3, n_lines=600)
    keep = (wavelength > 8800.0) & (wavelength < 8840.0)  # 40 Å
    fit = flatten_continuum(wavelength[keep], (continuum * lines)[keep])
    assert fit.poly_order == 3 and fit.window_angstrom < 8.0
    # measured: 8e-5
    assert np.max(np.abs(fit.continuum / continuum[keep] - 1.0)) < 0.005


def test_strongly_curved_short_range_is_followed():
    """A 100 Å slice whose continuum is a steep parabola (0.5 to 1.1): a straight
    line was the old default there and missed it by 30 % at the ends."""
    wavelength, _, lines = _injected_spectrum(seed=4, n_lines=300)
    keep = (wavelength > 8600.0) & (wavelength < 8700.0)
    x = (wavelength[keep] - 8650.0) / 50.0
    continuum = 1.0 + 0.3 * x - 0.2 * x**2
    fit = flatten_continuum(wavelength[keep], continuum * lines[keep])
    assert fit.poly_order == 3
    # measured: 2e-14 (Gaussian lines, no wings: the anchors reach the continuum)
    assert np.max(np.abs(fit.continuum / continuum - 1.0)) < 1e-6


def test_method_none_returns_ones_for_flat_spectra():
    wavelength = np.linspace(10000.0, 10100.0, 500)
    transmission = 1.0 - 0.5 * np.exp(-0.5 * ((wavelength - 10050.0) / 0.2) ** 2)
    for method in (None, "none"):
        fit = flatten_continuum(wavelength, transmission, method=method)
        np.testing.assert_array_equal(fit.continuum, np.ones_like(wavelength))
        np.testing.assert_array_equal(fit.flat_flux, transmission)
        assert fit.blackbody is None
    with pytest.raises(ValueError, match="teff has no effect"):
        flatten_continuum(wavelength, transmission, method=None, teff=3900.0)


@pytest.mark.parametrize(
    ("wavelength", "flux", "kwargs", "message"),
    [
        ([1.0, 2.0, np.nan, 4.0], [1.0, 1.0, 1.0, 1.0], {}, "wavelength contains NaN or inf"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, np.inf, 1.0, 1.0], {}, "flux contains NaN or inf"),
        ([1.0, 3.0, 2.0, 4.0], [1.0, 1.0, 1.0, 1.0], {}, "sorted"),
        ([1.0, 2.0, 2.0, 4.0], [1.0, 1.0, 1.0, 1.0], {}, "duplicated"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 1.0, 1.0], {}, "negative"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0], {}, "length mismatch"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], {"teff": 0.0}, "teff must be finite and > 0"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], {"teff": -5.0}, "teff must be finite and > 0"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], {"method": "gp"}, "method must be one of"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], {"window_angstrom": 0.0}, "window_angstrom"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], {"poly_order": 3}, "anchor windows"),
    ],
)
def test_bad_input_raises(wavelength, flux, kwargs, message):
    with pytest.raises(ValueError, match=message):
        flatten_continuum(np.asarray(wavelength), np.asarray(flux), **kwargs)
