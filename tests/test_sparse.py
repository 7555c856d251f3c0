"""Sparse windows and the fused pseudo-Voigt kernel (core/sparse.py) against dense references.

The reference below is written independently of the package: a numpy float64
Thompson–Cox–Hastings pseudo-Voigt evaluated for every line on every pixel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blase_specutils.core.lineforest import SPEED_OF_LIGHT_KMS, LineForest
from blase_specutils.core.sparse import (
    SparseLayout,
    pseudo_voigt_log_transmission,
    window_half_widths,
)


def _cover_all(wavelength) -> dict:
    """make_layout settings whose windows cover the whole grid (sparse must equal dense).

    ``min_pixels`` makes every window at least twice the grid; the half-width alone should
    also do it (``test_huge_half_width_windows_cover_grid``).
    """
    return {"tolerance": 1e-30, "max_half_width": 1e4, "min_pixels": 2 * len(wavelength)}


def _reference_flux(wavelength, center, amplitude, sigma, gamma, sign, mode="linear"):
    """Dense numpy pseudo-Voigt forest: every line on every pixel, float64."""
    fg = 2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma
    fl = 2.0 * gamma
    f = (
        fg**5
        + 2.69269 * fg**4 * fl
        + 2.42843 * fg**3 * fl**2
        + 4.47163 * fg**2 * fl**3
        + 0.07842 * fg * fl**4
        + fl**5
    ) ** 0.2
    r = fl / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    dx = wavelength[None, :] - center[:, None]
    hw = 0.5 * f[:, None]
    s = f[:, None] / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    lor = hw / math.pi / (dx**2 + hw**2)
    gau = np.exp(-0.5 * (dx / s) ** 2) / (s * math.sqrt(2 * math.pi))
    av = (sign * amplitude)[:, None] * (eta[:, None] * lor + (1 - eta[:, None]) * gau)
    if mode == "linear":
        return np.prod(1.0 - av, axis=0)
    return np.exp(-av.sum(0))


def _random_lines(rng, n_lines, lo, hi, *, emission_fraction=0.0):
    center = np.sort(rng.uniform(lo, hi, n_lines))
    sigma = rng.uniform(0.01, 0.05, n_lines)
    gamma = rng.uniform(0.005, 0.05, n_lines)
    # peak depths of 0.05–0.4 for a single line
    amplitude = rng.uniform(0.05, 0.4, n_lines) * 2.0 * (sigma + gamma)
    emission = rng.uniform(size=n_lines) < emission_fraction
    return center, amplitude, sigma, gamma, emission


def _forest(
    rng, wavelength, n_lines=12, *, mode="linear", emission_fraction=0.0, dtype=torch.float64, **kw
):
    center, amplitude, sigma, gamma, emission = _random_lines(
        rng, n_lines, wavelength[0], wavelength[-1], emission_fraction=emission_fraction
    )
    forest = LineForest(
        center, amplitude, sigma, gamma, emission=emission, mode=mode, dtype=dtype, **kw
    )
    return forest, (center, amplitude, sigma, gamma, np.where(emission, -1.0, 1.0))


@pytest.mark.parametrize("mode", ["linear", "log"])
@pytest.mark.parametrize("emission_fraction", [0.0, 0.3])
@pytest.mark.parametrize("fused", [True, False])
def test_sparse_equals_dense_when_windows_cover_grid(mode, emission_fraction, fused):
    rng = np.random.default_rng(1)
    wl = np.arange(8600.0, 8603.0, 0.01)
    forest, (c, a, s, g, sign) = _forest(rng, wl, mode=mode, emission_fraction=emission_fraction)
    assert (sign < 0).any() == (emission_fraction > 0)
    layout = forest.make_layout(wl, **_cover_all(wl))
    with torch.no_grad():
        sparse = torch.exp(forest.log_transmission(layout, fused=fused)).numpy()
        dense_module = forest.dense_flux(wl).numpy()
    reference = _reference_flux(wl, c, a, s, g, sign, mode)
    np.testing.assert_allclose(sparse, reference, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense_module, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["linear", "log"])
def test_sparse_equals_dense_with_rv_and_centre_shifts(mode):
    rng = np.random.default_rng(2)
    wl = np.arange(10300.0, 10303.0, 0.01)
    forest, (c, a, s, g, sign) = _forest(rng, wl, mode=mode, emission_fraction=0.25)
    center_shift = rng.normal(0, 0.05, c.size)
    with torch.no_grad():
        forest.center_shift.copy_(torch.as_tensor(center_shift))
    v = 17.3  # km/s
    layout = forest.make_layout(wl, **_cover_all(wl))
    with torch.no_grad():
        for fused in (True, False):
            sparse = torch.exp(forest.log_transmission(layout, v, fused=fused)).numpy()
            # the forest's convention: every current centre (λc_ref + δ) moves by a factor 1 + v/c
            reference = _reference_flux(
                wl, (c + center_shift) * (1 + v / SPEED_OF_LIGHT_KMS), a, s, g, sign, mode
            )
            # the centre is now a sum of three float64 numbers near 1e4 Å (spacing 1.8e-12 Å)
            # and the profile slope is up to ~30 / Å: rounding reaches a few 1e-12
            # (measured 4.8e-12)
            np.testing.assert_allclose(sparse, reference, rtol=0, atol=5e-11)
        np.testing.assert_allclose(forest.dense_flux(wl, v).numpy(), reference, rtol=0, atol=5e-11)


def _excluded_terms(layout, forest, wl):
    """max over lines of a·V at valid pixels outside that line's window, and the line index."""
    props = forest.line_properties()
    worst = np.zeros(forest.n_lines)
    for b in layout.buckets:
        valid = np.ones(b.pixel.shape, bool) if b.valid is None else b.valid.numpy() > 0
        for row, line in enumerate(b.lines.numpy()):
            inside = np.zeros(wl.size, bool)
            inside[b.pixel[row].numpy()[valid[row]]] = True
            av = 1.0 - _reference_flux(
                wl[~inside],
                props["center"][line : line + 1],
                props["amplitude"][line : line + 1],
                props["sigma"][line : line + 1],
                props["gamma"][line : line + 1],
                np.ones(1),
                "linear",
            )
            worst[line] = av.max() if av.size else 0.0
    return worst


