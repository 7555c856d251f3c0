"""Broad lines (the hydrogen lines of an A star): envelope continuum, untruncated wings.

A synthetic spectrum with one very broad Lorentzian line (FWHM 20 Å) and a few narrow
Gaussian lines; the references are the analytic Lorentzian and
:func:`scipy.special.voigt_profile`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import voigt_profile

from blase_specutils import clone, load_clone
from blase_specutils.cloning import forest_from_table, forest_to_table
from blase_specutils.core.lineforest import MAX_HALF_WIDTH, LineForest
from blase_specutils.core.profiles import wing_correction
from blase_specutils.prep.continuum import flatten_continuum

BROAD_CENTER = 10000.0
BROAD_GAMMA = 10.0  # HWHM, Å: FWHM 20 Å (600 km/s)
BROAD_DEPTH = 0.4
NARROW = ((9930.0, 0.3), (9975.0, 0.25), (10060.0, 0.35), (10130.0, 0.2))  # (centre, depth)
NARROW_SIGMA = 0.15


def lorentzian(wl, center, gamma):
    return (gamma / math.pi) / ((wl - center) ** 2 + gamma**2)


def synthetic(wl):
    """Normalised flux: (1 − a L) × ∏ (1 − d G) and the broad line's a L alone."""
    area = BROAD_DEPTH * math.pi * BROAD_GAMMA
    broad = area * lorentzian(wl, BROAD_CENTER, BROAD_GAMMA)
    # the analytic Lorentzian is scipy's Voigt with no Gaussian part
    np.testing.assert_allclose(
        broad, area * voigt_profile(wl - BROAD_CENTER, 0.0, BROAD_GAMMA), rtol=1e-12
    )
    flux = 1.0 - broad
    for center, depth in NARROW:
        flux = flux * (1.0 - depth * np.exp(-0.5 * ((wl - center) / NARROW_SIGMA) ** 2))
    return flux, broad


WL = np.arange(9800.0, 10200.0, 0.05)
FLUX, BROAD = synthetic(WL)


@pytest.fixture(scope="module")
def broad_clone():
    torch.manual_seed(0)
    return clone(WL, FLUX, flatten=False, broad_lines=True, epochs=300, progress=False)


@pytest.fixture(scope="module")
def capped_clone():
    torch.manual_seed(0)
    return clone(WL, FLUX, flatten=False, broad_lines=False, epochs=300, progress=False)


def test_broad_clone_reproduces_the_spectrum(broad_clone):
    assert broad_clone.meta["broad_lines"] is True
    assert broad_clone.meta["n_broad_lines"] == 1
    # the windows may span the whole range
    assert broad_clone.forest.max_half_width == pytest.approx(WL[-1] - WL[0])
    assert broad_clone.rms < 0.002, broad_clone.rms
    assert np.max(np.abs(broad_clone.residual)) < 0.01


def test_broad_wings_are_not_truncated(broad_clone, capped_clone):
    # far wings, away from every narrow line: the broad line alone, 0.2–1.6 % deep
    far = (np.abs(WL - BROAD_CENTER) > 40.0) & (np.abs(WL - BROAD_CENTER) < 150.0)
    for center, _ in NARROW:
        far &= np.abs(WL - center) > 2.0
    wing = 1.0 - FLUX[far]
    assert wing.min() > 1.5e-3 and wing.max() > 1e-2
    err = np.abs(broad_clone.residual[far])
    assert err.max() < 1.5e-3, err.max()
    # the broad line in the clone, evaluated alone: a Lorentzian wing, no step
    props = broad_clone.forest.line_properties()
    k = int(np.argmax(props["fwhm"]))
    single = LineForest(
        [props["center"][k]], [props["amplitude"][k]], [props["sigma"][k]],
        [props["gamma"][k]], dtype=torch.float64,
    )  # fmt: skip
    single.max_half_width = broad_clone.forest.max_half_width
    with torch.no_grad():
        alone = 1.0 - single(single.make_layout(WL)).numpy()
    np.testing.assert_allclose(alone[far], BROAD[far], atol=1.5e-3)
    # at 50 Å and beyond the capped clone's window ends in a step: its far-wing
    # residual is several times the broad clone's
    beyond = far & (np.abs(WL - BROAD_CENTER) > MAX_HALF_WIDTH + 5.0)
    capped = np.abs(capped_clone.residual[beyond]).max()
    assert capped > 3.0 * np.abs(broad_clone.residual[beyond]).max()
    assert capped > 3e-3


