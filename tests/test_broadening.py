"""Tests for blase_specutils.core.broadening against independent references."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from blase_specutils.core.broadening import (
    SPEED_OF_LIGHT_KMS,
    InstrumentalBroadening,
    RotationalBroadening,
    convolve_same,
    gaussian_kernel,
    gaussian_kernel_half_width,
    log_uniform_grid,
    rotation_kernel,
    rotation_kernel_half_width,
)

F64 = torch.float64


def rotation_profile(velocity, vsini, epsilon):
    """Gray's rotation profile G(v), 1/(km/s), written independently of the module."""
    x = velocity / vsini
    if abs(x) >= 1:
        return 0.0
    numerator = 2 * (1 - epsilon) * math.sqrt(1 - x * x) + 0.5 * math.pi * epsilon * (1 - x * x)
    return numerator / (math.pi * vsini * (1 - epsilon / 3))


def quad_rotation_kernel(vsini, step, epsilon, half_width):
    """Bin integrals of G by adaptive quadrature (scipy), k = -K..K."""
    out = []
    for k in range(-half_width, half_width + 1):
        lo = max((k - 0.5) * step, -vsini)
        hi = min((k + 0.5) * step, vsini)
        if hi <= lo:
            out.append(0.0)
            continue
        value, _ = integrate.quad(
            rotation_profile, lo, hi, args=(vsini, epsilon), epsabs=1e-15, epsrel=1e-13, limit=200
        )
        out.append(value)
    return np.array(out)


# --------------------------------------------------------------------------- grid
def test_log_uniform_grid_constant_velocity_step_and_coverage():
    grid = log_uniform_grid(8079.0, 12785.0, step_kms=0.5).numpy()
    assert grid.dtype == np.float64
    assert grid[0] == 8079.0
    assert grid[-1] >= 12785.0
    assert grid[-2] < 12785.0
    velocity_steps = SPEED_OF_LIGHT_KMS * np.diff(np.log(grid))
    np.testing.assert_allclose(velocity_steps, 0.5, rtol=1e-9)
    # HPF numbers quoted in the paper (section 5.1): 0.013 - 0.024 A per sample
    spacing = np.diff(grid)
    assert 0.0130 < spacing.min() < 0.0140 and 0.0210 < spacing.max() < 0.0215


