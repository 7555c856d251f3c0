"""Prominence line finding (prep/linefind.py): synthetic lines and the real Z band."""

from __future__ import annotations

import numpy as np
import pytest

from blase_specutils.prep.continuum import flatten_continuum
from blase_specutils.prep.linefind import LineList, find_lines

STEP = 0.01  # Å per pixel of the synthetic grids


def _isolated_lines(shape: str, seed: int = 0):
    """Isolated dips 1 - depth * profile/peak at random sub-pixel centres, and the truths."""
    rng = np.random.default_rng(seed)
    n_lines = 40
    # sampling: >= 4 pixels per FWHM for Gaussians, >= 6 for the cuspier Lorentzians (a parabola
    # through three pixels of a 4-pixel Lorentzian misses 2% of its depth); PHOENIX lines near
    # 1 um have ~6
    min_pixels = 4 if shape == "gaussian" else 6
    fwhm = rng.uniform(min_pixels * STEP, 0.30, n_lines)
    depth = rng.uniform(0.05, 0.9, n_lines)
    spacing = 60.0 if shape == "lorentzian" else 5.0  # Lorentzian wings need room to return to 1
    center = 8500.0 + spacing * (np.arange(n_lines) + 0.5) + rng.uniform(-0.5, 0.5, n_lines) * STEP
    wavelength = np.arange(8500.0, 8500.0 + spacing * n_lines, STEP)
    flux = np.ones_like(wavelength)
    for c, f, d in zip(center, fwhm, depth):
        if shape == "gaussian":
            profile = np.exp(-4.0 * np.log(2.0) * ((wavelength - c) / f) ** 2)
        else:
            profile = 1.0 / (1.0 + ((wavelength - c) / (0.5 * f)) ** 2)
        flux *= 1.0 - d * profile
    return wavelength, flux, center, fwhm, depth


@pytest.mark.parametrize("shape", ["gaussian", "lorentzian"])
def test_isolated_lines_are_recovered(shape):
    wavelength, flux, center, fwhm, depth = _isolated_lines(shape)
    lines = find_lines(wavelength, flux, prominence=0.01)
    assert isinstance(lines, LineList)
    assert lines.n_lines == center.size
    # measured (gaussian / lorentzian): centre 0.014 / 0.02 px, fwhm 1.0% / 0.7%, depth 0.6% / 0.5%
    assert np.max(np.abs(lines.center - center)) / STEP < 0.05
    assert np.max(np.abs(lines.fwhm / fwhm - 1.0)) < 0.03
    assert np.max(np.abs(lines.depth / depth - 1.0)) < 0.01
    assert np.all(np.diff(lines.center) > 0)


def test_nonuniform_grid_widths_are_in_angstrom():
    # log-lambda grid (constant velocity step), spacing grows 10x across the range
    wavelength = np.geomspace(8000.0, 80000.0, 400_000)
    centre, true_fwhm = 30000.0, 0.6
    flux = 1.0 - 0.5 * np.exp(-4.0 * np.log(2.0) * ((wavelength - centre) / true_fwhm) ** 2)
    lines = find_lines(wavelength, flux, prominence=0.05)
    assert lines.n_lines == 1
    local_step = np.interp(centre, wavelength[:-1], np.diff(wavelength))
    assert abs(lines.center[0] - centre) / local_step < 0.05
    assert abs(lines.fwhm[0] / true_fwhm - 1.0) < 0.03


def test_blended_line_in_wing_is_found_and_width_capped():
    wavelength = np.arange(8500.0, 8510.0, STEP)
    strong = 1.0 - 0.8 / (1.0 + ((wavelength - 8505.0) / 0.4) ** 2)  # broad Lorentzian
    weak = 1.0 - 0.1 * np.exp(-0.5 * ((wavelength - 8505.6) / 0.03) ** 2)  # in its wing
    lines = find_lines(wavelength, strong * weak, prominence=0.01)
    assert lines.n_lines == 2
    # the weak minimum is pulled 0.7 px down the strong line's wing slope (a property of the blend)
    np.testing.assert_allclose(lines.center, [8505.0, 8505.6], atol=1.0 * STEP)
    # the broad line's half-prominence width would reach across the weak one: capped at 2x gap
    assert lines.fwhm[0] <= 2 * 0.6 + 1e-9
    assert lines.fwhm[1] < 0.2  # the weak line keeps its own narrow width


def test_saturated_flat_bottom_line_does_not_blow_up():
    wavelength = np.arange(8500.0, 8502.0, STEP)
    flux = 1.0 - 1.2 * np.exp(-0.5 * ((wavelength - 8501.0) / 0.1) ** 2)
    flux = np.clip(flux, 0.0, None)  # flat zero bottom over many pixels
    lines = find_lines(wavelength, flux, prominence=0.01)
    assert lines.n_lines == 1
    assert abs(lines.center[0] - 8501.0) < 0.05  # inside the plateau, no parabola excursion
    assert 0.0 < lines.depth[0] < 1.0 and lines.depth[0] > 1.0 - 1e-9
    assert np.isfinite(lines.fwhm[0]) and lines.fwhm[0] > 0