def test_automatic_detection_and_envelope_continuum():
    # a tilted continuum (±5 %) over the same lines: the robust fit runs through the wings
    continuum = 2.0 + 5e-4 * (WL - 10000.0)
    observed = FLUX * continuum
    torch.manual_seed(0)
    result = clone(WL, observed, epochs=200, progress=False)
    assert result.meta["broad_lines"] is True
    assert result.meta["continuum_method"] == "envelope"
    # the flattened target never rises above the continuum, the continuum is the truth
    # (the wings still remove 0.1 % at the ends) and the clone times it is the input
    assert np.max(result.target_flux) < 1.0 + 1e-3
    np.testing.assert_allclose(result.continuum / continuum, 1.0, atol=3e-3)
    assert result.rms < 0.002, result.rms
    absolute = result.model_flux * result.continuum
    assert np.max(np.abs(absolute / observed - 1.0)) < 0.02
    assert np.sqrt(np.mean((absolute / observed - 1.0) ** 2)) < 0.003
    before = clone(WL, observed, epochs=200, progress=False, broad_lines=False)
    assert before.meta["continuum_method"] == "peaks"
    assert np.max(before.target_flux) > 1.002  # the flattening this replaces
    assert np.max(np.abs(before.continuum / continuum - 1.0)) > 0.01
    assert before.rms > 1.5 * result.rms


def test_narrow_lines_keep_the_default():
    # no broad line: the same clone as with broad_lines=False, bit for bit
    flux = np.ones_like(WL)
    for center, depth in NARROW:
        flux *= 1.0 - depth * np.exp(-0.5 * ((WL - center) / NARROW_SIGMA) ** 2)
    flux *= 1.0 + 1e-4 * (WL - 10000.0)
    a = clone(WL, flux, epochs=50, progress=False)
    b = clone(WL, flux, epochs=50, progress=False, broad_lines=False)
    assert a.meta["broad_lines"] is False and a.meta["n_broad_lines"] == 0
    assert a.forest.max_half_width == MAX_HALF_WIDTH
    np.testing.assert_array_equal(a.model_flux, b.model_flux)
    np.testing.assert_array_equal(a.continuum, b.continuum)


def test_save_load_round_trip(broad_clone, tmp_path):
    path = broad_clone.save(tmp_path / "broad.ecsv")
    loaded = load_clone(path)
    assert loaded.forest.max_half_width == broad_clone.forest.max_half_width
    assert loaded.meta["broad_lines"] is True
    np.testing.assert_array_equal(loaded.evaluate(WL), broad_clone.evaluate(WL))
    np.testing.assert_array_equal(loaded.model_flux, broad_clone.model_flux)
    # a damaged cap is an error, not a silently different model
    table = broad_clone.lines
    table.meta["max_half_width"] = -1.0
    with pytest.raises(ValueError, match="max_half_width"):
        forest_from_table(table)


