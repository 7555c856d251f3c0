"""The one observe chain (core.observe) shared by ForwardModel and the astropy facade."""

from __future__ import annotations

import numpy as np
import torch

from blase_specutils.core.broadening import convolve_same, gaussian_kernel
from blase_specutils.core.forward import ForwardModel
from blase_specutils.core.lineforest import LineForest
from blase_specutils.core.observe import observe_fine, veil


def test_veil_is_an_exact_identity_at_zero_and_dilutes_lines():
    flux = torch.tensor([0.2, 0.7, 1.0], dtype=torch.float64)
    assert torch.equal(veil(flux, 0.0), flux) and veil(flux, None) is flux
    # r = 1: half the light is a featureless continuum, so depths halve
    assert torch.allclose(1 - veil(flux, 1.0), 0.5 * (1 - flux), rtol=0, atol=1e-15)


def test_telluric_multiplies_before_the_instrument():
    """A narrow telluric line blurred by the instrument is shallower than one multiplied
    in after the blur: the chain must do the former (they do not commute)."""
    n = 401
    star = torch.ones(n, dtype=torch.float64)
    telluric = torch.ones(n, dtype=torch.float64)
    telluric[200] = 0.0  # a saturated line one fine step wide
    kernel = gaussian_kernel(20000.0, 0.5)
    observed = observe_fine(
        star, rotate=lambda f: f, instrument=lambda f: convolve_same(f, kernel), telluric=telluric
    )
    assert observed.min() > 0.5  # blurred: the instrument broadened the telluric line
    assert torch.isclose(observed.sum(), (convolve_same(star * telluric, kernel)).sum())


def test_forward_model_is_the_observe_chain_bit_for_bit():
    rng = np.random.default_rng(5)
    centres = np.sort(rng.uniform(5005.0, 5045.0, 30))
    forest = LineForest(centres, rng.uniform(0.02, 0.06, 30), np.full(30, 0.03),
                        np.full(30, 0.01), dtype=torch.float64)  # fmt: skip
    tell = LineForest(np.sort(rng.uniform(5005.0, 5045.0, 10)), np.full(10, 0.02),
                      np.full(10, 0.01), np.full(10, 0.005), dtype=torch.float64)  # fmt: skip
    pixels = np.linspace(5010.0, 5040.0, 600)
    mid = 0.5 * (pixels[1:] + pixels[:-1])
    edges = np.stack([np.r_[2 * pixels[0] - mid[0], mid], np.r_[mid, 2 * pixels[-1] - mid[-1]]], 1)
    model = ForwardModel(forest, [edges], telluric=tell, rv=15.0, vsini=9.0,
                         resolving_power=40000.0, veiling=0.3, dtype=torch.float64)  # fmt: skip
    with torch.no_grad():
        by_parts = model.averager(model.instrument(model.joint_fine())) * model.continuum()
        assert torch.equal(model(), by_parts)
        # without tellurics, veiling r dilutes every stellar line by exactly 1 + r
        star_only = ForwardModel(forest, [edges], rv=15.0, vsini=9.0, resolving_power=40000.0,
                                 veiling=0.3, dtype=torch.float64)  # fmt: skip
        continuum = star_only.continuum()
        veiled = star_only()
        star_only.veiling.fill_(0.0)
        unveiled = star_only()
    assert float((continuum - unveiled).max()) > 0.05
    assert torch.allclose(continuum - veiled, (continuum - unveiled) / 1.3, rtol=0, atol=1e-12)
