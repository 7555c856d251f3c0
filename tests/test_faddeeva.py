"""Exact Voigt profile (core/faddeeva.py) against scipy, finite differences and gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import voigt_profile as scipy_voigt
from scipy.special import wofz

from blase_specutils.core.faddeeva import faddeeva, voigt_profile


def _grid(n_width: int = 9, n_offsets: int = 121):
    """sigma, gamma in [1e-3, 10]; |dx| up to 1000 (sigma + gamma), log-spaced, both signs."""
    widths = np.logspace(-3, 1, n_width)
    unit_offsets = np.logspace(-4, 3, n_offsets)
    unit_offsets = np.concatenate([-unit_offsets[::-1], [0.0], unit_offsets])
    sigma, gamma, unit = np.meshgrid(widths, widths, unit_offsets, indexing="ij")
    return unit * (sigma + gamma), sigma, gamma


def _relative_error_where_meaningful(ours: np.ndarray, dx, sigma, gamma, floor: float = 1e-10):
    """max |ours - ref| / ref over points where ref > floor * peak (peak = profile at dx = 0)."""
    reference = scipy_voigt(dx, sigma, gamma)
    peak = scipy_voigt(np.zeros_like(dx), sigma, gamma)
    meaningful = reference > floor * peak
    assert meaningful.mean() > 0.99  # the criterion must not hide the wings
    return np.max(np.abs(ours - reference)[meaningful] / reference[meaningful])


def test_voigt_float64_matches_scipy_over_wide_domain():
    dx, sigma, gamma = _grid()
    ours = voigt_profile(
        torch.from_numpy(dx), torch.from_numpy(sigma), torch.from_numpy(gamma)
    ).numpy()
    # measured: 2.3e-8 (worst in the core, sigma = 10, gamma = 1e-3)
    assert _relative_error_where_meaningful(ours, dx, sigma, gamma) < 1e-7


def test_voigt_float32_matches_scipy_over_wide_domain():
    dx, sigma, gamma = _grid()
    as32 = [torch.from_numpy(a).to(torch.float32) for a in (dx, sigma, gamma)]
    ours = voigt_profile(*as32).double().numpy()
    # compare with scipy at the float32-rounded inputs; measured 1e-6
    ref_inputs = [a.double().numpy() for a in as32]
    assert _relative_error_where_meaningful(ours, *ref_inputs) < 1e-5
    assert ours.dtype == np.float64 and voigt_profile(*as32).dtype == torch.float32


def test_voigt_limits_are_gaussian_and_lorentzian():
    dx = torch.linspace(-5.0, 5.0, 101, dtype=torch.float64)
    gaussian = torch.exp(-0.5 * (dx / 0.7) ** 2) / (0.7 * math.sqrt(2 * math.pi))
    # gamma = 0 is outside the tested domain; Weideman's absolute error (~1e-14) is the floor
    torch.testing.assert_close(
        voigt_profile(dx, 0.7, 0.0), gaussian, rtol=1e-6, atol=1e-10 * gaussian.max().item()
    )
    lorentzian = 0.3 / (math.pi * (dx**2 + 0.3**2))
    torch.testing.assert_close(voigt_profile(dx, 1e-9, 0.3), lorentzian, rtol=1e-9, atol=0.0)


def test_voigt_integrates_to_one():
    sigma, gamma = 0.3, 0.2
    dx = torch.linspace(-2000.0, 2000.0, 400_001, dtype=torch.float64)
    values = voigt_profile(dx, sigma, gamma)
    area = torch.trapezoid(values, dx).item()
    lorentz_tail = 2 * gamma / (math.pi * 2000.0)  # area beyond |dx| = 2000
    assert abs(area + lorentz_tail - 1.0) < 1e-6


def test_faddeeva_matches_wofz():
    x = np.concatenate([-np.logspace(-3, 6, 60)[::-1], [0.0], np.logspace(-3, 6, 60)])
    y = np.concatenate([[0.0], np.logspace(-6, 4, 40)])
    xx, yy = np.meshgrid(x, y, indexing="ij")
    re, im = faddeeva(torch.from_numpy(xx), torch.from_numpy(yy))
    reference = wofz(xx + 1j * yy)
    relative = np.abs((re.numpy() + 1j * im.numpy()) - reference) / np.abs(reference)
    assert relative.max() < 1e-6
    re32, im32 = faddeeva(torch.from_numpy(xx).float(), torch.from_numpy(yy).float())
    relative32 = np.abs((re32.double().numpy() + 1j * im32.double().numpy()) - reference) / np.abs(
        reference
    )
    assert relative32.max() < 1e-5
    assert re32.dtype == torch.float32


def test_faddeeva_rejects_lower_half_plane_and_nan():
    with pytest.raises(ValueError, match="y must be >= 0"):
        faddeeva(
            torch.zeros(3, dtype=torch.float64), torch.tensor([0.1, -0.1, 0.2], dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="NaN"):
        faddeeva(torch.tensor([float("nan")]), 0.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        faddeeva(np.zeros(3), 0.5)


def test_voigt_rejects_bad_types():
    with pytest.raises(TypeError, match="float32 and float64"):
        voigt_profile(torch.zeros(3, dtype=torch.int64), 1.0, 1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        voigt_profile(np.zeros(3), 1.0, 1.0)


def test_gradcheck_float64_both_regions_and_broadcasting():
    generator = torch.Generator().manual_seed(3)
    # 3 lines x 7 pixels: offsets span core (|z| < 8) and wings (|z| > 8)
    dx = (torch.rand(3, 7, generator=generator, dtype=torch.float64) - 0.5) * 6.0
    dx[:, 0] = 40.0
    sigma = (0.05 + torch.rand(3, 1, generator=generator, dtype=torch.float64)).requires_grad_()
    gamma = (
        0.01 + 0.5 * torch.rand(3, 1, generator=generator, dtype=torch.float64)
    ).requires_grad_()
    dx.requires_grad_()
    assert torch.autograd.gradcheck(
        voigt_profile, (dx, sigma, gamma), eps=1e-6, atol=1e-8, rtol=1e-6
    )
    # scalar widths broadcast over dx
    sigma0 = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    gamma0 = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    dx0 = torch.linspace(-8.0, 8.0, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        voigt_profile, (dx0, sigma0, gamma0), eps=1e-6, atol=1e-8, rtol=1e-6
    )


def _scipy_gradients(dx, sigma, gamma):
    """Central finite differences of scipy.special.voigt_profile; returns (gradients, steps)."""
    gradients, steps = [], []
    for which in range(3):
        args = [dx, sigma, gamma]
        step = 1e-5 * np.maximum(np.abs(args[which]), np.minimum(sigma, gamma))
        plus = list(args)
        minus = list(args)
        plus[which] = args[which] + step
        minus[which] = args[which] - step
        gradients.append((scipy_voigt(*plus) - scipy_voigt(*minus)) / (2 * step))
        steps.append(step)
    return gradients, steps


def test_gradients_match_scipy_finite_differences():
    dx, sigma, gamma = _grid(n_width=5, n_offsets=41)
    tensors = [torch.from_numpy(a).clone().requires_grad_() for a in (dx, sigma, gamma)]
    values = voigt_profile(*tensors)
    values.sum().backward()
    reference, steps = _scipy_gradients(dx, sigma, gamma)
    values = values.detach().numpy()
    for tensor, expected, step, name in zip(tensors, reference, steps, ("dx", "sigma", "gamma")):
        ours = tensor.grad.numpy()
        # finite-difference error: truncation (relative ~1e-10) + rounding of scipy
        # (~1e-14 V / step). Measured worst: 1.2e-5 relative, sigma gradient in a Lorentzian
        # tail inside |z| < 6 (sigma = 10, gamma = 1e-3), where w + z w' cancels to 1e-7 and
        # Weideman's 3e-14 absolute error shows.
        tolerance = 1e-4 * np.abs(expected) + 1e-13 * values / step
        assert np.all(np.abs(ours - expected) <= tolerance), name


def test_sigma_gradient_far_lorentzian_wing_is_analytic():
    # V ~ L + (sigma^2 / 2) L'' far from a Lorentzian-dominated line, so dV/dsigma = sigma L''
    # (finite differences cannot resolve this: it is 1e-10 of V / sigma)
    dx = torch.tensor([1.0e4, -3.0e3, 500.0], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(1e-3, dtype=torch.float64, requires_grad=True)
    gamma = 10.0
    voigt_profile(dx, sigma, torch.tensor(gamma, dtype=torch.float64)).sum().backward()
    x = dx.detach()
    lorentz_second = gamma * (6 * x**2 - 2 * gamma**2) / (math.pi * (x**2 + gamma**2) ** 3)
    torch.testing.assert_close(sigma.grad, (1e-3 * lorentz_second).sum(), rtol=1e-6, atol=0.0)


def test_float32_gradients_match_float64():
    dx, sigma, gamma = _grid(n_width=5, n_offsets=41)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        tensors = [torch.from_numpy(a).to(dtype).requires_grad_() for a in (dx, sigma, gamma)]
        voigt_profile(*tensors).sum().backward()
        grads[dtype] = [t.grad.double().numpy() for t in tensors]
    peak = scipy_voigt(np.zeros_like(dx), sigma, gamma)
    meaningful = scipy_voigt(dx, sigma, gamma) > 1e-10 * peak
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64]):
        nonzero = meaningful & (g64 != 0)
        # measured: 1.1e-6
        assert np.max(np.abs(g32 - g64)[nonzero] / np.abs(g64)[nonzero]) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_inputs_are_finite(dtype):
    dx = torch.tensor([0.0, 1e-30, 1e-8, 1.0, 1e3, 1e8, 1e15, -1e15], dtype=dtype)
    # widths whose values and gradients (up to 1/gamma^2 at the peak) are representable in float32
    for sigma, gamma in [
        (1e-30, 1.0),
        (1.0, 1e-30),
        (1e-30, 1e-8),
        (1e-8, 1e-30),
        (1e-8, 1e-8),
        (1e6, 1e-6),
        (1e-6, 1e6),
    ]:
        tensors = [dx.clone().requires_grad_()]
        tensors += [torch.tensor(v, dtype=dtype, requires_grad=True) for v in (sigma, gamma)]
        values = voigt_profile(*tensors)
        values.sum().backward()
        assert torch.isfinite(values).all(), (sigma, gamma)
        assert (values >= 0).all(), (sigma, gamma)
        for tensor in tensors:
            assert torch.isfinite(tensor.grad).all(), (sigma, gamma)


def test_extreme_lorentzian_far_wing_value():
    # sigma tiny, huge offset: the profile is the Lorentzian gamma / (pi dx^2)
    dx = torch.tensor([1e6, -3e7], dtype=torch.float32)
    values = voigt_profile(dx, 1e-20, 2.0)
    expected = 2.0 / (math.pi * dx.double() ** 2)
    torch.testing.assert_close(values.double(), expected, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize(
    "dtype, value_rtol, grad_rtol", [(torch.float64, 1e-7, 1e-5), (torch.float32, 2e-6, 1e-4)]
)
def test_voigt_with_gradients_matches_scipy_and_autograd(dtype, value_rtol, grad_rtol):
    # The fused engine path: series in the far wings, continued fraction in the ring, Weideman
    # in the core, all three derivatives by hand.
    from blase_specutils.core.faddeeva import FAR_RADIUS, voigt_with_gradients

    rng = np.random.default_rng(5)
    n = 50_000
    sigma = torch.tensor(10 ** rng.uniform(-3, 1, n), dtype=dtype)
    gamma = torch.tensor(10 ** rng.uniform(-3, 1, n), dtype=dtype)
    scale = torch.tensor(rng.uniform(-1, 1, n) * 10 ** rng.uniform(-2, 3, n), dtype=dtype)
    dx = scale * (sigma + gamma)
    z2 = (dx.double() ** 2 + gamma.double() ** 2) / (2 * sigma.double() ** 2)
    assert bool((z2 > FAR_RADIUS**2).any()) and bool((z2 < 36).any())  # every region is hit
    values, d_dx, d_sigma, d_gamma = voigt_with_gradients(dx, sigma, gamma)
    reference = scipy_voigt(dx.double().numpy(), sigma.double().numpy(), gamma.double().numpy())
    peak = scipy_voigt(0.0, sigma.double().numpy(), gamma.double().numpy())
    meaningful = reference > 1e-10 * peak
    relative = np.abs(values.double().numpy() - reference) / reference
    assert relative[meaningful].max() < value_rtol
    x, s, g = (t.clone().requires_grad_() for t in (dx, sigma, gamma))
    grads = torch.autograd.grad(voigt_profile(x, s, g).sum(), (x, s, g))
    for mine, ref in zip((d_dx, d_sigma, d_gamma), grads):
        err = (mine - ref).abs().double() / (ref.abs().double() + 1e-6 * ref.abs().max().double())
        assert float(err[torch.as_tensor(meaningful)].max()) < grad_rtol


def test_chunked_voigt_with_gradients_equals_one_pass(monkeypatch):
    # Chunking only changes how much is in flight at once: the same numbers up to the
    # last-ulp differences of vectorised against scalar tail loops.
    from blase_specutils.core import faddeeva

    rng = np.random.default_rng(9)
    n = 10_000
    dx = torch.tensor(rng.uniform(-3, 3, n))
    sigma = torch.tensor(rng.uniform(0.01, 0.05, n))
    gamma = torch.tensor(rng.uniform(0.005, 0.03, n))
    whole = faddeeva._voigt_with_gradients_flat(dx, sigma, gamma)
    monkeypatch.setattr(faddeeva, "CHUNK_BYTES", 999 * 8)  # 11 chunks, the last one short
    chunked = faddeeva.voigt_with_gradients(dx, sigma, gamma)
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=0)


def _random_voigt_arguments(seed: int, n: int):
    """Offsets from 0.01 to 100 widths, σ in [0.01, 1], γ in [0.001, 1] (float64 tensors)."""
    rng = np.random.default_rng(seed)
    sigma = torch.tensor(10 ** rng.uniform(-2, 0, n))
    gamma = torch.tensor(10 ** rng.uniform(-3, 0, n))
    dx = torch.tensor(rng.uniform(-1, 1, n) * 10 ** rng.uniform(-2, 2, n)) * (sigma + gamma)
    return dx, sigma, gamma


def test_voigt_with_gradients_subsets_match_the_full_evaluation():
    # need_dx=False and gradients=False only drop outputs: what is returned is unchanged.
    from blase_specutils.core.faddeeva import voigt_with_gradients

    dx, sigma, gamma = _random_voigt_arguments(seed=11, n=40_000)
    full = voigt_with_gradients(dx, sigma, gamma)
    no_dx = voigt_with_gradients(dx, sigma, gamma, need_dx=False)
    values_only = voigt_with_gradients(dx, sigma, gamma, gradients=False)
    assert no_dx[1] is None and values_only[1:] == (None, None, None)
    for kept, reference in zip((no_dx[0], no_dx[2], no_dx[3]), (full[0], full[2], full[3])):
        torch.testing.assert_close(kept, reference, rtol=0, atol=0)
    torch.testing.assert_close(values_only[0], full[0], rtol=0, atol=0)


def test_masked_voigt_evaluation_equals_the_gathered_one():
    # The GPU strategy (every formula everywhere, then select) gives the CPU's numbers.
    from blase_specutils.core import faddeeva

    dx, sigma, gamma = _random_voigt_arguments(seed=13, n=30_000)
    dx[:10] = 0.0  # the ring and far formulas divide by zero here: never selected
    gamma[:5] = 0.0
    for need_dx, gradients in [(True, True), (False, True), (True, False)]:
        gathered = faddeeva._voigt_with_gradients_flat(dx, sigma, gamma, need_dx, gradients)
        masked = faddeeva._voigt_with_gradients_masked(dx, sigma, gamma, need_dx, gradients)
        for a, b in zip(masked, gathered):
            assert (a is None) == (b is None)
            if a is not None:
                assert bool(torch.isfinite(a).all())
                torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
