"""astro/telluric_correction.py: correct_tellurics with the clone learned on a standard.

The reference transmission in these tests is made by ``blase_specutils.testing.observe``
(its own 0.1 km/s grid, scipy Gaussian filter, cumulative-integral pixel binning), not by
the forward model, from the trained telluric forest's dense flux raised to its scale.
"""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
import pytest
import torch
from astropy.nddata import StdDevUncertainty
from specutils import Spectrum, SpectrumList

import blase_specutils
from blase_specutils.astro.results import read_fit, telluric_settings
from blase_specutils.cloning import clone
from blase_specutils.fitting import fit
from blase_specutils.testing import observe

LO, HI, N_PIX = 8505.0, 8550.0, 1200
R_INSTRUMENT = 60000.0
TELLURIC_LINES = (8512.3, 8519.0, 8531.7, 8538.2, 8547.9)
TELLURIC_DEPTHS = (0.9, 0.5, 0.95, 0.3, 0.7)


def _telluric_truth(wl):
    flux = np.ones_like(wl)
    for c, d in zip(TELLURIC_LINES, TELLURIC_DEPTHS):
        flux *= 1 - d * np.exp(-0.5 * ((wl - c) / 0.1) ** 2)
    return flux


@pytest.fixture(scope="module")
def standard():
    """An A0V-like standard (two broad, shallow stellar lines) × tellurics: its fit, the
    stellar and the telluric clones."""
    wl = np.arange(8495.0, 8560.0, 0.01)
    star = (1 - 0.2 * np.exp(-0.5 * ((wl - 8525.0) / 0.6) ** 2)) * (
        1 - 0.15 * np.exp(-0.5 * ((wl - 8541.0) / 0.5) ** 2)
    )
    stellar = clone(wl, star, flatten=False, prominence=0.02, epochs=10, progress=False)
    telluric = clone(
        wl, _telluric_truth(wl), flatten=False, prominence=0.05, epochs=10, progress=False
    )
    pixels = np.linspace(LO, HI, N_PIX)
    joint = observe(
        wl, star * _telluric_truth(wl), pixels, rv=0.0, vsini=0.01,
        resolving_power=R_INSTRUMENT, snr=300.0, seed=1,
    )
    result = fit(
        pixels, joint.flux, joint.uncertainty, stellar=stellar, telluric=telluric,
        rv=0.0, rv_search=10.0, vsini=0.0, fit_vsini=False, resolving_power=R_INSTRUMENT,
        epochs=5, global_epochs=5, progress=False,
    )
    return result, stellar, telluric


def _reference_transmission(result, pixels, factor=1.0):
    """Independent observation of T^(scale·factor) of the fit's trained telluric forest."""
    settings = telluric_settings(result)
    grid = np.arange(LO - 3.0, HI + 3.0, 0.002)
    with torch.no_grad():
        dense = result.telluric.dense_flux(torch.as_tensor(grid)).double().numpy()
    fine = dense ** (np.exp(settings["ln_scale"]) * factor)
    return observe(
        grid, fine, pixels, rv=0.0, vsini=0.01, resolving_power=settings["resolving_power"],
        snr=1e12, step_kms=0.05,
    ).noiseless


def _science(result, factor=1.0, sigma=0.003, seed=7, pixels=None):
    pixels = np.linspace(LO + 1.0, HI - 1.0, 1000) if pixels is None else pixels
    truth = 2.0 * (1.0 + 0.05 * (pixels - pixels.mean()) / np.ptp(pixels))
    t_ref = _reference_transmission(result, pixels, factor)
    rng = np.random.default_rng(seed)
    noise = sigma * 2.0 * np.ones_like(pixels)
    flux = truth * t_ref + rng.normal(size=pixels.size) * noise
    spectrum = Spectrum(
        spectral_axis=pixels * u.AA, flux=flux * u.Jy,
        uncertainty=StdDevUncertainty(noise * u.Jy),
    )
    return spectrum, truth, t_ref


def test_public_name_and_lazy_import():
    assert blase_specutils.correct_tellurics.__module__ == (
        "blase_specutils.astro.telluric_correction"
    )
    assert "correct_tellurics" in blase_specutils.__all__


def test_transmission_matches_the_fit_and_an_independent_observation(standard):
    result, *_ = standard
    data = Spectrum(
        spectral_axis=result.wavelength * u.AA, flux=result.flux * u.dimensionless_unscaled,
        uncertainty=StdDevUncertainty(result.uncertainty),
    )
    t = blase_specutils.correct_tellurics(data, result).meta["telluric_transmission"]
    # the forward model's own telluric at the standard's pixels (float32 rounding apart)
    assert np.max(np.abs(t - result.telluric_flux)) < 1e-5
    t_ref = _reference_transmission(result, result.wavelength)
    assert t.min() < 0.3  # deep lines are in there
    assert np.max(np.abs(t - t_ref)) < 2e-3