def test_log_uniform_grid_exact_multiple_is_not_overshot():
    step = 1.0
    wmax = 10000.0 * math.exp(10 * step / SPEED_OF_LIGHT_KMS)
    grid = log_uniform_grid(10000.0, wmax, step_kms=step)
    assert grid.shape == (11,)
    assert log_uniform_grid(1.0, 2.0, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize(
    "args, match",
    [
        ((0.0, 10.0), "wavelength_min"),
        ((10.0, 10.0), "wavelength_max"),
        ((10.0, float("nan")), "wavelength_max"),
        ((10.0, 20.0, -0.5), "step_kms"),
    ],
)
def test_log_uniform_grid_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        log_uniform_grid(*args)


# --------------------------------------------------------------------------- rotation
@pytest.mark.parametrize("vsini", [0.0, 0.1, 0.25, 0.3, 0.74, 3.0, 50.0, 500.0])
@pytest.mark.parametrize("epsilon", [0.0, 0.6, 1.0])
def test_rotation_kernel_sums_to_one(vsini, epsilon):
    kernel = rotation_kernel(vsini, 0.5, limb_darkening=epsilon, vsini_max=max(vsini, 1.0))
    assert kernel.dtype == F64
    assert kernel.shape[0] % 2 == 1
    assert abs(float(kernel.sum()) - 1.0) < 1e-13
    assert float(kernel.min()) >= 0.0
    np.testing.assert_allclose(kernel.numpy(), kernel.flip(0).numpy(), atol=0, rtol=0)


@pytest.mark.parametrize("epsilon", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("vsini, step", [(50.0, 0.5), (50.0, 0.05), (0.3, 0.5), (1.37, 0.5)])
def test_rotation_kernel_matches_quadrature(vsini, step, epsilon):
    half_width = rotation_kernel_half_width(vsini, step)
    kernel = rotation_kernel(vsini, step, limb_darkening=epsilon, half_width=half_width).numpy()
    reference = quad_rotation_kernel(vsini, step, epsilon, half_width)
    np.testing.assert_allclose(kernel, reference, rtol=0, atol=1e-10)
    # the half width is tight: the outermost bins carry weight
    assert kernel[0] > 0


def test_rotation_kernel_tends_to_delta_below_half_a_step():
    for vsini in (0.0, 1e-9, 0.1, 0.2499):
        kernel = rotation_kernel(vsini, 0.5, half_width=3).numpy()
        expected = np.zeros(7)
        expected[3] = 1.0
        np.testing.assert_allclose(kernel, expected, atol=1e-15)
    # just above half a step the wings switch on continuously
    kernel = rotation_kernel(0.2501, 0.5, half_width=3).numpy()
    assert 0 < kernel[2] < 1e-5


def test_rotation_kernel_default_half_width_and_vsini_max():
    assert rotation_kernel_half_width(50.0, 0.5) == 100
    assert rotation_kernel(50.0, 0.5).shape == (201,)
    assert rotation_kernel(10.0, 0.5, vsini_max=100.0).shape == (401,)
    assert rotation_kernel(0.0, 0.5).shape == (1,)


def test_rotation_kernel_gradcheck_vsini_and_limb_darkening():
    for vsini0 in (0.9, 7.3, 50.2):
        vsini = torch.tensor(vsini0, dtype=F64, requires_grad=True)
        epsilon = torch.tensor(0.55, dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda v, e: rotation_kernel(v, 0.5, limb_darkening=e, half_width=110),
            (vsini, epsilon),
            eps=1e-6,
            atol=1e-8,
        )


def test_rotation_kernel_gradient_finite_at_zero_and_at_bin_edges():
    for vsini0 in (0.0, 0.25, 0.75, 1.25, 50.0):  # 0.75 = 1.5 steps: x = 1 on a bin edge
        vsini = torch.tensor(vsini0, dtype=F64, requires_grad=True)
        epsilon = torch.tensor(0.6, dtype=F64, requires_grad=True)
        kernel = rotation_kernel(vsini, 0.5, limb_darkening=epsilon, half_width=120)
        (kernel * torch.linspace(-1, 1, kernel.shape[0], dtype=F64) ** 2).sum().backward()
        assert torch.isfinite(vsini.grad) and torch.isfinite(epsilon.grad)
    vsini = torch.tensor(0.0, dtype=F64, requires_grad=True)
    rotation_kernel(vsini, 0.5, half_width=5).pow(2).sum().backward()
    assert float(vsini.grad) == 0.0  # exactly a delta below half a step


def test_rotation_kernel_second_moment_sensitivity_is_analytic():
    # the variance of G scales as vsini^2, so d(variance)/d(vsini) = 2 variance / vsini;
    # pixel integration adds step^2/12 (Sheppard), independent of vsini
    vsini = torch.tensor(80.0, dtype=F64, requires_grad=True)
    step = 0.05
    kernel = rotation_kernel(vsini, step, limb_darkening=0.6, half_width=1700)
    velocity = (torch.arange(kernel.shape[0], dtype=F64) - 1700) * step
    variance = (kernel * velocity**2).sum()
    variance.backward()
    # independent continuous variance from quadrature, plus the bin term step^2/12
    continuous = integrate.quad(
        lambda v: v * v * rotation_profile(v, 80.0, 0.6), -80, 80, epsabs=1e-12
    )[0]
    assert float(variance.detach()) == pytest.approx(continuous + step**2 / 12, rel=1e-6)
    # the limb sits on a bin centre here, so the Sheppard term is only nearly
    # constant in vsini: the analytic slope holds to 1e-5, finite differences to 1e-8
    assert float(vsini.grad) == pytest.approx(2 * continuous / 80.0, rel=1e-5)
    h = 1e-4

    def variance_at(value):
        kernel = rotation_kernel(torch.tensor(value, dtype=F64), step, half_width=1700)
        return float((kernel * velocity**2).sum())

    finite = (variance_at(80.0 + h) - variance_at(80.0 - h)) / (2 * h)
    assert float(vsini.grad) == pytest.approx(finite, rel=1e-8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vsini=-1.0, step_kms=0.5), "vsini"),
        (dict(vsini=float("nan"), step_kms=0.5), "vsini"),
        (dict(vsini=10.0, step_kms=0.0), "step_kms"),
        (dict(vsini=10.0, step_kms=0.5, limb_darkening=1.5), "limb_darkening"),
        (dict(vsini=10.0, step_kms=0.5, half_width=5), "does not fit"),
        (dict(vsini=10.0, step_kms=0.5, half_width=-1), "half_width"),
        (dict(vsini=torch.ones(2), step_kms=0.5), "scalar"),
    ],
)
def test_rotation_kernel_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rotation_kernel(**kwargs)


