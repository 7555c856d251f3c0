"""The fit's building blocks alone: profiled χ², the joint grid search, Gauss–Newton errors.

Each is checked against an independent, obviously correct reference: numpy's least
squares, a brute-force scan, a finite-difference Hessian.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blase_specutils.core.forward import chebyshev_design
from blase_specutils.core.lineforest import LineForest
from blase_specutils.core.losses import profiled_chi2_batch, solve_continuum
from blase_specutils.core.search import (
    OrderSurface,
    SearchOrder,
    SearchResult,
    default_vsini_grid,
    local_minima,
    log_shift_to_velocity,
    rv_vsini_search,
    velocity_to_log_shift,
)
from blase_specutils.core.uncertainty import covariance, gauss_newton_step
from blase_specutils.testing import observe


def _random_problem(seed=0, n=300, k=4):
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n)
    basis = np.polynomial.chebyshev.chebvander(x, k - 1)
    shapes = 1.0 - 0.3 * rng.random((5, n))
    tell = 1.0 - 0.2 * rng.random(n)
    g = 1.0 + 0.3 * x
    data = (1.0 + 0.1 * x) * shapes[2] * tell + rng.normal(0, 0.01, n)
    weight = np.where(rng.random(n) < 0.9, 1.0 / 0.01**2, 0.0)
    return basis, shapes, tell, g, data, weight


def test_profiled_chi2_batch_matches_numpy_lstsq():
    basis, shapes, tell, g, data, weight = _random_problem()
    chi2, depth = profiled_chi2_batch(
        torch.as_tensor(shapes), torch.as_tensor(basis), torch.as_tensor(data),
        torch.as_tensor(weight), telluric=torch.as_tensor(tell),
        additive_shape=torch.as_tensor(g), depth_range=(-np.inf, np.inf),
    )  # fmt: skip
    sw = np.sqrt(weight)
    for b in range(len(shapes)):
        design = np.column_stack([basis * (shapes[b] * tell)[:, None], g * tell])
        coef, *_ = np.linalg.lstsq(design * sw[:, None], data * sw, rcond=None)
        reference = np.sum(((design @ coef - data) * sw) ** 2)
        assert float(chi2[b]) == pytest.approx(reference, rel=1e-7)
        c0 = basis[weight > 0].mean(0) @ coef[:-1]
        g0 = g[weight > 0].mean()
        assert float(depth[b]) == pytest.approx(c0 / (c0 + coef[-1] * g0), rel=1e-6)
    # without the additive term: the plain continuum fit
    chi2_plain, depth_plain = profiled_chi2_batch(
        torch.as_tensor(shapes), torch.as_tensor(basis), torch.as_tensor(data),
        torch.as_tensor(weight), additive=False,
    )  # fmt: skip
    design = basis * shapes[0][:, None]
    coef, *_ = np.linalg.lstsq(design * sw[:, None], data * sw, rcond=None)
    assert float(chi2_plain[0]) == pytest.approx(np.sum(((design @ coef - data) * sw) ** 2))
    assert torch.all(depth_plain == 1)


def test_depth_scale_is_held_within_its_bounds():
    # A nearly featureless shape fits a line-rich order only by scaling its tiny dips up
    # enormously: bounded, its χ² is that of the bound, solved exactly (numpy reference).
    basis, shapes, tell, g, data, weight = _random_problem(1)
    flat = 1.0 - 1e-3 * (shapes[2] - shapes[2].mean())
    chi2, depth = profiled_chi2_batch(
        torch.as_tensor(flat[None]), torch.as_tensor(basis), torch.as_tensor(data),
        torch.as_tensor(weight), depth_range=(0.2, 3.0),
    )  # fmt: skip
    assert float(depth[0]) == 3.0
    k = 3.0
    m = basis[weight > 0].mean(0)
    design = basis * flat[:, None] + (1 / k - 1) * m[None, :]
    sw = np.sqrt(weight)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], data * sw, rcond=None)
    assert float(chi2[0]) == pytest.approx(np.sum(((design @ coef - data) * sw) ** 2), rel=1e-7)


def test_solve_continuum_matches_lstsq_and_survives_tiny_uncertainties():
    basis, shapes, tell, g, data, weight = _random_problem(2, k=3)
    coefficients = torch.zeros(1, 3, dtype=torch.float64)
    order_index = torch.zeros(len(data), dtype=torch.long)
    good = torch.as_tensor(weight > 0)
    for sigma in (0.01, 1e-9):  # relative 1e-9: LAPACK's gelsy used to fail here
        inv_sigma = torch.full((len(data),), 1.0 / sigma, dtype=torch.float64)
        chi2 = solve_continuum(
            coefficients, torch.as_tensor(basis), order_index, torch.as_tensor(shapes[0]),
            torch.as_tensor(data), inv_sigma, good,
        )  # fmt: skip
        design = basis[weight > 0] * shapes[0][weight > 0, None]
        coef, *_ = np.linalg.lstsq(design, data[weight > 0], rcond=None)
        np.testing.assert_allclose(coefficients[0].numpy(), coef, rtol=1e-8)
        assert torch.isfinite(chi2)


def test_velocity_shift_conversions_round_trip():
    for rv in (-900.0, -3.0, 0.0, 250.0):
        for relativistic in (False, True):
            back = log_shift_to_velocity(velocity_to_log_shift(rv, relativistic), relativistic)
            assert float(back) == pytest.approx(rv, abs=1e-9)


def test_local_minima_are_separated_and_sorted():
    x = np.linspace(0, 10, 101)
    y = np.cos(2 * np.pi * x / 5) + 0.1 * x
    found = local_minima(y, x, 1.0)
    # the two valleys (slope-shifted from 2.5 and 7.5), then the edge at 0, best first
    assert [round(x[i], 1) for i in found] == [2.4, 7.4, 0.0]
    assert local_minima(y, x, 6.0) == [found[0]]


def test_default_vsini_grid_starts_near_the_resolution():
    grid = default_vsini_grid(55000.0)
    assert grid[0] == 0.0 and grid[-1] == pytest.approx(450.0)
    assert 3.0 < grid[1] < 3.5  # 0.6 c/R
    assert np.all(np.diff(np.log(grid[1:])) < np.log(1.65))


@pytest.fixture(scope="module")
def toy_star():
    """A forest of 60 lines over 5000–5060 Å and its rest-frame flux on a fine grid."""
    rng = np.random.default_rng(3)
    centre = np.sort(rng.uniform(4990.0, 5070.0, 60))
    forest = LineForest(
        centre, rng.uniform(0.02, 0.08, 60), np.full(60, 0.03), np.full(60, 0.01),
        dtype=torch.float64,
    )  # fmt: skip
    wl = np.exp(np.arange(np.log(4980.0), np.log(5080.0), 0.1 / 299792.458))
    with torch.no_grad():
        flux = forest(forest.make_layout(wl)).numpy()
    return forest, wl, flux


def _search_order(obs, degree=2):
    pixels = obs.wavelength
    mid = 0.5 * (pixels[1:] + pixels[:-1])
    edges = np.stack([np.r_[2 * pixels[0] - mid[0], mid], np.r_[mid, 2 * pixels[-1] - mid[-1]]], 1)
    x = torch.linspace(-1, 1, len(pixels), dtype=torch.float64)
    return SearchOrder(
        edges, torch.as_tensor(obs.flux), torch.as_tensor(1.0 / obs.uncertainty**2),
        chebyshev_design(x, degree),
    )  # fmt: skip


@pytest.mark.parametrize(("rv", "vsini"), [(-640.0, 4.0), (35.0, 30.0), (310.0, 120.0)])
def test_joint_search_finds_rv_and_vsini_far_from_the_start(toy_star, rv, vsini):
    forest, wl, flux = toy_star
    pixels = np.exp(np.arange(np.log(5010.0), np.log(5050.0), 1 / (3 * 50000)))
    # the template's lines are 40 % too deep for this star: the additive term absorbs it
    shallow = 1.0 - 0.6 * (1.0 - flux)
    obs = observe(wl, shallow, pixels, rv=rv, vsini=vsini, resolving_power=50000, snr=300)
    result = rv_vsini_search(
        [_search_order(obs)], lambda g: forest(forest.make_layout(g)),
        step_kms=0.5, resolving_power=50000,
    )  # fmt: skip
    width = np.hypot(299792.458 / 50000, vsini)
    assert abs(result.best_rv - rv) < 0.1 * width
    assert abs(result.best_vsini - vsini) < 0.35 * vsini + 3.0
    assert not result.at_edge
    assert result.depth_scale == pytest.approx(0.6, abs=0.1)
    # the surface is the brute-force one: every grid point at least the best
    assert result.combined.min() >= result.best_chi2 - 1e-6 * result.best_chi2
    assert result.minima[0]["rv"] == pytest.approx(rv, abs=width)


@pytest.mark.parametrize("pixels_per_resolution", [1.2, 3.0, 8.0])
def test_prefix_sum_pixel_average_equals_the_gather(toy_star, pixels_per_resolution):
    """The search averages every rolled window into the pixels by prefix-sum differences
    (4 gathers a pixel); it must equal the explicit weighted gather of its taps, for
    pixels from 2 to 17 model steps wide."""
    forest, wl, flux = toy_star
    pixels = np.exp(np.arange(np.log(5010.0), np.log(5050.0), 1 / (pixels_per_resolution * 50000)))
    obs = observe(wl, flux, pixels, rv=0.0, vsini=1.0, resolving_power=50000, snr=300)
    surface = OrderSurface(
        _search_order(obs), lambda g: forest(forest.make_layout(g)), None, 0.5, -900, 900, 20, 50000
    )
    assert surface.prefix is not None
    rng = np.random.default_rng(1)
    broadened = torch.as_tensor(1.0 - rng.uniform(0, 0.5, len(surface.grid)))
    starts = torch.as_tensor(surface.offset - np.arange(-900, 901, 7), dtype=torch.long)
    gathered = surface.average(broadened, starts)
    summed = surface.average(broadened, starts, surface.prefix_sums(broadened))
    assert torch.allclose(summed, gathered, rtol=1e-10, atol=0)
    # and a flat spectrum averages to exactly 1 in every window, both ways
    flat = torch.ones(len(surface.grid), dtype=torch.float64)
    assert torch.allclose(surface.average(flat, starts, surface.prefix_sums(flat)),
                          torch.ones_like(gathered), rtol=1e-10, atol=0)  # fmt: skip


def test_joint_search_says_when_the_best_is_on_the_edge(toy_star):
    forest, wl, flux = toy_star
    pixels = np.exp(np.arange(np.log(5010.0), np.log(5050.0), 1 / (3 * 50000)))
    obs = observe(wl, flux, pixels, rv=80.0, vsini=5.0, resolving_power=50000, snr=300)
    result = rv_vsini_search(
        [_search_order(obs)], lambda g: forest(forest.make_layout(g)),
        step_kms=0.5, resolving_power=50000, rv_center=0.0, rv_half_width=30.0,
        vsini_grid=[5.0],
    )  # fmt: skip
    # the star lies beyond: the surface has no minimum inside, the best is on an edge
    assert result.at_edge and abs(result.best_rv) == pytest.approx(30.0, abs=2.0)


def test_joint_search_sums_orders(toy_star):
    forest, wl, flux = toy_star
    pixels = np.exp(np.arange(np.log(5010.0), np.log(5050.0), 1 / (3 * 50000)))
    obs = observe(wl, flux, pixels, rv=-12.0, vsini=8.0, resolving_power=50000, snr=200)
    half = len(pixels) // 2
    first = observe(wl, flux, pixels[:half], rv=-12.0, vsini=8.0, resolving_power=50000, snr=200)
    second = observe(wl, flux, pixels[half:], rv=-12.0, vsini=8.0, resolving_power=50000,
                     snr=200, seed=1)  # fmt: skip
    kwargs = dict(step_kms=0.5, resolving_power=50000, rv_half_width=200.0)
    rest = lambda g: forest(forest.make_layout(g))  # noqa: E731
    both = rv_vsini_search([_search_order(first), _search_order(second)], rest, **kwargs)
    one = rv_vsini_search([_search_order(first)], rest, **kwargs)
    np.testing.assert_allclose(both.chi2[0], one.chi2[0])
    np.testing.assert_allclose(both.combined, both.chi2.sum(0))
    assert len(both.order_rv) == 2 and np.all(np.abs(both.order_rv + 12.0) < 3.0)
    assert abs(both.best_rv + 12.0) < 0.5
    del obs


def test_gauss_newton_covariance_against_a_finite_difference_hessian():
    # A Gaussian line (centre, depth) on a linear continuum: the marginal covariance of the
    # line parameters from the Jacobian equals the inverse Hessian of χ²/2 at the minimum
    # (a nearly linear problem at high S/N), the continuum marginalised.
    rng = np.random.default_rng(5)
    x = np.linspace(-5, 5, 400)
    sigma = 0.01

    def model(theta):
        centre, depth, c0, c1 = theta
        return (c0 + c1 * x) * (1 - depth * np.exp(-0.5 * (x - centre) ** 2))

    truth = np.array([0.3, 0.4, 1.0, 0.02])
    data = model(truth) + rng.normal(0, sigma, x.size)
    from scipy.optimize import least_squares

    fit = least_squares(lambda t: (model(t) - data) / sigma, truth)
    theta = fit.x
    jac = fit.jac  # [n, 4], weighted
    cov = covariance(torch.as_tensor(jac[:, :2]), torch.as_tensor(jac[:, 2:]))

    def half_chi2(t):
        return 0.5 * np.sum(((model(t) - data) / sigma) ** 2)

    h = np.array([1e-4, 1e-4, 1e-5, 1e-5])
    hess = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            ei, ej = np.eye(4)[i] * h[i], np.eye(4)[j] * h[j]
            hess[i, j] = (
                half_chi2(theta + ei + ej) - half_chi2(theta + ei - ej)
                - half_chi2(theta - ei + ej) + half_chi2(theta - ei - ej)
            ) / (4 * h[i] * h[j])  # fmt: skip
    reference = np.linalg.inv(hess)[:2, :2]
    np.testing.assert_allclose(cov.numpy(), reference, rtol=2e-2)
    # a Gauss–Newton step from a displaced point returns to the minimum (linear part)
    start = theta + np.array([0.002, -0.001, 0.0, 0.0])
    residual = (data - model(start)) / sigma
    jac_start = np.column_stack(
        [(model(start + e) - model(start - e)) / (2 * 1e-6) / sigma for e in np.eye(4) * 1e-6]
    )
    step, _ = gauss_newton_step(
        torch.as_tensor(jac_start[:, :2]), torch.as_tensor(jac_start[:, 2:]),
        torch.as_tensor(residual),
    )  # fmt: skip
    np.testing.assert_allclose(start[:2] + step.numpy(), theta[:2], atol=2e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step_kms": float("nan")}, "step_kms must be finite and > 0"),
        ({"resolving_power": 0.0}, "resolving_power must be finite and > 0"),
        ({"rv_half_width": -5.0}, "rv_half_width must be >= 0"),
        ({"rv_center": float("inf")}, "rv_center must be finite"),
        ({"vsini_grid": []}, "vsini_grid must hold at least one"),
        ({"vsini_grid": [0.0, -3.0]}, "vsini_grid must hold at least one"),
    ],
)
def test_joint_search_rejects_bad_settings(toy_star, kwargs, message):
    forest, wl, flux = toy_star
    pixels = np.exp(np.arange(np.log(5010.0), np.log(5050.0), 1 / (3 * 50000)))
    obs = observe(wl, flux, pixels, rv=0.0, vsini=5.0, resolving_power=50000, snr=300)
    settings = {"step_kms": 0.5, "resolving_power": 50000.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        rv_vsini_search([_search_order(obs)], lambda g: forest(forest.make_layout(g)), **settings)
    empty = _search_order(obs)
    empty.weight = torch.zeros_like(empty.weight)
    with pytest.raises(ValueError, match="order 0 of the search has no pixel"):
        rv_vsini_search([empty], lambda g: forest(forest.make_layout(g)), step_kms=0.5,
                        resolving_power=50000.0)  # fmt: skip
    with pytest.raises(ValueError, match="at least one order"):
        rv_vsini_search([], lambda g: g, step_kms=0.5, resolving_power=50000.0)


def test_marginal_covariance_equals_the_dense_inverse():
    # Arrow-shaped Fisher matrix: 2 globals coupled to two blocks of 3 and 4 parameters
    # that live on disjoint pixels; the Schur-complement solution is the dense inverse.
    from blase_specutils.core.uncertainty import marginal_covariance

    rng = np.random.default_rng(7)
    n = 60
    rows = [np.arange(n) < 25, np.arange(n) >= 25]
    g = torch.as_tensor(rng.normal(size=(n, 2)))
    cols = [torch.as_tensor(rng.normal(size=(int(r.sum()), m))) for r, m in zip(rows, (3, 4))]
    dense = torch.zeros(n, 2 + 3 + 4, dtype=torch.float64)
    dense[:, :2] = g
    dense[torch.as_tensor(rows[0]), 2:5] = cols[0]
    dense[torch.as_tensor(rows[1]), 5:9] = cols[1]
    reference = torch.linalg.inv(dense.T @ dense)
    cov, variances = marginal_covariance(g, [(torch.as_tensor(r), c) for r, c in zip(rows, cols)])
    np.testing.assert_allclose(cov.numpy(), reference[:2, :2].numpy(), rtol=1e-9)
    diagonal = torch.diagonal(reference).numpy()
    np.testing.assert_allclose(variances[0].numpy(), diagonal[2:5], rtol=1e-9)
    np.testing.assert_allclose(variances[1].numpy(), diagonal[5:9], rtol=1e-9)


def test_flags_from_constructed_cases():
    # fit_flags alone: each reason from a case built to trip it, and none from a clean one.
    import warnings

    from blase_specutils.fitting.diagnostics import fit_flags
    from blase_specutils.fitting.result import FitQualityWarning

    def search(best_rv=10.0, second=None, at_edge=False):
        minima = [{"rv": best_rv, "vsini": 5.0, "chi2": 1000.0}]
        if second is not None:
            minima.append({"rv": second[0], "vsini": 5.0, "chi2": second[1]})
        return SearchResult(
            rv=np.linspace(-100, 100, 201), vsini=np.array([0.0, 5.0]), chi2=np.zeros((1, 2, 201)),
            n_good=np.array([1000]), best_rv=best_rv, best_vsini=5.0, best_chi2=1000.0,
            minima=minima, at_edge=at_edge,
        )  # fmt: skip

    base = dict(rv=10.0, rv_max=500.0, n_dof=900, n_good=1000, n_free=10, uncertainty_notes={},
                line_stage_undone=False, order_chi2=1.0, order_dof=1, rest_frame_outside=0.0,
                chi2_red=1.0, vsini=5.0, resolution_kms=5.45)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_flags(search=search(), **base) == {}
    cases = {
        "left_search_basin": dict(search=search(best_rv=40.0)),
        "rv_ambiguous": dict(search=search(second=(-60.0, 1010.0))),
        "rv_beyond_rv_max": dict(search=None, rv=620.0),
        "too_few_pixels": dict(search=None, n_dof=0),
        "orders_disagree": dict(search=None, order_chi2=40.0, order_dof=2),
    }
    for code, changes in cases.items():
        with pytest.warns(FitQualityWarning, match=code):
            flags = fit_flags(**{**base, **changes})
        assert code in flags, code
    # a second minimum on the search's edge is not a second basin
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_flags(search=search(second=(100.0, 1001.0)), **base) == {}
    # flags with a warning of their own do not warn twice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flags = fit_flags(**{**base, "search": search(at_edge=True), "line_stage_undone": True,
                             "uncertainty_notes": {"vsini": "v sin i ended at its ceiling"}})
    assert set(flags) == {"search_edge", "line_stage_undone", "vsini_at_bound"}
