"""LineForest (core/lineforest.py): validation, trainable flags, modes, physics of one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid
from scipy.special import voigt_profile as scipy_voigt

from blase_specutils.core.lineforest import PARAMETER_NAMES, SPEED_OF_LIGHT_KMS, LineForest
from blase_specutils.core.profiles import pseudo_voigt, tch_fwhm_and_eta

GOOD = {
    "center": [8600.0, 8601.0],
    "amplitude": [0.01, 0.02],
    "sigma": [0.02, 0.03],
    "gamma": [0.01, 0.02],
}


def _cover_all(wavelength) -> dict:
    """make_layout settings whose windows cover the whole grid."""
    return {"tolerance": 1e-30, "max_half_width": 1e4, "min_pixels": 2 * len(wavelength)}


def _make(**overrides) -> LineForest:
    kw = dict(GOOD)
    kw.update(overrides)
    return LineForest(kw.pop("center"), kw.pop("amplitude"), kw.pop("sigma"), kw.pop("gamma"), **kw)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["amplitude", "sigma", "gamma"])
@pytest.mark.parametrize("bad", [0.0, -0.01, np.nan, np.inf])
def test_non_positive_or_non_finite_line_properties_raise(name, bad):
    values = list(GOOD[name])
    values[1] = bad
    match = "contains non-finite values" if not np.isfinite(bad) else "must be positive"
    with pytest.raises(ValueError, match=f"^{name} {match}"):
        _make(**{name: values})


def test_non_finite_center_raises():
    with pytest.raises(ValueError, match="center contains non-finite"):
        _make(center=[8600.0, np.nan])


@pytest.mark.parametrize("name", ["amplitude", "sigma", "gamma"])
def test_mismatched_lengths_raise(name):
    with pytest.raises(ValueError, match=f"{name} has 3 entries but center has 2"):
        _make(**{name: [0.01, 0.02, 0.03]})


def test_emission_length_mismatch_raises():
    with pytest.raises(ValueError, match="emission must have one entry per line"):
        _make(emission=[True, False, True])


def test_empty_forest_raises():
    with pytest.raises(ValueError, match="at least one line"):
        LineForest([], [], [], [])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "product"}, "mode must be 'linear' or 'log'"),
        ({"profile": "gauss"}, "profile must be 'pseudo_voigt' or 'voigt'"),
        ({"dtype": torch.float16}, "dtype must be torch.float32 or torch.float64"),
        ({"trainable": ("amplitude", "depth")}, r"unknown trainable parameter\(s\) \['depth'\]"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _make(**kwargs)


@pytest.mark.parametrize(
    "wavelength, match",
    [
        (np.array([8600.0, 8600.01, 8600.01, 8600.02]), "strictly increasing"),
        (np.array([8600.02, 8600.01, 8600.0]), "strictly increasing"),
        (np.array([8600.0, np.nan, 8600.02]), "non-finite"),
        (np.array([8600.0]), "at least two samples"),
        (np.ones((2, 3)), "1-D"),
    ],
)
def test_make_layout_rejects_bad_grids(wavelength, match):
    with pytest.raises(ValueError, match=match):
        _make().make_layout(wavelength)


# ------------------------------------------------------------------------ trainable flags
@pytest.mark.parametrize(
    "names",
    [(), ("amplitude",), ("center", "gamma"), ("amplitude", "sigma", "gamma"), PARAMETER_NAMES],
)
def test_set_trainable_sets_requires_grad_and_gradients(names):
    forest = _make(dtype=torch.float64)
    forest.set_trainable(names)
    assert set(forest.trainable) == set(names)
    attribute = {
        "center": "center_shift",
        "amplitude": "ln_amplitude",
        "sigma": "ln_sigma",
        "gamma": "ln_gamma",
    }
    for public, attr in attribute.items():
        assert getattr(forest, attr).requires_grad == (public in names)
    if not names:
        return
    wl = np.arange(8599.5, 8601.5, 0.01)
    flux = forest(forest.make_layout(wl))
    flux.sum().backward()
    for public, attr in attribute.items():
        grad = getattr(forest, attr).grad
        if public in names:
            assert grad is not None and torch.all(grad != 0)
        else:
            assert grad is None


def test_one_trainable_name_may_be_a_string():
    forest = _make()
    forest.set_trainable("amplitude")  # not the letters a, m, p, …
    assert forest.trainable == ("amplitude",)
    with pytest.raises(ValueError, match=r"unknown trainable parameter\(s\) \['width'\]"):
        forest.set_trainable("width")


def test_default_trainable_is_amplitude_sigma_gamma():
    assert set(_make().trainable) == {"amplitude", "sigma", "gamma"}


def test_clamp_removes_nan_and_inf():
    forest = _make(dtype=torch.float32)
    with torch.no_grad():
        forest.ln_amplitude[0] = float("nan")
        forest.ln_amplitude[1] = float("inf")
        forest.ln_sigma[0] = float("-inf")
        forest.ln_gamma[1] = float("nan")
        forest.center_shift[0] = float("nan")
        forest.center_shift[1] = float("inf")
        forest.ln_sigma[1] = 1e3  # finite but absurd: σ = e^1000 Å
    forest.clamp_()
    for p in forest.parameters():
        assert torch.all(torch.isfinite(p))
    props = forest.line_properties()
    assert np.all(props["sigma"] <= 50.0 * (1 + 1e-6)) and np.all(
        props["sigma"] >= 1e-6 * (1 - 1e-6)
    )
    assert np.all(np.isfinite(props["amplitude"])) and props["amplitude"][1] <= math.exp(5.0) * (
        1 + 1e-6
    )
    assert float(forest.center_shift[0]) == 0.0
    # (an infinite shift becomes the largest finite float: finite, though far off the grid)
    assert np.isfinite(float(forest.center_shift[1]))
    wl = np.arange(8599.0, 8602.0, 0.01)
    with torch.no_grad():
        assert torch.all(torch.isfinite(forest(forest.make_layout(wl))))


def test_clamp_leaves_sane_parameters_untouched():
    forest = _make(dtype=torch.float64)
    before = {n: p.detach().clone() for n, p in forest.named_parameters()}
    forest.clamp_()
    for n, p in forest.named_parameters():
        assert torch.equal(p, before[n])


# ------------------------------------------------------------------------ modes
def _dense_av(forest, wl):
    """a·V per line and pixel with the package's pseudo-Voigt, float64, shape (lines, pixels)."""
    props = forest.line_properties()
    dx = torch.as_tensor(wl[None, :] - props["center"][:, None])
    v = pseudo_voigt(
        dx, torch.as_tensor(props["sigma"])[:, None], torch.as_tensor(props["gamma"])[:, None]
    )
    return torch.as_tensor(props["amplitude"])[:, None] * v


