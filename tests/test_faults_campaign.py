"""One test per defect class found by the issue-16 campaign (benchmarks/fault_campaign.py).

Each fails on the code before the fix: a silently wrong answer or an unhelpful crash.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
import torch

import blase_specutils as bs
from blase_specutils.testing import observe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def grid():
    rng = np.random.default_rng(1)
    wl = np.linspace(10000.0, 10050.0, 2000)
    flux = np.ones_like(wl)
    for c in rng.uniform(10002, 10048, 12):
        flux *= 1 - 0.5 * rng.uniform(0.2, 1) * np.exp(-0.5 * ((wl - c) / 0.05) ** 2)
    return wl, flux


@pytest.fixture(scope="module")
def small_clone(grid):
    wl, flux = grid
    return bs.clone(wl, flux, epochs=10, refine=0, progress=False)


@pytest.fixture(scope="module")
def obs(grid):
    wl, flux = grid
    return observe(wl, flux, np.linspace(10005.0, 10045.0, 600), rv=3.0, vsini=5.0,
                   resolving_power=55000, snr=200)  # fmt: skip


FAST = dict(epochs=3, global_epochs=2, progress=False)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("learning_rate", np.inf),
        ("rtol", -1.0),
        ("rtol", np.nan),
        ("patience", 0),
        ("relayout_every", -5),
        ("time_limit", -1.0),
        ("time_limit", np.nan),
        ("max_optical_depth", 0.0),
        ("seed", 1.5),
        ("seed", "abc"),
        ("prominence", "0.1"),
    ],
)
def test_clone_settings_are_checked_like_fit_settings(grid, setting, value):
    # before: accepted silently (rtol=-1, time_limit=-1 -> one epoch, seed 1.5) or
    # crashed deep inside (patience=0: "min() arg is an empty sequence")
    wl, flux = grid
    with pytest.raises(ValueError, match=setting):
        bs.clone(wl, flux, epochs=2, refine=0, progress=False, **{setting: value})


def test_clone_flags_must_be_booleans(grid):
    wl, flux = grid
    with pytest.raises(TypeError, match="flatten must be True or False"):
        bs.clone(wl, flux, epochs=1, progress=False, flatten="no")  # "no" was True


@pytest.mark.parametrize("where", ["clone", "fit", "load_clone"])
def test_unknown_device_strings_are_value_errors(where, grid, small_clone, obs, tmp_path):
    wl, flux = grid
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):  # was torch's RuntimeError
        if where == "clone":
            bs.clone(wl, flux, epochs=1, progress=False, device="gpu0")
        elif where == "fit":
            bs.fit(obs.wavelength, obs.flux, obs.uncertainty, stellar=small_clone, device="gpu0")
        else:
            bs.load_clone(small_clone.save(tmp_path / "c.ecsv"), device="gpu0")


def test_fit_refuses_half_precision_before_any_work(small_clone, obs):
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        bs.fit(obs.wavelength, obs.flux, obs.uncertainty, stellar=small_clone,
               dtype=torch.float16, **FAST)  # fmt: skip


def test_complex_arrays_are_refused_not_cast(grid, small_clone, obs):
    # numpy's cast only warns and drops the imaginary part
    wl, flux = grid
    with pytest.raises(TypeError, match="flux is complex"):
        bs.clone(wl, flux + 1j * flux, epochs=1, progress=False)
    with pytest.raises(TypeError, match="complex"):
        bs.fit(obs.wavelength, obs.flux + 0j, obs.uncertainty, stellar=small_clone, **FAST)


def test_masked_array_entries_are_masked_pixels(small_clone, obs, grid):
    # np.asarray drops a MaskedArray's mask: the values under it were fitted as data
    flux = np.ma.masked_array(obs.flux.copy(), mask=np.zeros(obs.flux.size, bool))
    flux.data[100:140] = 50.0
    flux[100:140] = np.ma.masked
    plain = bs.fit(obs.wavelength, obs.flux, obs.uncertainty, stellar=small_clone, **FAST)
    masked = bs.fit(obs.wavelength, flux, obs.uncertainty, stellar=small_clone, **FAST)
    assert abs((masked.rv - plain.rv).to_value(u.km / u.s)) < 0.3
    good = masked.good[0] if isinstance(masked.good, list) else masked.good
    assert not good[100:140].any() and good[:100].all()
    wl, raw = grid
    mflux = np.ma.masked_array(raw.copy(), mask=np.zeros(raw.size, bool))
    mflux[300:320] = np.ma.masked
    assert bs.clone(wl, mflux, epochs=1, refine=0, progress=False).wavelength.size == wl.size - 20
    with pytest.raises(ValueError, match="masked values; a wavelength grid cannot have holes"):
        bs.fit(np.ma.masked_array(obs.wavelength, mask=flux.mask), obs.flux, obs.uncertainty,
               stellar=small_clone, **FAST)  # fmt: skip


def test_masks_must_be_boolean(small_clone, obs):
    # a float mask of 0.5 everywhere became all True
    with pytest.raises(ValueError, match="mask must be booleans"):
        bs.fit(obs.wavelength, obs.flux, obs.uncertainty, stellar=small_clone,
               mask=np.full(obs.flux.size, 0.5), **FAST)  # fmt: skip
    ones = bs.fit(obs.wavelength, obs.flux, obs.uncertainty, stellar=small_clone,
                  mask=np.ones(obs.flux.size, int), **FAST)  # fmt: skip
    good = ones.good[0] if isinstance(ones.good, list) else ones.good
    assert good.all()


def test_vsini_start_and_ceiling_are_consistent(small_clone, obs):
    args = (obs.wavelength, obs.flux, obs.uncertainty)
    with pytest.raises(ValueError, match="above vsini_max"):
        bs.fit(*args, stellar=small_clone, vsini=20.0, vsini_max=5.0, **FAST)
    with pytest.raises(ValueError, match="vsini = 1e\\+06 km/s is at or beyond the speed"):
        bs.fit(*args, stellar=small_clone, vsini=1e6, **FAST)


def test_empty_spectrum_list_is_a_value_error(small_clone):
    from specutils import SpectrumList

    with pytest.raises(ValueError, match="empty"):  # was IndexError
        bs.fit(SpectrumList([]), stellar=small_clone, **FAST)


def test_tiny_uncertainties_are_refused_before_chi2_overflows(small_clone, obs):
    # σ = 1e-30: χ² overflows float32 and the fit died with "loss became nan"
    with pytest.raises(ValueError, match="uncertainties are tiny against the flux"):
        bs.fit(obs.wavelength, obs.flux, np.full_like(obs.flux, 1e-30), stellar=small_clone,
               **FAST)  # fmt: skip


def test_output_and_input_paths_say_what_is_wrong(small_clone, tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(IsADirectoryError, match="is a folder"):  # was "exists; overwrite"
        small_clone.save(tmp_path)
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        small_clone.save(a_file / "c.ecsv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        small_clone.save(tmp_path / "missing" / "c.ecsv")
    with pytest.raises(IsADirectoryError, match="is a folder, not a fit file"):
        bs.read_fit(tmp_path)  # was "no fit file at <folder>"
    with pytest.raises(IsADirectoryError, match="is a folder, not a template"):
        bs.read_template(tmp_path)
    with pytest.raises(TypeError, match="must be a path"):
        bs.read_fit(None)


def test_text_template_readers_name_binary_files(tmp_path):
    png = tmp_path / "spectrum.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ValueError, match="is a PNG image, not a text template"):
        bs.read_template(png)  # was "column index 1 out of range for 1 columns"


def test_clone_evaluate_takes_a_velocity_quantity(small_clone, grid):
    wl = grid[0][:50]
    expected = small_clone.evaluate(wl, velocity_kms=3.0)
    np.testing.assert_allclose(small_clone.evaluate(wl, velocity_kms=3000 * u.m / u.s), expected)
    with pytest.raises(ValueError, match="velocity_kms must be in km / s"):
        small_clone.evaluate(wl, velocity_kms=3 * u.AA)


def test_template_readers_are_public():
    from blase_specutils.astro import templates

    assert bs.read_template is templates.read_template
    assert bs.read_psg is templates.read_psg
    assert bs.read_sonora is templates.read_sonora
