"""Tests for blase_specutils.core.resample against an explicit-loop reference."""

import numpy as np
import pytest
import torch

from blase_specutils.core.resample import AUTO_CSR_MIN_NNZ, PixelAverager, pixel_edges_from_centers

F64 = torch.float64
METHODS = ["csr", "index_add"]


def reference_means(fine_wavelength, fine_flux, pixel_bounds):
    """Mean of the piecewise-constant fine flux over each pixel's covered part.

    Written with plain loops: fine bin j spans the midpoints to its neighbours
    (half a step beyond the outer samples); the integral over [lo, hi] is the
    sum of flux times overlap length.
    """
    n = len(fine_wavelength)
    lower_edges, upper_edges = [], []
    for j in range(n):
        if j == 0:
            lower_edges.append(fine_wavelength[0] - (fine_wavelength[1] - fine_wavelength[0]) / 2)
        else:
            lower_edges.append((fine_wavelength[j - 1] + fine_wavelength[j]) / 2)
        if j == n - 1:
            upper_edges.append(
                fine_wavelength[-1] + (fine_wavelength[-1] - fine_wavelength[-2]) / 2
            )
        else:
            upper_edges.append((fine_wavelength[j] + fine_wavelength[j + 1]) / 2)
    means, coverage = [], []
    for lo, hi in pixel_bounds:
        integral = 0.0
        covered = 0.0
        for j in range(n):
            overlap = min(hi, upper_edges[j]) - max(lo, lower_edges[j])
            if overlap > 0:
                integral += fine_flux[j] * overlap
                covered += overlap
        means.append(integral / covered if covered > 0 else 0.0)
        coverage.append(covered / (hi - lo))
    return np.array(means), np.array(coverage)


def random_case(seed, n_fine=60):
    rng = np.random.default_rng(seed)
    fine = np.cumsum(rng.uniform(0.5, 1.5, n_fine)) + 100.0  # non-uniform steps
    flux = rng.normal(size=n_fine)
    return fine, flux


# --------------------------------------------------------------------------- edges
def test_pixel_edges_from_centers():
    np.testing.assert_array_equal(pixel_edges_from_centers([1.0, 2.0, 4.0]), [0.5, 1.5, 3.0, 5.0])
    edges = pixel_edges_from_centers(torch.tensor([10.0, 10.5], dtype=F64))
    assert edges.dtype == np.float64
    np.testing.assert_array_equal(edges, [9.75, 10.25, 10.75])


@pytest.mark.parametrize(
    "centers, match",
    [
        ([1.0], "at least 2"),
        ([[1.0, 2.0]], "1-D"),
        ([1.0, 1.0, 2.0], "strictly increasing"),
        ([1.0, np.nan], "non-finite"),
    ],
)
def test_pixel_edges_from_centers_rejects_bad_input(centers, match):
    with pytest.raises(ValueError, match=match):
        pixel_edges_from_centers(centers)


# --------------------------------------------------------------------------- reference
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_reference_contiguous_edges(method, seed):
    fine, flux = random_case(seed)
    rng = np.random.default_rng(seed + 10)
    # pixels of 1-4 fine steps, starting before the fine grid and ending after it
    data_edges = np.cumsum(np.r_[fine[0] - 2.3, rng.uniform(1.0, 4.0, 30)])
    data_edges = data_edges[data_edges < fine[-1] + 3.0]
    averager = PixelAverager(fine, data_edges, method=method)
    bounds = np.stack([data_edges[:-1], data_edges[1:]], axis=1)
    expected, coverage = reference_means(fine, flux, bounds)
    result = averager(torch.from_numpy(flux))
    assert result.dtype == F64 and result.shape == (len(bounds),)
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(averager.coverage.numpy(), coverage, rtol=0, atol=1e-12)
    assert averager.coverage[0] < 1  # partial coverage at the blue end
    # batch dimensions
    batch = np.stack([flux, 2 * flux + 1])
    empty = averager.empty.numpy()
    np.testing.assert_array_equal(empty, coverage == 0)
    np.testing.assert_allclose(
        averager(torch.from_numpy(batch)).numpy(),
        np.stack([expected, np.where(empty, 0.0, 2 * expected + 1)]),
        rtol=0,
        atol=1e-12,
    )
    assert averager(torch.from_numpy(batch).reshape(2, 1, -1)).shape == (2, 1, len(bounds))