def test_injection_round_trip(standard):
    result, *_ = standard
    science, truth, t_ref = _science(result)
    out = blase_specutils.correct_tellurics(science, result, min_transmission=0.3)
    t = out.meta["telluric_transmission"]
    assert isinstance(out, Spectrum)
    # mask exactly where T < threshold, and it catches the saturated lines
    np.testing.assert_array_equal(out.mask, t < 0.3)
    assert 3 <= out.mask.sum() < 200
    assert out.meta["telluric_correction"]["n_masked_telluric"] == out.mask.sum()
    # uncertainties propagated as σ / T exactly, flux as F / T exactly
    sigma_in = science.uncertainty.array
    np.testing.assert_array_equal(out.uncertainty.array, sigma_in / t)
    np.testing.assert_array_equal(out.flux.value, science.flux.value / t)
    assert out.flux.unit == u.Jy
    # corrected ≈ the injected spectrum within the noise
    good = ~out.mask
    pull = (out.flux.value - truth) / out.uncertainty.array
    chi2 = float(np.mean(pull[good] ** 2))
    assert 0.85 < chi2 < 1.2, chi2
    # without correction the telluric lines are far outside the noise
    raw = (science.flux.value - truth) / sigma_in
    assert np.mean(raw[good] ** 2) > 20


def test_airmass_ratio_two_is_the_squared_transmission(standard):
    result, *_ = standard
    science, _, _ = _science(result)
    t1 = blase_specutils.correct_tellurics(science, result).meta["telluric_transmission"]
    out = blase_specutils.correct_tellurics(science, result, airmass_ratio=2.0)
    t2 = out.meta["telluric_transmission"]
    pixels = science.spectral_axis.to_value(u.AA)
    assert np.max(np.abs(t2 - _reference_transmission(result, pixels, 2.0))) < 2e-3
    # (T²)⊛G ≠ (T⊛G)² for unresolved lines, but close where the lines are resolved
    assert np.max(np.abs(t2 - t1**2)) < 0.1
    assert np.max(np.abs(t2 - t1)) > 0.1
    assert out.meta["telluric_correction"]["factor"] == 2.0
    assert np.all(t2 <= t1 + 1e-6)


def test_refit_scale_recovers_an_injected_optical_depth(standard):
    result, *_ = standard
    science, truth, _ = _science(result, factor=1.6, seed=3)
    held = blase_specutils.correct_tellurics(science, result)
    out = blase_specutils.correct_tellurics(science, result, refit_scale=True)
    info = out.meta["telluric_correction"]
    assert info["refit_scale"] and abs(info["factor"] - 1.6) < 0.03, info
    good = ~out.mask
    chi2 = np.mean(((out.flux.value - truth) / out.uncertainty.array)[good] ** 2)
    chi2_held = np.mean(((held.flux.value - truth) / held.uncertainty.array)[~held.mask] ** 2)
    assert chi2 < 1.3 and chi2_held > 3 * chi2


def test_spectrum_list_and_descending_axis(standard):
    result, *_ = standard
    first, _, _ = _science(result, pixels=np.linspace(LO + 1, 8525.0, 500))
    second, _, _ = _science(result, pixels=np.linspace(8526.0, HI - 1, 500), seed=2)
    out = blase_specutils.correct_tellurics(SpectrumList([first, second]), result)
    assert isinstance(out, SpectrumList) and len(out) == 2
    for one, inp in zip(out, (first, second)):
        alone = blase_specutils.correct_tellurics(inp, result)
        np.testing.assert_allclose(one.flux.value, alone.flux.value, rtol=1e-12)
    # a descending axis gets the transmission in its own pixel order
    rev = Spectrum(
        spectral_axis=first.spectral_axis[::-1], flux=first.flux[::-1],
        uncertainty=StdDevUncertainty(first.uncertainty.array[::-1] * u.Jy),
    )
    t_rev = blase_specutils.correct_tellurics(rev, result).meta["telluric_transmission"]
    t = out[0].meta["telluric_transmission"]
    np.testing.assert_allclose(t_rev[::-1], t, rtol=0, atol=1e-6)


