"""The fused Triton pseudo-Voigt kernels against the PyTorch kernel.

On a machine without a GPU they run under Triton's interpreter (``TRITON_INTERPRET=1``,
set in the repository's ``conftest.py`` before triton is imported), so the arithmetic,
masks, windows hanging off the grid, core columns, saturation guard and emission lines
are all checked on the CPU; only their speed needs a GPU (``benchmarks/bench_epoch.py``).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from blase_specutils.core import sparse, triton_kernels
from blase_specutils.core.lineforest import LineForest
from blase_specutils.core.profiles import tch_fwhm_and_eta

# triton (about 1 GB) is not in the [test] extra: without it this module is skipped in the
# main test run. .ci/run runs it in a step of its own with the [triton-tests] extra installed
# and BLASE_SPECUTILS_REQUIRE_TRITON=1, where a missing triton is an error, not a skip.
if os.environ.get("BLASE_SPECUTILS_REQUIRE_TRITON") == "1":
    import triton
else:
    triton = pytest.importorskip(
        "triton",
        reason="triton is not installed: these kernels are tested in the [triton-tests] "
        "step (pip install -e '.[triton-tests]'; tox -e triton)",
    )


def _kernel_inputs(dtype, linear, emission, seed=0):
    rng = np.random.default_rng(seed)
    wl = np.arange(8600.0, 8610.0, 0.01)
    n = 40
    center = np.sort(rng.uniform(8599.5, 8610.5, n))  # some windows hang off the grid
    amplitude = rng.uniform(0.002, 0.05, n)
    amplitude[np.argmin(np.abs(center - 8605.0))] = 0.5  # saturated: the clip in linear mode
    sigma, gamma = rng.uniform(0.01, 0.05, n), rng.uniform(0.005, 0.03, n)
    flags = [emission and i % 7 == 0 for i in range(n)]
    forest = LineForest(
        center,
        amplitude,
        sigma,
        gamma,
        dtype=dtype,
        mode="linear" if linear else "log",
        emission=flags,
    )
    layout = forest.make_layout(wl)
    fwhm, eta = tch_fwhm_and_eta(torch.tensor(sigma, dtype=dtype), torch.tensor(gamma, dtype=dtype))
    A, h2, B, C = sparse.pseudo_voigt_coefficients(torch.tensor(amplitude, dtype=dtype), fwhm, eta)
    shift = torch.tensor(rng.normal(0.0, 0.002, n), dtype=dtype)
    tensors = [t.clone().requires_grad_() for t in (A, h2, B, C, shift)]
    return layout, tensors, forest.sign


@pytest.mark.parametrize("emission", [False, True])
@pytest.mark.parametrize("linear", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
def test_triton_kernel_matches_the_pytorch_kernel(dtype, tol, linear, emission):
    layout, tensors, sign = _kernel_inputs(dtype, linear, emission)
    assert any(b.valid is not None for b in layout.buckets)  # windows off the grid
    assert any(b.core != slice(None) for b in layout.buckets)  # Gaussian on core columns only
    args = (*tensors[:5], sign, layout, linear, 1.0 - 1e-6, emission)
    reference = sparse._PseudoVoigtLogTransmission.apply(*args)
    fused = triton_kernels.pseudo_voigt_log_transmission_triton(*args)
    if linear:  # the saturation guard is reached: ln(1 − clip) = ln(1e-6)
        assert float(reference.detach().min()) < math.log(2e-6)
    scale = float(reference.detach().abs().max())
    assert float((fused - reference).detach().abs().max()) <= tol * scale
    weights = torch.randn_like(reference)
    expected = torch.autograd.grad((reference * weights).sum(), tensors)
    got = torch.autograd.grad((fused * weights).sum(), tensors)
    for mine, theirs in zip(got, expected):
        assert float((mine - theirs).abs().max()) <= tol * float(theirs.abs().max())


def test_kernel_choice_and_clear_errors(monkeypatch):
    assert triton_kernels.available("cpu")  # through the interpreter
    # "auto" (the default) and "torch" keep the CPU on PyTorch; "triton" forces the fused
    # kernel, to the same numbers
    forest = LineForest([8605.0], [0.02], [0.03], [0.01], dtype=torch.float64)
    grid = np.arange(8600.0, 8610.0, 0.01)
    flux_layout = forest.make_layout(grid)
    assert not sparse.use_triton(torch.device("cpu"))
    monkeypatch.setenv("BLASE_SPECUTILS_KERNEL", "auto")
    assert not sparse.use_triton(torch.device("cpu"))
    monkeypatch.setenv("BLASE_SPECUTILS_KERNEL", "torch")
    torch_flux = forest(flux_layout).detach()
    monkeypatch.setenv("BLASE_SPECUTILS_KERNEL", "triton")
    triton_flux = forest(flux_layout).detach()
    torch.testing.assert_close(triton_flux, torch_flux, rtol=1e-13, atol=0)
    monkeypatch.setenv("BLASE_SPECUTILS_KERNEL", "cuda-please")
    with pytest.raises(ValueError, match="'auto', 'torch' or 'triton'"):
        forest(flux_layout)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setenv("BLASE_SPECUTILS_KERNEL", "auto")
    assert not triton_kernels.available("cpu")


def _forest_inputs(dtype, linear, emission, seed=1):
    rng = np.random.default_rng(seed)
    wl = np.arange(8600.0, 8610.0, 0.01)
    n = 40
    center = np.sort(rng.uniform(8599.5, 8610.5, n))  # some windows hang off the grid
    amplitude = rng.uniform(0.002, 0.05, n)
    amplitude[np.argmin(np.abs(center - 8605.0))] = 0.5  # saturated in linear mode
    sigma = rng.uniform(0.01, 0.05, n)
    gamma = rng.uniform(0.005, 0.03, n)
    gamma[7], sigma[8] = 1e-5, 1e-5  # nearly pure Gaussian and nearly pure Lorentzian lines
    forest = LineForest(
        center,
        amplitude,
        sigma,
        gamma,
        dtype=dtype,
        mode="linear" if linear else "log",
        emission=[emission and i % 7 == 0 for i in range(n)],
        trainable=("center", "amplitude", "sigma", "gamma"),
    )
    with torch.no_grad():
        forest.center_shift.copy_(torch.tensor(rng.normal(0.0, 0.004, n), dtype=dtype))
    return forest, forest.make_layout(wl)


@pytest.mark.parametrize("emission", [False, True])
@pytest.mark.parametrize("linear", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 3e-6)])
def test_triton_forest_path_matches_the_pytorch_path(monkeypatch, dtype, tol, linear, emission):
    """Parameters → coefficients, window placement and the chain rule, all in Triton."""
    forest, layout = _forest_inputs(dtype, linear, emission)
    velocity = torch.tensor(7.5, dtype=dtype, requires_grad=True)  # moves windows by pixels
    inputs = [*forest.parameters(), velocity]
    calls = []
    fused = triton_kernels.forest_log_transmission_triton
    monkeypatch.setattr(
        triton_kernels,
        "forest_log_transmission_triton",
        lambda *args, **kwargs: calls.append(1) or fused(*args, **kwargs),
    )
    results = {}
    for kernel in ("torch", "triton"):
        monkeypatch.setenv("BLASE_SPECUTILS_KERNEL", kernel)
        log_t = forest.log_transmission(layout, velocity)
        weights = torch.linspace(-1.0, 2.0, log_t.numel(), dtype=dtype)
        results[kernel] = (log_t.detach(), torch.autograd.grad((log_t * weights).sum(), inputs))
    assert len(calls) == 1  # the Triton run went through the forest kernels
    (ref, ref_grads), (got, got_grads) = results["torch"], results["triton"]
    if linear:  # the saturation guard is reached: ln(1 − clip) = ln(1e-6)
        assert float(ref.min()) < math.log(2e-6)
    assert float((got - ref).abs().max()) <= tol * float(ref.abs().max())
    names = ["center_shift", "ln_amplitude", "ln_sigma", "ln_gamma", "velocity"]
    for name, mine, theirs in zip(names, got_grads, ref_grads):
        scale = float(theirs.abs().max())
        assert scale > 0, name
        assert float((mine - theirs).abs().max()) <= 10 * tol * scale, name


def test_triton_forest_path_leaves_the_layout_alone_and_skips_frozen_gradients(monkeypatch):
    forest, layout = _forest_inputs(torch.float64, True, False)
    forest.set_trainable(["amplitude"])
    starts = [b.start.clone() for b in layout.buckets]
    monkeypatch.setenv("BLASE_SPECUTILS_KERNEL", "triton")
    log_t = forest.log_transmission(layout, 30.0)  # ~1 Å: every window moves
    log_t.sum().backward()
    assert all(torch.equal(b.start, s) for b, s in zip(layout.buckets, starts))
    assert forest.ln_amplitude.grad is not None
    assert forest.ln_sigma.grad is None and forest.center_shift.grad is None
    # the windows moved with the lines: same flux as the PyTorch path re-centred on them
    monkeypatch.setenv("BLASE_SPECUTILS_KERNEL", "torch")
    torch.testing.assert_close(
        log_t.detach(), forest.log_transmission(layout, 30.0).detach(), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_self_check_passes_and_catches_a_wrong_kernel(monkeypatch, dtype):
    assert triton_kernels.self_check("cpu", dtype) is None
    fused = triton_kernels.forest_log_transmission_triton
    monkeypatch.setattr(
        triton_kernels,
        "forest_log_transmission_triton",
        lambda *args, **kwargs: fused(*args, **kwargs) * (1.0 + 1e-3),
    )
    problem = triton_kernels.self_check("cpu", dtype)
    assert problem is not None and problem.startswith("log transmission")


def test_self_check_runs_under_no_grad_and_inference_mode(monkeypatch):
    # the library's first forest call on a device often comes while evaluating a model;
    # a check that needs gradients must not then fail (and switch Triton off for good)
    with torch.no_grad():
        assert triton_kernels.self_check("cpu") is None
    with torch.inference_mode():
        assert triton_kernels.self_check("cpu") is None
    monkeypatch.setattr(sparse, "_TRITON_FAILED", [])
    monkeypatch.setattr(sparse, "_TRITON_CHECKED", set())
    with torch.no_grad():
        assert sparse._passes_self_check(torch.device("cpu"))
    assert sparse._TRITON_FAILED == []


def test_auto_mode_falls_back_with_a_warning_when_the_self_check_fails(monkeypatch):
    monkeypatch.setattr(sparse, "_TRITON_FAILED", [])
    monkeypatch.setattr(sparse, "_TRITON_CHECKED", set())
    device = torch.device("cpu")  # the check itself is device-agnostic
    assert sparse._passes_self_check(device)
    assert "cpu" in sparse._TRITON_CHECKED
    monkeypatch.setattr(sparse, "_TRITON_CHECKED", set())
    monkeypatch.setattr(triton_kernels, "self_check", lambda device: "ln_sigma: off by 1")
    with pytest.warns(RuntimeWarning, match="disagree with PyTorch on cpu.*ln_sigma"):
        assert not sparse._passes_self_check(device)
    assert sparse._TRITON_FAILED == ["ln_sigma: off by 1"]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 3e-6)])
def test_triton_forest_path_on_narrow_windows(monkeypatch, dtype, tol):
    """Windows of 16 and 32 pixels: narrow column blocks, many rows per program."""
    rng = np.random.default_rng(3)
    n = 300
    forest = LineForest(
        np.sort(rng.uniform(8599.8, 8700.2, n)),
        rng.uniform(2e-5, 2e-3, n),
        rng.uniform(0.01, 0.04, n),
        rng.uniform(0.001, 0.01, n),
        dtype=dtype,
        trainable=("center", "amplitude", "sigma", "gamma"),
    )
    layout = forest.make_layout(np.arange(8600.0, 8700.0, 0.05))
    assert [w for w, _ in layout.bucket_table()] == [16, 32]
    assert layout.bucket_table()[0][1] > triton_kernels._blocks(16)[0]  # several programs
    results = {}
    for kernel in ("torch", "triton"):
        monkeypatch.setenv("BLASE_SPECUTILS_KERNEL", kernel)
        log_t = forest.log_transmission(layout, -3.0)
        weights = torch.linspace(-1.0, 2.0, log_t.numel(), dtype=dtype)
        grads = torch.autograd.grad((log_t * weights).sum(), list(forest.parameters()))
        results[kernel] = (log_t.detach(), grads)
    (ref, ref_grads), (got, got_grads) = results["torch"], results["triton"]
    assert float((got - ref).abs().max()) <= tol * float(ref.abs().max())
    for mine, theirs in zip(got_grads, ref_grads):
        assert float((mine - theirs).abs().max()) <= 10 * tol * float(theirs.abs().max())