@pytest.mark.parametrize("method", METHODS)
def test_gaps_between_orders_and_unordered_pixels(method):
    fine, flux = random_case(5, n_fine=80)
    order_a = np.linspace(fine[3] + 0.1, fine[30] - 0.2, 9)
    order_b = np.linspace(fine[45] + 0.37, fine[70] + 0.05, 12)
    bounds = np.concatenate(
        [np.stack([e[:-1], e[1:]], axis=1) for e in (order_b, order_a)]  # red order first
    )
    averager = PixelAverager(fine, bounds, method=method)
    expected, coverage = reference_means(fine, flux, bounds)
    flux_t = torch.from_numpy(flux).requires_grad_(True)
    result = averager(flux_t)
    np.testing.assert_allclose(result.detach().numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(averager.coverage.numpy(), 1.0, rtol=0, atol=1e-12)
    result.sum().backward()
    grad = flux_t.grad.numpy()
    # fine samples in the gap between the orders and beyond them receive no gradient
    assert np.all(grad[33:44] == 0) and np.all(grad[:2] == 0) and np.all(grad[73:] == 0)
    assert np.all(grad[5:29] > 0) and np.all(grad[47:69] > 0)


def test_methods_agree_on_a_large_case():
    rng = np.random.default_rng(7)
    fine = np.exp(np.linspace(np.log(8000.0), np.log(8200.0), 12000))
    data_edges = np.sort(rng.uniform(8001.0, 8199.0, 3000))
    flux = torch.from_numpy(rng.normal(size=(2, fine.size)))
    csr = PixelAverager(fine, data_edges, method="csr")
    index_add = PixelAverager(fine, data_edges, method="index_add")
    np.testing.assert_allclose(csr(flux).numpy(), index_add(flux).numpy(), rtol=0, atol=1e-13)
    auto = PixelAverager(fine, data_edges)
    assert auto.method == ("csr" if auto.nnz >= AUTO_CSR_MIN_NNZ else "index_add")


# --------------------------------------------------------------------------- science
@pytest.mark.parametrize("method", METHODS)
def test_linear_function_preserved_where_fully_covered(method):
    fine = 5000.0 + 0.02 * np.arange(500)  # uniform: each bin is centred on its sample
    fine_edges = pixel_edges_from_centers(fine)
    slope, intercept = 0.37, -3.0
    flux = torch.from_numpy(intercept + slope * fine)
    # pixels made of whole fine bins: the piecewise-constant mean is exact
    data_edges = fine_edges[10:491:5]
    result = PixelAverager(fine, data_edges, method=method)(flux).numpy()
    centres = 0.5 * (data_edges[1:] + data_edges[:-1])
    np.testing.assert_allclose(result, intercept + slope * centres, rtol=1e-13)
    # arbitrary pixel edges: a constant is exact, a line is within slope x fine step
    rng = np.random.default_rng(3)
    data_edges = np.sort(rng.uniform(fine_edges[0], fine_edges[-1], 40))
    averager = PixelAverager(fine, data_edges, method=method)
    np.testing.assert_allclose(
        averager(torch.full((500,), 2.5, dtype=F64)).numpy(), 2.5, rtol=1e-14
    )
    centres = 0.5 * (data_edges[1:] + data_edges[:-1])
    error = averager(flux).numpy() - (intercept + slope * centres)
    assert np.max(np.abs(error)) <= slope * 0.02


@pytest.mark.parametrize("method", METHODS)
def test_flux_conservation_contiguous_edges(method):
    fine, flux = random_case(11, n_fine=200)
    fine_edges = pixel_edges_from_centers(fine)
    rng = np.random.default_rng(4)
    inner = np.sort(rng.uniform(fine_edges[0], fine_edges[-1], 37))
    data_edges = np.r_[fine_edges[0], inner, fine_edges[-1]]
    means = PixelAverager(fine, data_edges, method=method)(torch.from_numpy(flux)).numpy()
    integral_data = np.sum(means * np.diff(data_edges))
    integral_fine = np.sum(flux * np.diff(fine_edges))
    assert integral_data == pytest.approx(integral_fine, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_partial_coverage_at_the_ends(method):
    fine = np.arange(10, dtype=float)  # bins [-0.5, 9.5]
    flux = torch.arange(10, dtype=F64) ** 2
    bounds = np.array([[-1.5, 0.5], [8.5, 10.5], [3.25, 4.75]])
    averager = PixelAverager(fine, bounds, method=method)
    np.testing.assert_allclose(averager.coverage.numpy(), [0.5, 0.5, 1.0], rtol=1e-15)
    # [-0.5, 0.5] holds only sample 0; [8.5, 9.5] only sample 9;
    # [3.25, 4.75]: a quarter of bin 3, all of bin 4, a quarter of bin 5
    np.testing.assert_allclose(
        averager(flux).numpy(), [0.0, 81.0, (9 * 0.25 + 16 * 1.0 + 25 * 0.25) / 1.5], rtol=1e-15
    )
    assert not averager.empty.any()


@pytest.mark.parametrize("method", METHODS)
def test_empty_pixels_are_zero_and_flagged(method):
    fine = np.arange(10, dtype=float)
    bounds = np.array([[-5.0, -1.0], [2.0, 3.0], [9.5, 12.0], [20.0, 21.0]])
    averager = PixelAverager(fine, bounds, method=method)
    np.testing.assert_array_equal(averager.empty.numpy(), [True, False, True, True])
    np.testing.assert_array_equal(averager.coverage.numpy(), [0.0, 1.0, 0.0, 0.0])
    flux = (torch.arange(10, dtype=F64) + 1).requires_grad_(True)
    result = averager(flux)
    np.testing.assert_allclose(result.detach().numpy(), [0.0, 3.5, 0.0, 0.0])
    result.sum().backward()
    assert torch.isfinite(flux.grad).all()
    np.testing.assert_allclose(flux.grad.numpy(), [0, 0, 0.5, 0.5, 0, 0, 0, 0, 0, 0])


# --------------------------------------------------------------------------- autograd, dtype
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(method):
    fine, _ = random_case(2, n_fine=30)
    data_edges = np.linspace(fine[0] - 1, fine[-1] + 0.5, 8)
    averager = PixelAverager(fine, data_edges, method=method)
    flux = torch.randn(
        2, 30, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True
    )
    assert torch.autograd.gradcheck(averager, (flux,))
    single = torch.randn(
        30, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True
    )
    assert torch.autograd.gradcheck(averager, (single,))


@pytest.mark.parametrize("method", METHODS)
def test_to_float32_and_dtype_mismatch(method):
    fine, flux = random_case(3)
    data_edges = np.linspace(fine[0], fine[-1], 12)
    averager = PixelAverager(fine, torch.from_numpy(data_edges), method=method)
    expected = averager(torch.from_numpy(flux)).numpy()
    with pytest.raises(TypeError, match="averager.to"):
        averager(torch.from_numpy(flux).float())
    averager.to(torch.float32)
    assert averager.weights.dtype == torch.float32 and averager.columns.dtype == torch.long
    assert averager.empty.dtype == torch.bool
    result = averager(torch.from_numpy(flux).float())
    assert result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="last dimension 60"):
        averager(torch.zeros(59))
    with pytest.raises(TypeError, match="torch.Tensor"):
        averager(flux)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "fine, edges, match",
    [
        (np.arange(10.0), [20.0, 21.0, 22.0], "entirely outside"),
        (np.arange(10.0), [[-3.0, -2.0]], "entirely outside"),
        (np.arange(10.0), [1.0, 3.0, 2.0], "data_edges must be strictly increasing"),
        (np.arange(10.0), [1.0, np.inf], "non-finite"),
        (np.arange(10.0), [[1.0, 2.0], [3.0, 3.0]], r"lo < hi.*pixel 1"),
        (np.arange(10.0), [[1.0, np.nan]], "non-finite"),
        (np.arange(10.0), np.ones((2, 3)), r"\(N, 2\)"),
        (np.arange(10.0)[::-1], [1.0, 2.0], "fine_wavelength must be strictly increasing"),
        (np.r_[np.arange(5.0), np.nan], [1.0, 2.0], "fine_wavelength contains non-finite"),
        (np.array([1.0]), [1.0, 2.0], "fine_wavelength must have at least 2"),
    ],
)
def test_rejects_bad_grids(fine, edges, match):
    with pytest.raises(ValueError, match=match):
        PixelAverager(fine, edges)


def test_rejects_unknown_method_and_non_numeric_input():
    with pytest.raises(ValueError, match="method"):
        PixelAverager(np.arange(10.0), [1.0, 2.0], method="dense")
    with pytest.raises(TypeError, match="fine_wavelength"):
        PixelAverager(["a", "b"], [1.0, 2.0])