# --------------------------------------------------------------------------- gaussian
@pytest.mark.parametrize("resolving_power", [20000.0, 45000.0, 55000.0, 120000.0])
def test_gaussian_kernel_moments_and_reference(resolving_power):
    step = 0.5
    kernel = gaussian_kernel(resolving_power, step)
    half_width = (kernel.shape[0] - 1) // 2
    sigma = SPEED_OF_LIGHT_KMS / (2 * math.sqrt(2 * math.log(2)) * resolving_power)
    assert half_width == math.ceil(6 * sigma / step)
    assert abs(float(kernel.sum()) - 1) < 1e-14
    velocity = (np.arange(-half_width, half_width + 1)) * step
    k = kernel.numpy()
    assert abs((k * velocity).sum()) < 1e-14
    second_moment = (k * velocity**2).sum()
    assert second_moment == pytest.approx(sigma**2 + step**2 / 12, rel=1e-6)
    # bin probabilities from scipy's normal CDF, renormalised over the window
    edges = (np.arange(-half_width, half_width + 2) - 0.5) * step
    reference = np.diff(stats.norm.cdf(edges, scale=sigma))
    np.testing.assert_allclose(k, reference / reference.sum(), rtol=0, atol=1e-13)


def test_gaussian_kernel_fwhm_is_c_over_r():
    resolving_power = 55000.0
    step = 0.01
    kernel = gaussian_kernel(resolving_power, step).numpy()
    half_width = (kernel.size - 1) // 2
    velocity = np.arange(-half_width, half_width + 1) * step
    peak = kernel.max()
    right = velocity >= 0
    half_right = np.interp(-peak / 2, -kernel[right], velocity[right])
    assert 2 * half_right == pytest.approx(SPEED_OF_LIGHT_KMS / resolving_power, rel=1e-4)


def test_gaussian_kernel_gradcheck_resolving_power():
    resolving_power = torch.tensor(55000.0, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda r: gaussian_kernel(r, 0.5, half_width=30), (resolving_power,), eps=1e-3, atol=1e-9
    )


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((-5.0, 0.5), {}, "resolving_power"),
        ((55000.0, 0.0), {}, "step_kms"),
        ((55000.0, 0.5), dict(n_sigma=0), "n_sigma"),
        ((55000.0, 0.5), dict(half_width=-2), "half_width"),
        ((float("inf"), 0.5), dict(half_width=2), "resolving_power"),
    ],
)
def test_gaussian_kernel_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_kernel(*args, **kwargs)


def test_gaussian_half_width_helper():
    assert gaussian_kernel_half_width(55000.0, 0.5) == 28
    assert gaussian_kernel(55000.0, 0.5).shape == (57,)


# --------------------------------------------------------------------------- convolution
@pytest.mark.parametrize("method", ["direct", "fft", "auto"])
@pytest.mark.parametrize(
    "n_flux, kernel_length", [(1000, 1), (1000, 3), (1000, 57), (997, 201), (50, 81)]
)
def test_convolve_same_matches_numpy_reference(method, n_flux, kernel_length):
    rng = np.random.default_rng(kernel_length + n_flux)
    flux = rng.normal(size=(3, n_flux))
    kernel = rng.random(kernel_length)  # asymmetric: checks orientation
    half = kernel_length // 2
    reference = np.stack(
        [np.convolve(np.pad(row, half, mode="edge"), kernel, mode="valid") for row in flux]
    )
    result = convolve_same(torch.from_numpy(flux), torch.from_numpy(kernel), method=method)
    assert result.shape == (3, n_flux)
    np.testing.assert_allclose(
        result.numpy(), reference, rtol=0, atol=1e-10 * np.abs(reference).max()
    )
    single = convolve_same(torch.from_numpy(flux[1]), torch.from_numpy(kernel), method=method)
    np.testing.assert_allclose(
        single.numpy(), reference[1], rtol=0, atol=1e-10 * np.abs(reference).max()
    )


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_convolve_same_gradcheck_flux_and_kernel(method):
    generator = torch.Generator().manual_seed(3)
    flux = torch.randn(2, 40, dtype=F64, generator=generator, requires_grad=True)
    kernel = torch.rand(9, dtype=F64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, k: convolve_same(f, k, method=method), (flux, kernel))