@pytest.mark.parametrize("fused", [True, False])
def test_log_mode_is_exp_of_minus_sum(fused):
    rng = np.random.default_rng(11)
    n = 15
    wl = np.arange(8600.0, 8604.0, 0.01)
    # strong lines: linear and log modes differ at the 10 % level
    args = (
        np.sort(rng.uniform(8600, 8604, n)),
        rng.uniform(0.01, 0.03, n),
        rng.uniform(0.01, 0.04, n),
        rng.uniform(0.01, 0.04, n),
    )
    log_forest = LineForest(*args, mode="log", dtype=torch.float64)
    lin_forest = LineForest(*args, mode="linear", dtype=torch.float64)
    av = _dense_av(log_forest, wl)
    with torch.no_grad():
        log_flux = torch.exp(
            log_forest.log_transmission(log_forest.make_layout(wl, **_cover_all(wl)), fused=fused)
        )
        lin_flux = torch.exp(
            lin_forest.log_transmission(lin_forest.make_layout(wl, **_cover_all(wl)), fused=fused)
        )
    torch.testing.assert_close(log_flux, torch.exp(-av.sum(0)), rtol=0, atol=1e-13)
    torch.testing.assert_close(lin_flux, torch.prod(1.0 - av, 0), rtol=0, atol=1e-13)
    assert float((log_flux - lin_flux).abs().max()) > 1e-2


@pytest.mark.parametrize("mode", ["linear", "log"])
def test_equivalent_width_of_isolated_line_equals_amplitude(mode):
    # a = 1e-4 Å, FWHM ≈ 0.05 Å: peak a·V ≈ 2e-3 (optically thin).
    amplitude = 1e-4
    sigma, gamma = 0.015, 0.01
    step = 0.002
    wl = np.arange(9950.0, 10050.0 + step / 2, step)  # ±50 Å
    forest = LineForest([10000.0], [amplitude], [sigma], [gamma], mode=mode, dtype=torch.float64)
    layout = forest.make_layout(wl, tolerance=1e-12, max_half_width=100.0)
    with torch.no_grad():
        flux = forest(layout).numpy()
    ew = trapezoid(1.0 - flux, wl)
    # The Lorentzian part beyond ±50 Å holds eta·f/(π·50) ≈ 1.6e-4 of the area, and
    # log mode loses (a·V)²/2 ≈ 1e-3 of a·V at the core (≈ 5e-4 of the area): both < 1e-3.
    assert ew == pytest.approx(amplitude, rel=1e-3)


def test_linear_mode_single_line_is_one_minus_av_exactly():
    wl = np.arange(9990.0, 10010.0, 0.01)
    forest = LineForest([10000.003], [0.05], [0.02], [0.03], dtype=torch.float64)
    with torch.no_grad():
        flux = forest(forest.make_layout(wl, **_cover_all(wl)))
    torch.testing.assert_close(flux, 1.0 - _dense_av(forest, wl)[0], rtol=0, atol=1e-14)


