"""Broad intrinsic lines (hydrogen-like) must not drive v sin i: ``broad_lines="mask"``.

The star's broad line is 30 % wider than the template's with the same equivalent width
(shallower): the mismatch a rotational broadening can imitate. The observation is made
by the independent generator of :mod:`blase_specutils.testing`.
"""

import warnings

import numpy as np
import pytest
import torch

import blase_specutils as bs
from blase_specutils.core.lineforest import LineForest
from blase_specutils.fitting import FitQualityWarning
from blase_specutils.fitting.broad_lines import broad_line_index, broad_line_pixels
from blase_specutils.testing import observe

C_KMS = 299792.458
RV, VSINI = 15.0, 20.0
BROAD_CENTER = 10002.0
BROAD_GAMMA = 16.5  # Lorentzian HWHM, Å: FWHM 33 Å ≈ 990 km/s


def forest(n_narrow=30, broad_gamma=BROAD_GAMMA, with_broad=True, seed=3):
    rng = np.random.default_rng(seed)
    centers = np.sort(rng.uniform(9895.0, 10150.0, n_narrow))
    centers[0], centers[-1] = 9885.0, 10160.0  # the clone spans the data
    amplitude = rng.uniform(0.005, 0.02, n_narrow)  # depths 6–25 %
    sigma, gamma = np.full(n_narrow, 0.05), np.full(n_narrow, 0.03)
    if with_broad:
        # depth 0.4 in the template; the same area (equivalent width) whatever the width
        centers = np.r_[centers, BROAD_CENTER]
        amplitude = np.r_[amplitude, 0.4 * np.pi * BROAD_GAMMA]
        sigma, gamma = np.r_[sigma, 0.05], np.r_[gamma, broad_gamma]
    return LineForest(centers, amplitude, sigma, gamma, mode="linear", trainable=())


def observation(truth, snr=300.0):
    wl = np.exp(np.arange(np.log(9850.0), np.log(10150.0), 0.2 / C_KMS))
    with torch.no_grad():
        flux = truth.dense_flux(torch.as_tensor(wl)).numpy()
    pixels = 9900.0 * np.exp(np.arange(3800) * 1.9 / C_KMS)  # 7200 km/s, HPF-like pixels
    return observe(wl, flux, pixels, rv=RV, vsini=VSINI, resolving_power=55000, snr=snr, seed=2)