def absorption_line(n_samples, step, depth, sigma_kms, centre_index=None):
    velocity = (
        np.arange(n_samples) - (n_samples // 2 if centre_index is None else centre_index)
    ) * step
    return 1 - depth * np.exp(-0.5 * (velocity / sigma_kms) ** 2)


@pytest.mark.parametrize(
    "make_kernel",
    [
        lambda: rotation_kernel(50.0, 0.5, limb_darkening=0.6),
        lambda: rotation_kernel(3.3, 0.5, limb_darkening=0.2, half_width=20),
        lambda: gaussian_kernel(55000.0, 0.5),
        lambda: gaussian_kernel(30000.0, 0.5),
    ],
)
def test_convolution_conserves_equivalent_width(make_kernel):
    step = 0.5
    flux = absorption_line(6000, step, depth=0.7, sigma_kms=4.0)
    kernel = make_kernel()
    broadened = convolve_same(torch.from_numpy(flux), kernel).numpy()
    width_before = np.sum(1 - flux) * step
    width_after = np.sum(1 - broadened) * step
    assert width_after == pytest.approx(width_before, rel=1e-8)
    # the line did get broader and shallower
    assert broadened.min() > flux.min() + 1e-4


@pytest.mark.parametrize("epsilon", [0.0, 0.6, 1.0])
def test_rotational_broadening_of_narrow_line_has_profile_fwhm(epsilon):
    step, vsini = 0.1, 100.0
    flux = absorption_line(4001, step, depth=0.01, sigma_kms=0.3)
    kernel = rotation_kernel(vsini, step, limb_darkening=epsilon)
    absorption = 1 - convolve_same(torch.from_numpy(flux), kernel).numpy()
    velocity = (np.arange(absorption.size) - absorption.size // 2) * step
    half_max = absorption.max() / 2
    right = velocity >= 0
    half_right = np.interp(-half_max, -absorption[right], velocity[right])

    def shape(x):  # G(x)/G(0) - 1/2, unnormalised rotation profile
        value = 2 * (1 - epsilon) * math.sqrt(1 - x * x) + 0.5 * math.pi * epsilon * (1 - x * x)
        return value / (2 * (1 - epsilon) + 0.5 * math.pi * epsilon) - 0.5

    x_half = optimize.brentq(shape, 0.0, 1.0, xtol=1e-14)
    if epsilon == 0.0:
        assert x_half == pytest.approx(math.sqrt(3) / 2, rel=1e-12)
    if epsilon == 1.0:
        assert x_half == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    assert 2 * half_right == pytest.approx(2 * x_half * vsini, rel=2e-3)


def test_convolve_same_edges_replicate_and_reject_bad_input():
    flux = torch.linspace(1.0, 2.0, 30, dtype=F64)
    out = convolve_same(torch.ones(30, dtype=F64) * 3, gaussian_kernel(20000.0, 2.0))
    np.testing.assert_allclose(out.numpy(), 3.0, rtol=1e-14)
    with pytest.raises(ValueError, match="odd length"):
        convolve_same(flux, torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match=r"\[N\] or \[B, N\]"):
        convolve_same(flux.reshape(1, 1, 30), torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="method"):
        convolve_same(flux, torch.ones(3, dtype=F64), method="magic")
    with pytest.raises(TypeError, match="torch.Tensor"):
        convolve_same(flux.numpy(), torch.ones(3, dtype=F64))


# --------------------------------------------------------------------------- modules
def test_rotational_broadening_module_forward_and_gradient():
    module = RotationalBroadening(vsini=12.0, limb_darkening=0.6, step_kms=0.5, vsini_max=40.0)
    assert module.half_width == 80
    flux = torch.from_numpy(absorption_line(2000, 0.5, depth=0.6, sigma_kms=2.0))
    out = module(flux)
    reference = convolve_same(flux, rotation_kernel(12.0, 0.5, half_width=80))
    np.testing.assert_allclose(out.detach().numpy(), reference.numpy(), rtol=0, atol=1e-14)
    out.sum().backward()  # the sum is conserved: zero derivative of the total
    assert abs(float(module.vsini.grad)) < 1e-9
    module.zero_grad()
    (module(flux) - 1).pow(2).sum().backward()
    assert float(module.vsini.grad) != 0.0
    assert module.limb_darkening.grad is None  # not fitted by default
    # the profile is even in vsini and held inside the kernel
    with torch.no_grad():
        module.vsini.fill_(-12.0)
    np.testing.assert_allclose(module(flux).detach().numpy(), reference.numpy(), atol=1e-14)
    with torch.no_grad():
        module.vsini.fill_(90.0)
    assert float(module.effective_vsini().detach()) == 40.0
    assert abs(float(module.kernel().detach().sum()) - 1) < 1e-13


def test_rotational_broadening_module_gradients_match_function_and_finite_differences():
    module = RotationalBroadening(vsini=6.0, step_kms=0.5, vsini_max=10.0, fit_limb_darkening=True)
    flux = torch.from_numpy(absorption_line(200, 0.5, depth=0.6, sigma_kms=1.5))

    def broadened(vsini, epsilon):
        with torch.no_grad():
            module.vsini.copy_(vsini)
            module.limb_darkening.copy_(epsilon)
            return module(flux)

    vsini = torch.tensor(6.0, dtype=F64)
    epsilon = torch.tensor(0.6, dtype=F64)
    out = module(flux)
    jac_v, jac_e = torch.autograd.functional.jacobian(
        lambda v, e: convolve_same(flux, rotation_kernel(v, 0.5, limb_darkening=e, half_width=20)),
        (vsini, epsilon),
    )
    weights = (torch.arange(200.0, dtype=F64) - 90.0) ** 2  # sensitive to the width
    grad_v, grad_e = torch.autograd.grad(
        (out * weights).sum(), (module.vsini, module.limb_darkening)
    )
    assert float(grad_v) == pytest.approx(float((jac_v * weights).sum()), rel=1e-10)
    assert float(grad_e) == pytest.approx(float((jac_e * weights).sum()), rel=1e-10)
    # finite difference in vsini through the module
    h = 1e-5
    finite = (broadened(vsini + h, epsilon) - broadened(vsini - h, epsilon)) / (2 * h)
    assert float((finite * weights).sum()) == pytest.approx(float(grad_v), rel=1e-6)
    assert abs(float(grad_v)) > 1.0 and abs(float(grad_e)) > 1e-3


def test_rotational_broadening_module_rejects_bad_input():
    with pytest.raises(ValueError, match="vsini"):
        RotationalBroadening(vsini=-2.0)
    with pytest.raises(ValueError, match="vsini_max"):
        RotationalBroadening(vsini=20.0, vsini_max=10.0)
    with pytest.raises(ValueError, match="limb_darkening"):
        RotationalBroadening(vsini=2.0, limb_darkening=-0.1)


def test_instrumental_broadening_module():
    fixed = InstrumentalBroadening(resolving_power=55000.0, step_kms=0.5)
    assert float(fixed.resolving_power.detach()) == pytest.approx(55000.0, rel=1e-14)
    assert not fixed.log_resolving_power.requires_grad
    flux = torch.from_numpy(absorption_line(1000, 0.5, depth=0.8, sigma_kms=1.0))
    out = fixed(flux)
    np.testing.assert_allclose(
        out.numpy(), convolve_same(flux, gaussian_kernel(55000.0, 0.5)).numpy(), atol=1e-15
    )
    assert fixed.kernel() is fixed.kernel()  # cached while fixed
    with torch.no_grad():
        fixed.log_resolving_power.fill_(math.log(30000.0))
    np.testing.assert_allclose(
        fixed.kernel().numpy(), gaussian_kernel(30000.0, 0.5, half_width=28).numpy(), atol=1e-15
    )
    fixed.to(torch.float32)
    assert fixed(flux.float()).dtype == torch.float32

    fitted = InstrumentalBroadening(resolving_power=55000.0, step_kms=0.5, fit=True)
    assert fitted.half_width == gaussian_kernel_half_width(55000.0 / 2.0, 0.5)
    (fitted(flux) - flux).pow(2).sum().backward()
    assert float(fitted.log_resolving_power.grad) < 0  # higher R -> closer to the input
    with pytest.raises(ValueError, match="resolving_power"):
        InstrumentalBroadening(resolving_power=0.0)
