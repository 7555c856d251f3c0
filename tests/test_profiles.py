"""Line profiles (core/profiles.py) against scipy's exact Voigt and analytic limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid
from scipy.special import voigt_profile as scipy_voigt

from blase_specutils.core.profiles import (
    GAUSSIAN_FWHM_PER_SIGMA,
    gaussian,
    lorentzian,
    pseudo_voigt,
    pseudo_voigt_peak,
    tch_fwhm_and_eta,
    voigt,
)

#: sigma and gamma from 1 mÅ to 10 Å on a log grid (both axes), Å.
WIDTHS = np.logspace(-3, 1, 13)


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _approx_voigt_fwhm(sigma: float, gamma: float) -> float:
    """Olivero & Longbothum (1977) FWHM, only used to size the test grid, Å."""
    fl, fg = 2.0 * gamma, GAUSSIAN_FWHM_PER_SIGMA * sigma
    return 0.5346 * fl + math.sqrt(0.2166 * fl**2 + fg**2)


@pytest.mark.parametrize("sigma", WIDTHS)
def test_pseudo_voigt_within_1p5_percent_of_exact_voigt_peak(sigma):
    # Measured worst case over this 13 x 13 grid: 1.27 % of the exact peak (the
    # Thompson–Cox–Hastings approximation's known ~1 % error, at fL/fG of order 1).
    worst = 0.0
    for gamma in WIDTHS:
        width = _approx_voigt_fwhm(sigma, gamma)
        dx = np.linspace(-20 * width, 20 * width, 8001)
        exact = scipy_voigt(dx, sigma, gamma)
        ours = pseudo_voigt(_t(dx), _t(sigma), _t(gamma)).numpy()
        worst = max(worst, np.max(np.abs(ours - exact)) / exact.max())
    assert worst <= 0.015


@pytest.mark.parametrize(
    "sigma, gamma, shape_is",
    [
        (1.0, 1e-12, "gaussian"),
        (0.003, 1e-14, "gaussian"),
        (1e-12, 1.0, "lorentzian"),
        (1e-14, 0.02, "lorentzian"),
    ],
)
def test_pseudo_voigt_pure_limits_are_exact(sigma, gamma, shape_is):
    width = _approx_voigt_fwhm(sigma, gamma)
    dx = np.linspace(-30 * width, 30 * width, 6001)
    ours = pseudo_voigt(_t(dx), _t(sigma), _t(gamma)).numpy()
    if shape_is == "gaussian":
        exact = np.exp(-0.5 * (dx / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    else:
        exact = gamma / math.pi / (dx**2 + gamma**2)
    # the mixing coefficients make eta ~ 1.366 * (2 gamma / f) near the Gaussian limit,
    # so the departure is linear in the tiny width: well below 1e-6 of the peak here.
    assert np.max(np.abs(ours - exact)) / exact.max() < 1e-6
    np.testing.assert_allclose(ours, scipy_voigt(dx, sigma, gamma), rtol=0, atol=1e-6 * exact.max())


@pytest.mark.parametrize("sigma", [1e-3, 0.05, 1.0, 10.0])
@pytest.mark.parametrize("gamma", [1e-3, 0.05, 1.0, 10.0])
def test_pseudo_voigt_is_area_normalised(sigma, gamma):
    # log-spaced offsets from 1e-5 to 1e5 FWHM: the Lorentzian tail beyond 1e5 FWHM holds
    # < 2 gamma / (pi 1e5 f) < 1e-5 of the area.
    f = float(tch_fwhm_and_eta(_t(sigma), _t(gamma))[0])
    half = np.logspace(-5, 5, 40001) * f
    dx = np.concatenate([-half[::-1], [0.0], half])
    area = trapezoid(pseudo_voigt(_t(dx), _t(sigma), _t(gamma)).numpy(), dx)
    assert abs(area - 1.0) < 1e-3


def test_gaussian_and_lorentzian_building_blocks_are_normalised():
    dx = np.linspace(-50, 50, 200001)
    assert abs(trapezoid(gaussian(_t(dx), _t(0.7)).numpy(), dx) - 1) < 1e-10
    # Lorentzian on ±50 with gamma = 0.01: missing tail 2 gamma / (pi 50) = 1.27e-4
    area = trapezoid(lorentzian(_t(dx), _t(0.01)).numpy(), dx)
    assert area == pytest.approx(1 - 2 * 0.01 / (math.pi * 50), abs=2e-6)


def test_tch_gaussian_limit():
    sigma = _t([1e-3, 0.1, 1.0, 10.0])
    fwhm, eta = tch_fwhm_and_eta(sigma, 1e-12 * sigma)
    np.testing.assert_allclose(fwhm.numpy(), 2.354820045 * sigma.numpy(), rtol=1e-9)
    assert torch.all(eta.abs() < 1e-10)


def test_tch_lorentzian_limit():
    gamma = _t([1e-3, 0.1, 1.0, 10.0])
    fwhm, eta = tch_fwhm_and_eta(1e-12 * gamma, gamma)
    np.testing.assert_allclose(fwhm.numpy(), 2.0 * gamma.numpy(), rtol=1e-9)
    # eta(1) = 1.36603 - 0.47719 + 0.11116 = 1.0 exactly
    np.testing.assert_allclose(eta.numpy(), 1.0, atol=1e-9)


def test_tch_fwhm_is_close_to_exact_voigt_fwhm():
    # The TCH quintic against the numerically solved half maximum of scipy's Voigt over
    # the 13 x 13 width grid: measured worst relative error 0.43 % (the quintic's known
    # accuracy is a few 1e-3).
    from scipy.optimize import brentq

    worst = 0.0
    for sigma in WIDTHS[::2]:
        for gamma in WIDTHS[::2]:
            peak = scipy_voigt(0.0, sigma, gamma)
            x_half = brentq(lambda x: scipy_voigt(x, sigma, gamma) - 0.5 * peak, 0, 1000)
            fwhm = float(tch_fwhm_and_eta(_t(sigma), _t(gamma))[0])
            worst = max(worst, abs(fwhm / (2 * x_half) - 1))
    assert worst < 5e-3


def test_eta_is_monotonic_in_lorentzian_fraction():
    gamma = _t(np.logspace(-4, 4, 200))
    _, eta = tch_fwhm_and_eta(torch.ones_like(gamma), gamma)
    assert torch.all(torch.diff(eta) > 0)
    assert float(eta.min()) >= 0 and float(eta.max()) <= 1 + 1e-9


def test_pseudo_voigt_peak_equals_profile_at_zero():
    sigma, gamma = np.meshgrid(WIDTHS, WIDTHS, indexing="ij")
    peak = pseudo_voigt_peak(_t(sigma), _t(gamma)).numpy()
    at_zero = pseudo_voigt(
        torch.zeros(sigma.shape, dtype=torch.float64), _t(sigma), _t(gamma)
    ).numpy()
    np.testing.assert_allclose(peak, at_zero, rtol=1e-13)
    # and it is the maximum of the profile
    dx = _t(np.linspace(-0.01, 0.01, 101))
    assert float(pseudo_voigt(dx, _t(0.01), _t(0.01)).max()) <= float(
        pseudo_voigt_peak(_t(0.01), _t(0.01))
    )


def test_exact_voigt_wrapper_matches_scipy():
    dx = np.linspace(-3, 3, 601)
    for sigma, gamma in [(0.02, 0.01), (0.5, 0.5), (1.0, 1e-3)]:
        ours = voigt(_t(dx), _t(sigma), _t(gamma)).numpy()
        np.testing.assert_allclose(ours, scipy_voigt(dx, sigma, gamma), rtol=1e-6, atol=0)


def test_pseudo_voigt_gradients_match_finite_differences():
    dx = _t(np.linspace(-0.3, 0.3, 13)).requires_grad_(True)
    sigma = _t(0.04).requires_grad_(True)
    gamma = _t(0.03).requires_grad_(True)
    assert torch.autograd.gradcheck(
        pseudo_voigt, (dx, sigma, gamma), eps=1e-7, atol=1e-7, rtol=1e-6
    )


def test_float32_profile_matches_float64():
    dx = np.linspace(-0.5, 0.5, 1001)
    p64 = pseudo_voigt(_t(dx), _t(0.03), _t(0.02)).numpy()
    p32 = (
        pseudo_voigt(torch.tensor(dx, dtype=torch.float32), torch.tensor(0.03), torch.tensor(0.02))
        .double()
        .numpy()
    )
    assert np.max(np.abs(p32 - p64)) / p64.max() < 1e-6