def run(template, obs, **kw):
    kw.setdefault("epochs", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bs.fit(
            obs.wavelength, obs.flux, obs.uncertainty, stellar=template, progress=False,
            **kw,
        )  # fmt: skip


@pytest.fixture(scope="module")
def mismatched():
    return observation(forest(broad_gamma=1.3 * BROAD_GAMMA))


def test_broad_lines_found_by_width_and_masked_around_the_shifted_centre():
    template = forest()
    index = broad_line_index(template, 200.0)
    assert index.tolist() == [template.n_lines - 1]
    assert broad_line_index(template, 2000.0).size == 0  # the line is ~990 km/s wide
    # as wide but 0.5 % deep (a clone's pseudo-continuum mop-up): not broad
    props = template.line_properties()
    props["amplitude"][-1] = 0.005 * np.pi * BROAD_GAMMA
    shallow = LineForest(
        props["center"], props["amplitude"], props["sigma"], props["gamma"], trainable=()
    )
    assert broad_line_index(shallow, 200.0).size == 0
    assert broad_line_index(shallow, 200.0, min_depth=0.001).tolist() == index.tolist()
    w = np.linspace(9900.0, 10100.0, 2001)
    (inside,) = broad_line_pixels([w], template, index, rv=300.0, half_width_fwhm=1.0)
    centre, fwhm = BROAD_CENTER * (1 + 300.0 / C_KMS), 2 * BROAD_GAMMA * (1 + 300.0 / C_KMS)
    expected = np.abs(w - centre) <= 0.999 * fwhm
    assert np.all(inside[expected]) and not np.any(inside[np.abs(w - centre) > 1.001 * fwhm])
    with pytest.raises(ValueError, match="broad_fwhm_kms"):
        broad_line_index(template, -1.0)


def test_keep_lets_vsini_absorb_the_broad_line_and_mask_recovers_it(mismatched):
    template = forest()
    kept = run(template, mismatched, broad_lines="keep")
    # the baseline: rotation imitates the wider line (v sin i hundreds of km/s)
    assert kept.vsini.value > 200.0
    masked = run(template, mismatched, broad_lines="mask")
    vsini, s_vsini = masked.vsini.value, masked.vsini_uncertainty.value
    rv, s_rv = masked.rv.value, masked.rv_uncertainty.value
    assert abs(vsini - VSINI) < 3 * s_vsini and s_vsini < 2.0
    assert abs(rv - RV) < 3 * s_rv and s_rv < 1.5
    info = masked.meta["broad_lines"]
    assert info["index"] == [template.n_lines - 1]
    assert info["fwhm_kms"][0] == pytest.approx(2 * BROAD_GAMMA / BROAD_CENTER * C_KMS, rel=1e-3)
    # ±1.5 FWHM of 990 km/s in 1.9 km/s pixels
    assert info["n_masked_pixels"] == pytest.approx(3 * 990 / 1.9, rel=0.03)
    # independently: the narrow lines' shifted centres on the pixels, outside ±1.5 FWHM
    shifted = template.line_properties()["center"][:-1] * (1 + masked.rv.value / C_KMS)
    on = (shifted > mismatched.wavelength[0]) & (shifted < mismatched.wavelength[-1])
    outside = np.abs(shifted - BROAD_CENTER * (1 + masked.rv.value / C_KMS)) > 3 * BROAD_GAMMA
    assert info["n_narrow_lines"] == np.sum(on & outside) >= 10
    assert info["handling"] == "mask"
    # an applied mask is not a flag: nothing about the result is suspect
    assert not any(name.startswith("broad") for name in masked.flags), masked.flags
    assert "broad_lines" not in kept.meta
    default = run(template, mismatched, epochs=0, global_epochs=5)
    assert "broad_lines" not in default.meta  # "keep" is the default


def test_no_broad_lines_is_bit_identical_to_keep():
    template = forest(with_broad=False)
    obs = observation(template)
    masked = run(template, obs, epochs=20, broad_lines="mask")
    kept = run(template, obs, epochs=20, broad_lines="keep")
    assert masked.rv.value == kept.rv.value
    assert masked.vsini.value == kept.vsini.value
    assert np.array_equal(masked.model_flux, kept.model_flux)
    assert "broad_lines" not in masked.meta


def test_too_few_narrow_lines_left_is_flagged_and_warned():
    template = forest(n_narrow=3)
    obs = observation(template)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = bs.fit(
            obs.wavelength, obs.flux, obs.uncertainty, stellar=template, progress=False,
            epochs=0, global_epochs=5, broad_lines="mask",
        )  # fmt: skip
    assert any(
        issubclass(w.category, FitQualityWarning) and "narrow line" in str(w.message)
        for w in caught
    )
    assert "broad_lines_dominate" in result.flags
    info = result.meta["broad_lines"]
    # too few narrow lines to measure anything: the broad line is kept, and said so
    assert info["n_narrow_lines"] < 10 and info["n_masked_pixels"] == 0
    assert info["handling"].startswith("keep")
    kept = run(template, obs, global_epochs=5, broad_lines="keep")
    assert result.vsini.value == kept.vsini.value and result.rv.value == kept.rv.value


def test_bad_broad_line_options_are_errors():
    template = forest(n_narrow=5)
    obs = observation(template)
    with pytest.raises(ValueError, match="broad_lines must be one of"):
        bs.fit(obs.wavelength, obs.flux, stellar=template, broad_lines="drop", progress=False)
    with pytest.raises(ValueError, match="broad_fwhm_kms"):
        bs.fit(obs.wavelength, obs.flux, stellar=template, broad_fwhm_kms=0.0, progress=False)