@pytest.mark.parametrize("center", [10004.0, 10004.00371])
@pytest.mark.parametrize("velocity", [0.0, 12.345, -87.6, 150.0])
def test_rv_shift_moves_minimum_by_lambda_v_over_c(center, velocity):
    step = 0.01
    wl = np.arange(10000.0, 10010.0, step)
    # FWHM ≈ 0.36 Å = 36 px: a 3-point parabola locates the minimum to < 1e-3 px (measured ≤ 4.5e-4)
    forest = LineForest([center], [0.05], [0.1], [0.1], dtype=torch.float64)
    with torch.no_grad():
        flux = forest(forest.make_layout(wl), velocity).numpy()
    i = int(np.argmin(flux))
    y0, y1, y2 = flux[i - 1 : i + 2]
    vertex_pixel = i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    expected_pixel = (center + center * velocity / SPEED_OF_LIGHT_KMS - wl[0]) / step
    assert abs(vertex_pixel - expected_pixel) < 1e-3


def test_velocity_gradient_matches_finite_differences():
    wl = np.arange(8600.0, 8602.0, 0.01)
    forest = _make(dtype=torch.float64)
    layout = forest.make_layout(wl, velocity_budget_kms=10.0)

    def flux(v):
        return forest(layout, v)

    v = torch.tensor(-3.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(flux, (v,), eps=1e-6, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------------ exact Voigt
@pytest.mark.parametrize("mode", ["linear", "log"])
def test_exact_voigt_profile_path(mode):
    wl = np.arange(8600.0, 8602.0, 0.01)
    forest = _make(
        profile="voigt",
        mode=mode,
        dtype=torch.float64,
        trainable=("center", "amplitude", "sigma", "gamma"),
    )
    layout = forest.make_layout(wl, **_cover_all(wl))
    flux = forest(layout)
    c, a, s, g = (np.asarray(GOOD[k])[:, None] for k in ("center", "amplitude", "sigma", "gamma"))
    av = a * scipy_voigt(wl[None, :] - c, s, g)
    expected = np.prod(1.0 - av, 0) if mode == "linear" else np.exp(-av.sum(0))
    np.testing.assert_allclose(flux.detach().numpy(), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(forest.dense_flux(wl).detach().numpy(), expected, rtol=0, atol=1e-9)
    # the fused exact-Voigt kernel (asymptotic series in the far wings) and the plain
    # autograd path (continued fraction there) agree to the series' 6e-9 relative
    with torch.no_grad():
        torch.testing.assert_close(
            forest.log_transmission(layout, fused=True),
            forest.log_transmission(layout, fused=False),
            rtol=1e-8,
            atol=1e-15,
        )
    # and it differs from the pseudo-Voigt by the expected ~1 % of a line's depth
    pv = _make(mode=mode, dtype=torch.float64)
    with torch.no_grad():
        diff = float((pv(pv.make_layout(wl, **_cover_all(wl))) - flux).abs().max())
    assert 1e-5 < diff < 0.02 * float(1 - flux.detach().min())
    # gradients flow to every parameter and are finite
    flux.sum().backward()
    for p in forest.parameters():
        assert p.grad is not None and torch.all(torch.isfinite(p.grad)) and torch.any(p.grad != 0)


# ------------------------------------------------------------------------ properties, dtype
def test_line_properties_round_trip_and_consistency():
    forest = _make(emission=[False, True], dtype=torch.float32)
    props = forest.line_properties()
    for key in ("center", "amplitude", "sigma", "gamma"):
        np.testing.assert_allclose(props[key], GOOD[key], rtol=1e-6)
        assert props[key].dtype == np.float64
    np.testing.assert_array_equal(props["emission"], [False, True])
    fwhm, eta = tch_fwhm_and_eta(torch.as_tensor(props["sigma"]), torch.as_tensor(props["gamma"]))
    np.testing.assert_allclose(props["fwhm"], fwhm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(props["eta"], eta.numpy(), rtol=1e-12)
    assert forest.n_lines == 2


def test_emission_line_raises_flux_above_continuum():
    wl = np.arange(8599.5, 8601.5, 0.01)
    forest = _make(emission=[False, True], dtype=torch.float64)
    with torch.no_grad():
        flux = forest(forest.make_layout(wl)).numpy()
    assert flux[np.argmin(np.abs(wl - 8601.0))] > 1.1
    assert flux[np.argmin(np.abs(wl - 8600.0))] < 0.9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_dtype_follows_forest(dtype):
    forest = _make(dtype=dtype)
    wl = np.arange(8599.5, 8601.5, 0.01)
    assert forest(forest.make_layout(wl)).dtype == dtype
    assert forest.dense_flux(wl).dtype == dtype