def test_envelope_continuum_against_the_truth():
    wl = np.arange(8600.0, 8800.0, 0.05)
    truth = 1.3 + 4e-4 * (wl - 8700.0) - 3e-6 * (wl - 8700.0) ** 2
    lines = np.ones_like(wl)
    for center in (8650.0, 8750.0):  # two Paschen-like lines, 100 Å apart
        lines *= 1.0 - 0.3 * math.pi * 5.0 * lorentzian(wl, center, 5.0)
    envelope = flatten_continuum(wl, truth * lines, method="envelope", poly_order=2)
    robust = flatten_continuum(wl, truth * lines, poly_order=2)
    assert envelope.method == "envelope"
    # through the tops of the spectrum: the truth times the highest the lines reach
    np.testing.assert_allclose(envelope.continuum / truth, np.max(lines), atol=4e-3)
    np.testing.assert_allclose(envelope.evaluate(wl), envelope.continuum, rtol=1e-12)
    assert np.max(envelope.flat_flux) < 1.0 + 1e-3
    assert np.max(robust.flat_flux) > np.max(envelope.flat_flux) + 2e-3
    with pytest.raises(ValueError, match="envelope_tolerance"):
        flatten_continuum(wl, truth * lines, method="envelope", envelope_tolerance=0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"broad_lines": "yes"}, "broad_lines"),
        ({"broad_fwhm_kms": -5.0}, "broad_fwhm_kms"),
        ({"broad_fwhm_kms": float("nan")}, "broad_fwhm_kms"),
    ],
)
def test_bad_broad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        clone(WL, FLUX, flatten=False, epochs=0, progress=False, **kwargs)
    with pytest.raises(TypeError, match="wing_correction must be True or False"):
        clone(WL, FLUX, flatten=False, epochs=0, progress=False, wing_correction="no")


# ---------------------------------------------------------------------------
# The wing correction G of Appendix C.4
# ---------------------------------------------------------------------------
def reference_g(dx, alpha, offset, scale):
    """Eq. C6 written out in numpy."""
    return 1.0 + (np.exp(alpha) - 1.0) / (1.0 + np.exp(-(np.abs(dx) - offset) / scale))


def test_wing_correction_formula():
    dx = torch.linspace(-60.0, 60.0, 1201, dtype=torch.float64)
    # alpha = 0: exactly 1 (not merely close)
    g = wing_correction(dx, torch.tensor(0.0, dtype=torch.float64), 5.0, 2.0)
    assert torch.equal(g, torch.ones_like(dx))
    for alpha in (-1.2, 0.4):
        g = wing_correction(dx, torch.tensor(alpha, dtype=torch.float64), 8.0, 1.5).numpy()
        np.testing.assert_allclose(g, reference_g(dx.numpy(), alpha, 8.0, 1.5), rtol=1e-13)
        # core untouched, far wings scaled by e^alpha, half-way at the offset, positive
        assert abs(g[600] - 1.0) < 1e-2 * abs(alpha)
        assert g[0] == pytest.approx(math.exp(alpha), rel=1e-10)
        at_offset = g[np.argmin(np.abs(dx.numpy() - 8.0))]
        assert at_offset == pytest.approx(0.5 * (1.0 + math.exp(alpha)), rel=1e-12)
        assert np.all(g > 0)


def wing_forest(alpha=-0.6, mode="linear"):
    forest = LineForest(
        [9950.0, 10000.0, 10040.0], [0.04, 5.0, 0.03], [0.05, 1.0, 0.04], [0.03, 4.0, 0.02],
        mode=mode, trainable=("amplitude", "sigma", "gamma", "center", "wing"),
        dtype=torch.float64,
    )  # fmt: skip
    forest.max_half_width = 200.0
    forest.set_wings([1], alpha=alpha, offset=12.0, scale=3.0)
    return forest


@pytest.mark.parametrize("mode", ["linear", "log"])
def test_wing_forest_matches_the_dense_reference(mode):
    wl = np.arange(9900.0, 10100.0, 0.1)
    plain = LineForest(
        [9950.0, 10000.0, 10040.0], [0.04, 5.0, 0.03], [0.05, 1.0, 0.04], [0.03, 4.0, 0.02],
        mode=mode, dtype=torch.float64,
    )  # fmt: skip
    zero = wing_forest(0.0, mode)
    with torch.no_grad():
        # alpha = 0: the dense model is the plain forest's, exactly
        assert torch.equal(zero.dense_flux(wl), plain.dense_flux(wl))
        forest = wing_forest(-0.6, mode)
        sparse = forest(forest.make_layout(wl, tolerance=1e-7)).numpy()
        dense = forest.dense_flux(wl).numpy()
    np.testing.assert_allclose(sparse, dense, atol=2e-6)
    # the broad line alone against V · G from scipy's Voigt and eq. C6
    sigma, gamma, area = 1.0, 4.0, 5.0
    dx = wl - 10000.0
    term = area * voigt_profile(dx, sigma, gamma) * reference_g(dx, -0.6, 12.0, 3.0)
    alone = LineForest([10000.0], [area], [sigma], [gamma], mode=mode, profile="voigt",
                       dtype=torch.float64)  # fmt: skip
    alone.set_wings([0], alpha=-0.6, offset=12.0, scale=3.0)
    with torch.no_grad():
        flux = alone.dense_flux(wl).numpy()
    expected = 1.0 - term if mode == "linear" else np.exp(-term)
    np.testing.assert_allclose(flux, expected, atol=1e-6)


