"""The line stage's common modes (issue 14 §1): a shift or broadening shared by every line
belongs to the RV, v sin i and R, so the trained departures are kept orthogonal to it."""

import numpy as np
import pytest
import torch

import blase_specutils as bs
from blase_specutils.core.lineforest import SPEED_OF_LIGHT_KMS as C_KMS
from blase_specutils.core.lineforest import LineForest
from blase_specutils.fitting.common_modes import (
    common_mode_weights,
    remove_common_modes,
    velocity_information,
)
from blase_specutils.fitting.diagnostics import line_values
from blase_specutils.testing import observe


def _forest(n=40, seed=0):
    rng = np.random.default_rng(seed)
    centre = np.sort(rng.uniform(10000.0, 10100.0, n))
    return LineForest(
        centre, rng.uniform(0.002, 0.02, n), rng.uniform(0.02, 0.06, n),
        rng.uniform(0.005, 0.03, n),
        trainable=("center", "sigma", "gamma", "amplitude"),
    )  # fmt: skip


def test_projection_removes_the_weighted_mean_and_nothing_else():
    forest = _forest()
    start = line_values(forest)
    rng = np.random.default_rng(1)
    with torch.no_grad():
        forest.center_shift += torch.as_tensor(rng.normal(0.01, 0.005, forest.n_lines))
        forest.ln_sigma += torch.as_tensor(rng.normal(0.1, 0.05, forest.n_lines))
        forest.ln_gamma += torch.as_tensor(rng.normal(-0.2, 0.05, forest.n_lines))
    forest.ln_amplitude.requires_grad_(True)
    before = line_values(forest)
    weight = common_mode_weights(forest, [(10020.0, 10080.0)], rv=0.0)
    inside = (weight > 0).numpy()
    assert 0 < inside.sum() < forest.n_lines
    removed = remove_common_modes(forest, start, weight, ("center_shift", "ln_sigma", "ln_gamma"))
    w = weight.double().numpy()
    centre = (forest.center_ref + start["center_shift"].double()).numpy()
    for name in ("ln_sigma", "ln_gamma"):
        delta = (getattr(forest, name) - start[name]).detach().double().numpy()
        assert abs(np.sum(w * delta) / w.sum()) < 1e-6
        # the mean it removed is the weighted mean of the departures before
        delta_before = (before[name] - start[name]).double().numpy()
        assert removed[name] == pytest.approx(np.sum(w * delta_before) / w.sum(), rel=1e-5)
        # lines outside the data (weight 0) are not moved; the others by the same amount
        outside = getattr(forest, name).detach()[~inside]
        np.testing.assert_array_equal(outside, before[name][~inside])
        np.testing.assert_allclose(delta_before[inside] - delta[inside], removed[name], rtol=1e-5)
    shift = (forest.center_shift - start["center_shift"]).detach().double().numpy()
    velocity = C_KMS * shift / centre
    assert abs(np.sum(w * velocity) / w.sum()) < 1e-6
    assert removed["center_shift"] == pytest.approx(C_KMS * 0.01 / 10050.0, rel=0.3)
    # amplitudes are never touched; a second projection changes nothing
    np.testing.assert_array_equal(forest.ln_amplitude.detach(), before["ln_amplitude"])
    again = line_values(forest)
    second = remove_common_modes(forest, start, weight, ("center_shift", "ln_sigma", "ln_gamma"))
    assert all(abs(v) < 1e-6 for v in second.values())
    np.testing.assert_allclose(forest.ln_sigma.detach(), again["ln_sigma"], atol=1e-6)


def test_parameters_that_do_not_train_are_left_alone():
    forest = _forest()
    start = line_values(forest)
    forest.set_trainable(("amplitude",))
    with torch.no_grad():
        forest.ln_sigma += 0.3
    weight = common_mode_weights(forest, [(10000.0, 10100.0)], rv=0.0)
    assert remove_common_modes(forest, start, weight, ("center_shift", "ln_sigma")) == {}
    np.testing.assert_allclose(forest.ln_sigma.detach() - start["ln_sigma"], 0.3, rtol=1e-6)
    # no information: nothing to remove
    assert remove_common_modes(forest, start, torch.zeros(forest.n_lines), ("ln_sigma",)) == {}


def test_velocity_information_is_one_over_variance_and_zero_without_data():
    forest = _forest(n=3)
    weight = velocity_information(np.array([0.5, np.nan, 2.0]), forest)
    np.testing.assert_allclose(weight.numpy(), [4.0, 0.0, 0.25])


@pytest.fixture(scope="module")
def small_problem():
    forest = _forest(n=60, seed=4)
    wl = np.linspace(9995.0, 10105.0, 40000)
    with torch.no_grad():
        flux = forest.dense_flux(wl).double().numpy()
    pixels = 10015.0 * np.exp(np.arange(1200) * 1.9 / C_KMS)
    obs = observe(wl, flux, pixels, rv=5.0, vsini=6.0, resolving_power=55000, snr=300, seed=2)
    return forest, obs


def test_fit_with_centres_training_keeps_their_line_by_line_shift_at_zero(small_problem):
    forest, obs = small_problem
    kw = dict(
        stellar=forest, progress=False, global_epochs=5, rv=5.0, rv_search=0, epochs=150,
        trainable=("center", "amplitude", "sigma"), prior_center=0.02, prior_ln_sigma=0.3,
    )  # fmt: skip
    args = (obs.wavelength, obs.flux, obs.uncertainty)
    held = bs.fit(*args, **kw)
    free = bs.fit(*args, hold_common_modes=False, **kw)
    assert held.meta["line_common_modes"] is True and free.meta["line_common_modes"] is False
    c = forest.line_properties()["center"]
    inside = (c > obs.wavelength[0] + 1) & (c < obs.wavelength[-1] - 1)

    def mean_departures(result):
        f = result.template.forest
        dls = (f.ln_sigma - forest.ln_sigma).detach().double().numpy()[inside]
        dc = (f.center_shift - forest.center_shift).detach().double().numpy()
        return dls.mean(), (C_KMS * dc / c)[inside].mean()

    (sigma_held, v_held), (sigma_free, v_free) = mean_departures(held), mean_departures(free)
    # measured: free lines widen together (+0.018 in ln σ) and shift (−4.4 m/s); held,
    # the centres' mean shift is ~0.1 m/s and the widths do not widen in common
    assert abs(v_held) < 0.2 * abs(v_free) and abs(v_free) > 1e-3
    assert sigma_free > 0.01 and sigma_held < 0.5 * sigma_free
    # amplitude-only (the default): the switch changes nothing, bit for bit
    kw.update(trainable=("amplitude",), prior_center=None, prior_ln_sigma=None)
    a, b = bs.fit(*args, **kw), bs.fit(*args, hold_common_modes=False, **kw)
    assert a.rv.value == b.rv.value and np.array_equal(a.model_flux, b.model_flux)
    with pytest.raises(TypeError, match="hold_common_modes must be True or False"):
        bs.fit(*args, hold_common_modes="no", **kw)