def test_density_per_100A_counts_lines():
    wavelength, flux, center, _, _ = _isolated_lines("gaussian")
    lines = find_lines(wavelength, flux)
    bin_centers, per_100 = lines.density_per_100A(bin_width=50.0)
    assert per_100.sum() * 50.0 / 100.0 == lines.n_lines
    assert np.all(np.diff(bin_centers) > 0)
    with pytest.raises(ValueError, match="bin_width"):
        lines.density_per_100A(bin_width=0.0)


def test_real_z_band_line_counts(data_dir):
    table = np.loadtxt(data_dir / "phoenix" / "Z_band_test_sample_lte03900-PHOENIX-ACES.dat")
    wavelength, flux = table[:, 0] * 1e4, table[:, 1]
    flat = flatten_continuum(wavelength, flux, teff=3900.0).flat_flux
    counts = {}
    for prominence in (0.01, 0.02):
        lines = find_lines(wavelength, flat, prominence=prominence)
        _, per_100 = lines.density_per_100A()
        counts[prominence] = lines.n_lines
        print(
            f"Z band prominence {prominence}: {lines.n_lines} lines, "
            f"{per_100.mean():.0f} per 100 Å "
            f"(min {per_100.min():.0f}, max {per_100.max():.0f})"
        )
        assert np.all((lines.depth > 0) & (lines.depth < 1))
        assert (
            np.all(lines.fwhm > 0) and np.median(lines.fwhm) < 0.2
        )  # R ~ 500,000 lines are narrow
    # measured: 4503 lines at 0.01 (450 per 100 Å), 3398 at 0.02 (340 per 100 Å)
    assert 1000 < counts[0.01] < 20000
    assert counts[0.02] < counts[0.01]


@pytest.mark.parametrize(
    ("wavelength", "flux", "kwargs", "message"),
    [
        (
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 0.5, 1.0, 1.0],
            {"prominence": 0.0},
            r"prominence must lie in \(0, 1\)",
        ),
        (
            [1.0, 2.0, 3.0, 4.0],
            [1.0, 0.5, 1.0, 1.0],
            {"prominence": 1.5},
            r"prominence must lie in \(0, 1\)",
        ),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], {}, "no lines found at prominence 0.01"),
        ([1.0, np.nan, 3.0, 4.0], [1.0, 0.5, 1.0, 1.0], {}, "wavelength contains NaN"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, np.nan, 1.0, 1.0], {}, "flat_flux contains NaN"),
        ([1.0, 3.0, 2.0, 4.0], [1.0, 0.5, 1.0, 1.0], {}, "sorted"),
        ([1.0, 2.0, 2.0, 4.0], [1.0, 0.5, 1.0, 1.0], {}, "duplicated"),
        ([1.0, 2.0, 3.0], [1.0, 0.5, 1.0, 1.0], {}, "length mismatch"),
    ],
)
def test_bad_input_raises(wavelength, flux, kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_lines(np.asarray(wavelength), np.asarray(flux), **kwargs)


def test_optical_depth_finds_lines_inside_a_saturated_trough():
    from blase_specutils.prep.linefind import find_optical_depth_lines

    wavelength = np.arange(17000.0, 17010.0, 0.01)
    centres, peak_tau = (17004.0, 17004.6), (40.0, 25.0)
    tau = sum(p / (1 + ((wavelength - c) / 0.1) ** 2) for c, p in zip(centres, peak_tau))
    tau = tau + 0.3 / (1 + ((wavelength - 17007.5) / 0.1) ** 2)  # and a weak line
    transmission = np.where(np.exp(-tau) < 1e-12, 0.0, np.exp(-tau))
    # on the transmission the blend is one flat trough at zero: one line for two
    on_flux = find_lines(wavelength, transmission, prominence=0.01)
    assert np.sum(np.abs(on_flux.center - 17004.3) < 1.0) == 1
    found = find_optical_depth_lines(wavelength, transmission, max_optical_depth=60.0)
    np.testing.assert_allclose(found.center, [17004.0, 17004.6, 17007.5], atol=0.02)
    # prominence: the τ a line rises above the higher of the saddles beside it
    peak = int(np.argmin(np.abs(wavelength - 17007.5)))
    saddle = max(tau[(wavelength > 17004.6) & (wavelength < 17007.5)].min(), tau[peak:].min())
    assert found.prominence[2] == pytest.approx(tau[peak] - saddle, rel=1e-3)
    np.testing.assert_allclose(found.depth, -np.expm1(-found.prominence))
    # floored at exp(−20): the deeper core is cut flat at τ = 20, still finite
    capped = find_optical_depth_lines(wavelength, transmission, max_optical_depth=20.0)
    assert np.all(np.isfinite(capped.prominence)) and capped.prominence.max() <= 20.0


def test_optical_depth_lines_reject_bad_input():
    from blase_specutils.prep.linefind import find_optical_depth_lines

    wavelength = np.arange(100.0)
    with pytest.raises(ValueError, match="transmission has 1 negative values"):
        find_optical_depth_lines(wavelength, np.r_[np.ones(99), -0.1])
    with pytest.raises(ValueError, match="max_optical_depth must be finite and > 0"):
        find_optical_depth_lines(wavelength, np.ones(100), max_optical_depth=0.0)