def test_save_load_round_trip(standard, tmp_path):
    result, *_ = standard
    path = result.write(tmp_path / "standard.asdf")
    loaded = read_fit(path)
    for name in ("center_ref", "center_shift", "ln_amplitude", "ln_sigma", "ln_gamma", "sign"):
        a, b = getattr(result.telluric, name), getattr(loaded.telluric, name)
        assert a.dtype == b.dtype and torch.equal(a.detach(), b.detach()), name
    assert loaded.telluric.mode == result.telluric.mode
    assert telluric_settings(loaded) == telluric_settings(result)
    science, _, _ = _science(result)
    direct = blase_specutils.correct_tellurics(science, result, airmass_ratio=1.3)
    for source in (loaded, path, str(path)):
        again = blase_specutils.correct_tellurics(science, source, airmass_ratio=1.3)
        np.testing.assert_array_equal(
            again.meta["telluric_transmission"], direct.meta["telluric_transmission"]
        )
    # a loaded fit written again keeps its telluric clone
    second = read_fit(loaded.write(tmp_path / "again.asdf"))
    assert torch.equal(second.telluric.ln_amplitude, loaded.telluric.ln_amplitude)


def test_errors(standard):
    result, stellar, _ = standard
    science, _, _ = _science(result)
    outside, _, _ = _science(result, pixels=np.linspace(8540.0, 8560.0, 300))
    with pytest.raises(ValueError, match=r"learned only over 8505\.000–8550\.000 Å"):
        blase_specutils.correct_tellurics(outside, result)
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="airmass_ratio"):
            blase_specutils.correct_tellurics(science, result, airmass_ratio=bad)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="min_transmission"):
            blase_specutils.correct_tellurics(science, result, min_transmission=bad)
    with pytest.raises(TypeError, match="Spectrum"):
        blase_specutils.correct_tellurics(science.flux.value, result)
    with pytest.raises(TypeError, match="telluric_fit"):
        blase_specutils.correct_tellurics(science, object())
    pixels = np.linspace(LO, HI, 400)
    wl = np.arange(8495.0, 8560.0, 0.01)
    star = stellar.evaluate(wl)
    obs = observe(wl, star, pixels, rv=0.0, vsini=0.01, resolving_power=R_INSTRUMENT, seed=4)
    with warnings.catch_warnings():  # two epochs: the fit's quality is beside the point
        warnings.simplefilter("ignore")
        no_telluric = fit(
            pixels, obs.flux, obs.uncertainty, stellar=stellar, rv=0.0, rv_search=10.0,
            vsini=0.0, fit_vsini=False, resolving_power=R_INSTRUMENT, epochs=2,
            global_epochs=2, progress=False,
        )
    with pytest.raises(ValueError, match="no telluric component"):
        blase_specutils.correct_tellurics(science, no_telluric)


def test_a_file_without_the_telluric_clone_says_so(standard, tmp_path):
    import asdf

    result, *_ = standard
    path = result.write(tmp_path / "standard.asdf")
    with asdf.open(path, lazy_load=False, memmap=False) as af:
        tree = dict(af.tree)
    assert "telluric_lines" in tree
    del tree["telluric_lines"]  # as in a file written before the clone was stored
    old = tmp_path / "old.asdf"
    asdf.AsdfFile(tree).write_to(old)
    loaded = read_fit(old)
    assert loaded.has_telluric and loaded.telluric is None
    science, _, _ = _science(result)
    with pytest.raises(ValueError, match="holds no trained telluric clone"):
        blase_specutils.correct_tellurics(science, loaded)


def test_a_fitted_telluric_shift_is_applied(standard):
    _, stellar, telluric = standard
    pixels = np.linspace(LO, HI, 800)
    wl = np.arange(8495.0, 8560.0, 0.01)
    shifted = _telluric_truth(wl / (1 + 0.8 / 299792.458))  # the sky 0.8 km/s off
    obs = observe(wl, shifted, pixels, rv=0.0, vsini=0.01, resolving_power=R_INSTRUMENT, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moved = fit(
            pixels, obs.flux, obs.uncertainty, stellar=stellar, telluric=telluric,
            rv=0.0, rv_search=5.0, vsini=0.0, fit_vsini=False, fit_telluric_shift=True,
            resolving_power=R_INSTRUMENT, epochs=2, global_epochs=5, progress=False,
        )
    settings = telluric_settings(moved)
    assert settings["shift_applied"] and settings["shift_kms"] != 0.0
    data = Spectrum(
        spectral_axis=pixels * u.AA, flux=obs.flux * u.one,
        uncertainty=StdDevUncertainty(obs.uncertainty),
    )
    t = blase_specutils.correct_tellurics(data, moved).meta["telluric_transmission"]
    assert np.max(np.abs(t - moved.telluric_flux)) < 1e-5