def test_wing_gradients_against_finite_differences():
    wl = np.arange(9960.0, 10040.0, 0.2)
    forest = wing_forest(-0.4)
    layout = forest.make_layout(wl, tolerance=1e-7)
    weights = torch.as_tensor(np.cos(0.05 * (wl - 9960.0)))

    def loss():
        return torch.sum(forest(layout) * weights)

    forest.zero_grad()
    loss().backward()
    for name in ("wing_alpha", "ln_wing_offset", "ln_wing_scale", "ln_amplitude"):
        p = getattr(forest, name)
        analytic = p.grad[1].item()
        h = 1e-6
        with torch.no_grad():
            p[1] += h
            up = loss().item()
            p[1] -= 2 * h
            down = loss().item()
            p[1] += h
        numeric = (up - down) / (2 * h)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9), name
        assert abs(analytic) > 1e-4, name  # the parameter does change the model
    # the lines without the correction get no gradient on their (unused) entries
    assert forest.wing_alpha.grad[0] == 0 and forest.wing_alpha.grad[2] == 0


def test_wings_survive_save_load_and_growth(tmp_path):
    forest = wing_forest(-0.3)
    assert forest.trainable[-1] == "wing"
    table = forest_to_table(forest)
    loaded = forest_from_table(table)
    assert loaded.trainable == forest.trainable
    for name in ("wing_alpha", "ln_wing_offset", "ln_wing_scale", "ln_amplitude"):
        assert torch.equal(getattr(loaded, name), getattr(forest, name))
    np.testing.assert_array_equal(loaded.wing_properties()["wing"], [False, True, False])
    wl = np.arange(9900.0, 10100.0, 0.1)
    with torch.no_grad():
        np.testing.assert_array_equal(
            loaded(loaded.make_layout(wl)).numpy(), forest(forest.make_layout(wl)).numpy()
        )
    table["wing_alpha"][1] = 99.0
    with pytest.raises(ValueError, match="wing_alpha"):
        forest_from_table(table)


def test_clone_with_wing_correction_round_trips(tmp_path):
    torch.manual_seed(0)
    result = clone(WL, FLUX, flatten=False, broad_lines=True, wing_correction=True,
                   epochs=150, progress=False)  # fmt: skip
    assert result.meta["wing_correction"] is True
    assert result.forest.wing_properties()["wing"].sum() == 1
    assert "wing" in result.forest.trainable
    # alpha trained away from 0 without spoiling the clone
    wings = result.forest.wing_properties()
    assert abs(wings["alpha"][wings["wing"]][0]) > 1e-3
    assert result.rms < 0.003, result.rms
    path = result.save(tmp_path / "wings.ecsv")
    loaded = load_clone(path)
    np.testing.assert_array_equal(loaded.evaluate(WL), result.evaluate(WL))
    np.testing.assert_array_equal(
        loaded.forest.wing_properties()["alpha"], result.forest.wing_properties()["alpha"]
    )


def test_layout_from_before_the_wings_is_refused():
    wl = np.arange(9900.0, 10100.0, 0.1)
    forest = LineForest([9950.0, 10000.0], [0.04, 5.0], [0.05, 1.0], [0.03, 4.0])
    old = forest.make_layout(wl)
    forest.set_wings([1], offset=10.0, scale=2.0)
    with pytest.raises(ValueError, match="make_layout"):
        forest(old)
    with pytest.raises(ValueError, match="positive"):
        forest.set_wings([1], offset=-1.0, scale=2.0)
    with pytest.raises(ValueError, match="indices"):
        forest.set_wings([5], offset=1.0, scale=2.0)