def test_realistic_windows_keep_every_truncated_wing_below_tolerance():
    rng = np.random.default_rng(3)
    wl = np.arange(8600.0, 8610.0, 0.01)
    forest, (c, a, s, g, sign) = _forest(rng, wl, n_lines=40)
    tolerance = 1e-4
    layout = forest.make_layout(wl, tolerance=tolerance)
    assert layout.n_pairs < 0.5 * forest.n_lines * wl.size
    half, _ = window_half_widths(a, s, g, tolerance=tolerance)
    interior = (c - half > wl[0]) & (c + half < wl[-1])
    assert interior.sum() >= 20
    worst = _excluded_terms(layout, forest, wl)
    # per-line contract of window_half_widths: outside its window a line's a·V < tolerance
    assert np.max(worst[interior]) < tolerance
    assert np.max(worst[interior]) > 0.1 * tolerance  # windows are not needlessly wide
    # log mode: the sparse log transmission misses exactly the excluded terms
    with torch.no_grad():
        sparse = forest(layout).numpy()
    reference = _reference_flux(wl, c, a, s, g, sign)
    assert 1e-7 < np.max(np.abs(sparse - reference)) < forest.n_lines * tolerance


@pytest.mark.parametrize("mode", ["linear", "log"])
def test_fused_gradients_equal_plain_autograd_gradients(mode):
    rng = np.random.default_rng(4)
    wl = np.arange(9000.0, 9003.0, 0.01)
    forest, _ = _forest(
        rng,
        wl,
        mode=mode,
        emission_fraction=0.3,
        trainable=("center", "amplitude", "sigma", "gamma"),
    )
    with torch.no_grad():
        forest.center_shift.copy_(torch.as_tensor(rng.normal(0, 0.02, forest.n_lines)))
    target = torch.as_tensor(rng.uniform(0.5, 1.0, wl.size))
    layout = forest.make_layout(wl, **_cover_all(wl))
    velocity = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    grads = {}
    for fused in (True, False):
        forest.zero_grad(set_to_none=True)
        velocity.grad = None
        flux = torch.exp(forest.log_transmission(layout, velocity, fused=fused))
        torch.sum(
            (flux - target) ** 2 * torch.linspace(0.5, 2.0, wl.size, dtype=torch.float64)
        ).backward()
        grads[fused] = {n: p.grad.clone() for n, p in forest.named_parameters()}
        grads[fused]["velocity"] = velocity.grad.clone()
    for name, g_fused in grads[True].items():
        g_plain = grads[False][name]
        scale = float(g_plain.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(g_fused, g_plain, rtol=0, atol=1e-12 * max(scale, 1.0), msg=name)


@pytest.mark.parametrize(
    "trainable", [("amplitude",), ("sigma",), ("gamma",), ("center",), ("amplitude", "gamma")]
)
def test_fused_gradients_of_a_subset_equal_plain_autograd(trainable):
    """The fused backward forms only the sums its inputs need (amplitudes alone in
    transfer learning): each subset's gradients still equal plain autograd's."""
    rng = np.random.default_rng(8)
    wl = np.arange(9000.0, 9003.0, 0.01)
    forest, _ = _forest(rng, wl, mode="linear", emission_fraction=0.3, trainable=trainable)
    target = torch.as_tensor(rng.uniform(0.5, 1.0, wl.size))
    layout = forest.make_layout(wl, **_cover_all(wl))
    grads = {}
    for fused in (True, False):
        forest.zero_grad(set_to_none=True)
        flux = torch.exp(forest.log_transmission(layout, fused=fused))
        torch.sum((flux - target) ** 2).backward()
        grads[fused] = {n: p.grad for n, p in forest.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) == len(trainable)
    for name, g_fused in grads[True].items():
        scale = float(grads[False][name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(g_fused, grads[False][name], rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("linear", [True, False])
def test_fused_kernel_gradcheck(linear):
    rng = np.random.default_rng(5)
    wl = np.arange(9500.0, 9501.5, 0.02)
    n = 4
    center = np.sort(rng.uniform(wl[5], wl[-5], n))
    layout = SparseLayout(wl, center, np.full(n, 100.0), dtype=torch.float64)
    amplitude = torch.as_tensor(rng.uniform(0.005, 0.02, n)).requires_grad_(True)
    fwhm = torch.as_tensor(rng.uniform(0.04, 0.1, n)).requires_grad_(True)
    eta = torch.as_tensor(rng.uniform(0.2, 0.8, n)).requires_grad_(True)
    shift = torch.as_tensor(rng.normal(0, 0.01, n)).requires_grad_(True)
    sign = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64)

    def kernel(amplitude, fwhm, eta, shift):
        return pseudo_voigt_log_transmission(
            layout, amplitude, fwhm, eta, shift, sign, linear=linear
        )

    assert torch.autograd.gradcheck(
        kernel, (amplitude, fwhm, eta, shift), eps=1e-7, atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize("mode", ["linear", "log"])
def test_lineforest_parameters_gradcheck_through_fused_path(mode):
    rng = np.random.default_rng(6)
    wl = np.arange(9500.0, 9501.5, 0.02)
    forest, _ = _forest(
        rng,
        wl,
        n_lines=3,
        mode=mode,
        emission_fraction=0.3,
        trainable=("center", "amplitude", "sigma", "gamma"),
    )
    layout = forest.make_layout(wl, **_cover_all(wl))
    names = ("center_shift", "ln_amplitude", "ln_sigma", "ln_gamma")

    def flux(*values):
        return torch.func.functional_call(forest, dict(zip(names, values)), (layout, 5.0))

    inputs = tuple(getattr(forest, n).detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(flux, inputs, eps=1e-7, atol=1e-6, rtol=1e-5)


def test_windows_follow_moving_centres():
    wl = np.arange(8700.0, 8720.0, 0.01)
    center = np.array([8705.0, 8712.0])
    forest = LineForest(
        center, [0.03, 0.03], [0.02, 0.02], [0.01, 0.01], dtype=torch.float64, trainable=("center",)
    )
    tolerance = 1e-4
    layout = forest.make_layout(wl, tolerance=tolerance)
    widths = [w for w, _ in layout.bucket_table()]
    assert max(widths) * 0.01 < 5.0  # windows are a few Å at most: a 5 Å move leaves them
    for step in (5.0, -3.3, 0.123):  # many pixels (500, 330, 12)
        with torch.no_grad():
            forest.center_shift.add_(torch.tensor([step, -step], dtype=torch.float64))
            sparse = forest(layout).numpy()
        props = forest.line_properties()
        reference = _reference_flux(
            wl, props["center"], props["amplitude"], props["sigma"], props["gamma"], np.ones(2)
        )
        assert reference.min() < 0.7  # the lines are there and deep
        np.testing.assert_allclose(sparse, reference, rtol=0, atol=2 * tolerance)
        # each window is centred on its line's current pixel
        nearest = np.searchsorted(wl, props["center"])
        for b in layout.buckets:
            np.testing.assert_array_equal(b.start.numpy() + b.width // 2, nearest[b.lines.numpy()])
    # an RV shift moves windows too (without changing center_shift): 300 km/s = 8.7 Å
    with torch.no_grad():
        forest.center_shift.zero_()
        v = -300.0
        sparse = forest(layout, v).numpy()
    reference = _reference_flux(
        wl,
        center * (1 + v / SPEED_OF_LIGHT_KMS),
        props["amplitude"],
        props["sigma"],
        props["gamma"],
        np.ones(2),
    )
    np.testing.assert_allclose(sparse, reference, rtol=0, atol=2 * tolerance)


def test_windows_have_no_holes_and_no_duplicates():
    rng = np.random.default_rng(8)
    wl = np.arange(8800.0, 8805.0, 0.01)
    forest, (c, a, s, g, sign) = _forest(rng, wl, n_lines=60)
    # include lines hugging both ends of the grid
    with torch.no_grad():
        forest.center_shift[0] = float(wl[0] + 0.003 - c[0])
        forest.center_shift[-1] = float(wl[-1] - 0.004 - c[-1])
    layout = forest.make_layout(wl, tolerance=1e-4)
    forest(layout)  # refresh on the shifted centres
    centers = forest.line_properties()["center"]
    half, _ = window_half_widths(a, s, g, tolerance=1e-4)
    seen = np.zeros(forest.n_lines, dtype=int)
    for b in layout.buckets:
        pixel = b.pixel.numpy()
        valid = np.ones(pixel.shape, bool) if b.valid is None else b.valid.numpy() > 0
        for row, line in enumerate(b.lines.numpy()):
            seen[line] += 1
            p = pixel[row][valid[row]]
            assert p.size > 0
            assert np.all(np.diff(p) == 1), f"line {line}: window has holes or repeats"
            assert p.min() >= 0 and p.max() < wl.size
            # clamped elements are flagged invalid, valid ones are the unclamped ones
            raw = b.start[row].item() + np.arange(b.width)
            np.testing.assert_array_equal(valid[row], (raw >= 0) & (raw < wl.size))
            # the line's own pixel is in its window
            assert np.searchsorted(wl, centers[line]) in p or centers[line] > wl[-1]
    np.testing.assert_array_equal(seen, 1)  # every line in exactly one bucket
    # the windows include every pixel within the requested half-width (interior lines)
    n_checked = 0
    for b in layout.buckets:
        for row, line in enumerate(b.lines.numpy()):
            if centers[line] - half[line] > wl[0] and centers[line] + half[line] < wl[-1]:
                need = np.nonzero(np.abs(wl - centers[line]) <= half[line])[0]
                have = b.pixel[row].numpy()
                assert need.min() >= have.min() and need.max() <= have.max()
                n_checked += 1
    assert n_checked >= 20


@pytest.mark.parametrize("mode", ["linear", "log"])
def test_edge_lines_exact_when_windows_cover_grid(mode):
    wl = np.arange(9000.0, 9002.0, 0.01)
    # at the first pixel, one pixel inside the last, and two just off the grid
    center = np.array([wl[0], wl[-2] + 0.004, wl[0] - 0.05, wl[-1] + 0.03])
    amplitude = np.array([0.01, 0.02, 0.015, 0.01])
    sigma = np.full(4, 0.02)
    gamma = np.full(4, 0.015)
    forest = LineForest(center, amplitude, sigma, gamma, mode=mode, dtype=torch.float64)
    layout = forest.make_layout(wl, **_cover_all(wl))
    assert any(b.valid is not None for b in layout.buckets)  # windows were clamped
    reference = _reference_flux(wl, center, amplitude, sigma, gamma, np.ones(4), mode)
    with torch.no_grad():
        for fused in (True, False):
            sparse = torch.exp(forest.log_transmission(layout, fused=fused)).numpy()
            np.testing.assert_allclose(sparse, reference, rtol=0, atol=1e-12)


def test_edge_line_wings_below_tolerance():
    # Regression: windows were once sized from the on-grid part of [c - h, c + h] but centred
    # on the line, so near a grid end they reached only ~h/2 inward (measured 3.4e-4 > 1e-4).
    wl = np.arange(10000.0, 10010.0, 0.01)
    tolerance = 1e-4
    worst = {}
    for where in (10005.0, 10009.99, 10000.01, 10010.3):  # interior, both edges, off-grid
        forest = LineForest([where], [0.02], [0.02], [0.02], dtype=torch.float64)
        layout = forest.make_layout(wl, tolerance=tolerance)
        forest(layout)
        worst[where] = float(_excluded_terms(layout, forest, wl)[0])
    assert worst[10005.0] < tolerance  # interior: the documented bound holds
    assert max(worst.values()) < tolerance


def test_fused_gaussian_core_of_edge_lines_within_tolerance():
    # The plain-autograd path evaluates the Gaussian on the whole window; the fused kernel only
    # on the core columns, which window_half_widths sizes so the rest is below `tolerance`.
    wl = np.arange(10000.0, 10010.0, 0.01)
    tolerance = 1e-4
    worst = {}
    for where in (10005.0, 10005.004, wl[0], wl[0] + 0.05, wl[-1], wl[-1] - 0.08):
        forest = LineForest([where], [0.05], [0.06], [1e-5], dtype=torch.float64)  # Gaussian line
        layout = forest.make_layout(wl, tolerance=tolerance)
        with torch.no_grad():
            fused = forest.log_transmission(layout, fused=True)
            plain = forest.log_transmission(layout, fused=False)
        worst[where] = float((fused - plain).abs().max())
    assert worst[10005.0] < tolerance and worst[10005.004] < tolerance  # interior lines are fine
    # measured: 9.5e-3 for the line on the first pixel (core cut at 0.16 Å instead of 0.24 Å)
    assert max(worst.values()) < tolerance


def test_huge_half_width_windows_cover_grid():
    # tolerance=1e-30 and max_half_width=1e4 Å ask for windows far wider than this 3 Å grid,
    # so every line should see every pixel and sparse should equal dense to rounding.
    wl = np.arange(8600.0, 8603.0, 0.01)
    center = np.array([8600.5, 8602.9])
    forest = LineForest(center, [0.02, 0.02], [0.02, 0.02], [0.02, 0.02], dtype=torch.float64)
    layout = forest.make_layout(wl, tolerance=1e-30, max_half_width=1e4)
    with torch.no_grad():
        sparse = forest(layout).numpy()
    reference = _reference_flux(
        wl, center, np.full(2, 0.02), np.full(2, 0.02), np.full(2, 0.02), np.ones(2)
    )
    # (regression: the line at 8602.9 Å's window once stopped ~2.6 Å short, 2e-4 off)
    np.testing.assert_allclose(sparse, reference, rtol=0, atol=1e-12)


def test_n_pairs_is_far_below_dense_for_realistic_forest():
    rng = np.random.default_rng(9)
    wl = np.arange(8300.0, 9300.0, 0.01)  # 100,000 px, like the PHOENIX Z band sample
    n_lines = 3000
    center = np.sort(rng.uniform(wl[0], wl[-1], n_lines))
    sigma = rng.lognormal(math.log(0.02), 0.4, n_lines)
    gamma = rng.lognormal(math.log(0.015), 0.6, n_lines)
    depth = rng.uniform(0.01, 0.6, n_lines)
    amplitude = depth * 1.5 * (sigma + gamma)
    forest = LineForest(center, amplitude, sigma, gamma)
    layout = forest.make_layout(wl, tolerance=1e-4)
    dense_pairs = n_lines * wl.size
    # measured: 873,600 pairs = 0.29 % of dense, 4.9 % of the paper's fixed 6000-px windows
    assert layout.n_pairs < 0.01 * dense_pairs
    assert layout.n_pairs < 0.1 * 6000 * n_lines
    assert all(w & (w - 1) == 0 for w, _ in layout.bucket_table())  # powers of two


@pytest.mark.parametrize("velocity", [None, 25.0])
def test_float32_offsets_near_10000_angstrom(velocity):
    wl = np.arange(9999.0, 10001.0, 0.01)
    # a centre between pixels, with sub-mÅ digits that float32 cannot hold at 10⁴ Å
    center = np.array([10000.00337, 9999.71171])
    if velocity is not None:
        center = center / (1 + velocity / SPEED_OF_LIGHT_KMS)
    args = (center, [0.008, 0.004], [0.006, 0.01], [0.004, 0.003])
    f64 = LineForest(*args, dtype=torch.float64)
    f32 = LineForest(*args, dtype=torch.float32)
    with torch.no_grad():
        flux64 = f64(f64.make_layout(wl), velocity).numpy()
        flux32 = f32(f32.make_layout(wl), velocity).double().numpy()
    assert flux64.min() < 0.75  # deep, narrow lines: a mÅ offset error would show at ~1e-2
    # measured: 3.6e-8 without RV; 1.3e-6 with 25 km/s (the ~0.8 Å shift itself is float32,
    # spacing 6e-8 Å, times a profile slope of ~40 / Å). λ − λc formed in float32: ~1e-2.
    assert np.max(np.abs(flux32 - flux64)) < 3e-6
    # showing the test can fail: offsets formed from two float32 numbers
    dx_bad = (
        torch.tensor(wl, dtype=torch.float32)[None, :]
        - torch.tensor(center, dtype=torch.float32)[:, None]
    )
    dx_good = torch.tensor(wl[None, :] - center[:, None])
    assert float((dx_bad.double() - dx_good).abs().max()) > 1e-4


@pytest.mark.parametrize("ratio", [4, 8])
def test_bucket_ratio_changes_padding_not_values(ratio):
    # Coarser buckets (fewer kernel launches on GPUs) pad windows further: the flux may only
    # change by wing contributions below the tolerance, and the gradients likewise.
    rng = np.random.default_rng(3)
    wl = np.linspace(10000.0, 10010.0, 1001)
    n = 25
    forest = LineForest(
        np.sort(rng.uniform(10001, 10009, n)),
        rng.uniform(0.005, 0.05, n),
        rng.uniform(0.01, 0.05, n),
        rng.uniform(0.005, 0.05, n),
        dtype=torch.float64,
    )
    base = forest.make_layout(wl, bucket_ratio=2)
    coarse = forest.make_layout(wl, bucket_ratio=ratio)
    assert coarse.n_pairs >= base.n_pairs
    # Each line truncates its wings at 1e-4 of the continuum; several overlap per pixel.
    torch.testing.assert_close(forest(coarse), forest(base), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="power of two"):
        forest.make_layout(wl, bucket_ratio=3)


@pytest.mark.parametrize("mode", ["linear", "log"])
def test_fused_exact_voigt_equals_autograd_path(mode):
    # The fused exact-Voigt kernel chains ∂V/∂(dx, σ, γ) by hand; plain autograd through
    # voigt_profile is the reference. Emission lines and an RV included.
    rng = np.random.default_rng(11)
    wl = np.linspace(10000.0, 10020.0, 2001)
    n = 30
    forest = LineForest(
        np.sort(rng.uniform(10004, 10016, n)),
        rng.uniform(0.005, 0.05, n),
        rng.uniform(0.01, 0.05, n),
        rng.uniform(0.005, 0.05, n),
        emission=rng.uniform(size=n) < 0.2,
        mode=mode,
        profile="voigt",
        trainable=("center", "amplitude", "sigma", "gamma"),
        dtype=torch.float64,
    )
    layout = forest.make_layout(wl)
    weights = torch.as_tensor(rng.normal(size=wl.size))
    fused = torch.exp(forest.log_transmission(layout, 3.0, fused=True))
    plain = torch.exp(forest.log_transmission(layout, 3.0, fused=False))
    # The fused kernel uses the asymptotic series in the far wings (relative error < 5e-10
    # of the profile there), the plain path the continued fraction.
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-10)
    params = list(forest.parameters())
    g_fused = torch.autograd.grad((fused * weights).sum(), params)
    g_plain = torch.autograd.grad((plain * weights).sum(), params)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8 * float(b.abs().max()))
    with torch.no_grad():  # the no-gradient path skips the derivatives but gives the same flux
        torch.testing.assert_close(torch.exp(forest.log_transmission(layout, 3.0)), fused)
