"""A telluric model by molecule: ``fit(..., telluric={"H2O": ..., "O2": ...})``.

The transmission is ``∏_m T_m^{s_m}`` with one optical-depth scale per molecule
(core/components.py). The references here are independent of the sparse kernels: the
forests' dense evaluation (every line on every pixel) and ``blase_specutils.testing.observe``
(its own fine grid, scipy Gaussian filter and cumulative-integral binning) for the data.
"""

from __future__ import annotations

import math
import re

import astropy.units as u
import numpy as np
import pytest
import torch
from specutils import Spectrum

from blase_specutils.astro.results import CloneResult, read_fit, telluric_settings
from blase_specutils.astro.telluric_correction import correct_tellurics, observed_transmission
from blase_specutils.core.components import ComponentForest
from blase_specutils.core.forward import ForwardModel
from blase_specutils.core.lineforest import LineForest
from blase_specutils.fitting import fit
from blase_specutils.testing import observe

LO, HI, N_PIX = 8505.0, 8550.0, 1200
R_INSTRUMENT = 60000.0
TRUE_SCALES = {"H2O": 1.3, "O2": 0.7}


def _forest(centres, depths, sigma, mode="log"):
    centres = np.asarray(centres, dtype=np.float64)
    depths = np.asarray(depths, dtype=np.float64)
    gamma = np.full(centres.size, 0.2 * sigma)
    # amplitude for a central depth d of a near-Gaussian line: a V(0) = τ (log) or d
    peak = 1.0 / (sigma * math.sqrt(2 * math.pi))
    strength = -np.log1p(-depths) if mode == "log" else depths
    return LineForest(
        centres, strength / peak, np.full(centres.size, sigma), gamma, mode=mode,
        dtype=torch.float64,
    )  # fmt: skip


def _molecules(mode_o2="log"):
    h2o = _forest(
        [8509.1, 8516.4, 8523.8, 8531.2, 8536.6, 8544.3], [0.6, 0.4, 0.7, 0.5, 0.3, 0.6], 0.06
    )
    o2 = _forest(
        [8512.7, 8520.1, 8527.5, 8539.9, 8547.2], [0.5, 0.6, 0.4, 0.55, 0.45], 0.05, mode_o2
    )
    return h2o, o2


def _star():
    return _forest([8525.0, 8541.0], [0.2, 0.15], 0.6, mode="linear")


def _clone(forest):
    """A CloneResult covering 8495–8560 Å (the range a fit checks the data against)."""
    wl = np.arange(8495.0, 8560.0, 0.01)
    flux = np.exp(_dense_log(forest, wl))
    return CloneResult(
        forest, wl, flux, np.ones_like(wl), meta={"wavelength_min": wl[0], "wavelength_max": wl[-1]}
    )


def _dense_log(forest, wl):
    with torch.no_grad():
        return torch.log(forest.dense_flux(torch.as_tensor(wl))).double().numpy()


@pytest.fixture(scope="module")
def injection():
    """Data: star × T_H2O^1.3 × T_O2^0.7 observed at R = 60,000, S/N 300; the fit by
    molecule and the fit with one scale for the combined clone."""
    wl = np.arange(8495.0, 8560.0, 0.005)
    h2o, o2 = _molecules()
    star = _star()
    truth = np.exp(
        _dense_log(star, wl) + TRUE_SCALES["H2O"] * _dense_log(h2o, wl)
        + TRUE_SCALES["O2"] * _dense_log(o2, wl)
    )  # fmt: skip
    pixels = np.linspace(LO, HI, N_PIX)
    data = observe(
        wl, truth, pixels, rv=0.0, vsini=0.01, resolving_power=R_INSTRUMENT, snr=300.0, seed=3
    )
    common = dict(
        stellar=_clone(star), rv=0.0, rv_search=5.0, vsini=0.0, fit_vsini=False,
        resolving_power=R_INSTRUMENT, epochs=0, global_epochs=30, progress=False,
    )  # fmt: skip
    molecules = {"H2O": _clone(h2o), "O2": _clone(o2)}
    by_molecule = fit(pixels, data.flux, data.uncertainty, telluric=molecules, **common)
    combined = _clone(_concatenated(h2o, o2))
    single = fit(pixels, data.flux, data.uncertainty, telluric=combined, **common)
    return by_molecule, single, pixels, data


def _concatenated(*forests):
    """One plain forest of every line (same mode): the components' product at scale 1."""
    props = [f.line_properties() for f in forests]
    return LineForest(
        *(np.concatenate([p[k] for p in props]) for k in ("center", "amplitude", "sigma", "gamma")),
        mode=forests[0].mode, dtype=torch.float64,
    )  # fmt: skip


# ------------------------------------------------------------------ the forest
def test_component_forest_matches_dense_product_with_scales_and_mixed_modes():
    h2o, o2 = _molecules(mode_o2="linear")
    forest = ComponentForest.from_forests([("H2O", h2o), ("O2", o2)])
    assert forest.names == ("H2O", "O2") and forest.modes == ("log", "linear")
    assert forest.mode == "mixed" and forest.n_components == 2
    wl = torch.linspace(8500.0, 8552.0, 12000, dtype=torch.float64)
    layout = forest.make_layout(wl, tolerance=1e-7)
    scales = torch.tensor([1.3, 0.7], dtype=torch.float64)
    got = forest.log_transmission(layout, scales=scales).detach().numpy()
    expected = 1.3 * _dense_log(h2o, wl.numpy()) + 0.7 * _dense_log(o2, wl.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # the unscaled evaluation is the plain product, and forward() its exponential
    np.testing.assert_allclose(
        forest(layout).detach().numpy(),
        np.exp(_dense_log(h2o, wl.numpy()) + _dense_log(o2, wl.numpy())), atol=1e-6,
    )  # fmt: skip
    # each component is a bit-exact copy of its input
    for name, source in (("H2O", h2o), ("O2", o2)):
        part = forest.component_forest(name)
        assert part.mode == source.mode
        for attr in ("center_ref", "ln_amplitude", "ln_sigma", "ln_gamma", "center_shift"):
            assert torch.equal(getattr(part, attr), getattr(source, attr))


def test_scale_gradients_match_finite_differences():
    h2o, o2 = _molecules(mode_o2="linear")
    forest = ComponentForest.from_forests([("H2O", h2o), ("O2", o2)])
    wl = torch.linspace(8505.0, 8550.0, 4000, dtype=torch.float64)
    layout = forest.make_layout(wl)
    scales = torch.tensor([1.3, 0.7], dtype=torch.float64, requires_grad=True)
    weights = torch.linspace(0.5, 1.5, wl.numel(), dtype=torch.float64)

    def loss(s):
        return torch.sum(weights * torch.exp(forest.log_transmission(layout, scales=s)))

    (grad,) = torch.autograd.grad(loss(scales), scales)
    for m in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[m] = 1e-6
        with torch.no_grad():
            numeric = (loss(scales + step) - loss(scales - step)) / 2e-6
        assert float(grad[m]) == pytest.approx(float(numeric), rel=1e-6)


def test_single_clone_path_is_unchanged():
    """A plain forest keeps a scalar scale and the model T^s, bit for bit."""
    h2o, _ = _molecules()
    bounds = np.linspace(8510, 8540, 301)
    edges = np.stack([bounds[:-1], bounds[1:]], 1)
    model = ForwardModel(
        _star(), [edges], telluric=h2o, fit_telluric_scale=True, dtype=torch.float64
    )
    assert model.ln_telluric_scale.shape == ()
    with torch.no_grad():
        model.ln_telluric_scale.fill_(math.log(1.3))
        log_t = h2o.log_transmission(model.telluric_layout)
        expected = torch.exp(torch.exp(model.ln_telluric_scale) * log_t)
        assert torch.equal(model.telluric_fine(), expected)
    by_molecule = ForwardModel(
        _star(), [edges], telluric=ComponentForest.from_forests([("H2O", h2o)]),
        fit_telluric_scale=True, dtype=torch.float64,
    )  # fmt: skip
    assert by_molecule.ln_telluric_scale.shape == (1,)
    with torch.no_grad():
        by_molecule.ln_telluric_scale.fill_(math.log(1.3))
        np.testing.assert_allclose(
            by_molecule.telluric_fine().numpy(), expected.numpy(), rtol=0, atol=1e-14
        )


# ------------------------------------------------------------------ the fit
def test_fit_recovers_each_molecules_scale(injection):
    by_molecule, single, _, _ = injection
    scales = by_molecule.telluric_scales
    errors = by_molecule.telluric_scale_uncertainties
    assert set(scales) == {"H2O", "O2"}
    for name, truth in TRUE_SCALES.items():
        value = scales[name].to_value(u.one)
        sigma = errors[name].to_value(u.one)
        assert scales[name].unit == u.one
        assert 0 < sigma < 0.05 * truth, (name, sigma)
        assert abs(value - truth) < 3 * sigma, (name, value, sigma)
        assert abs(value - truth) < 0.03 * truth, (name, value)
    # χ²_red ≈ 1 with a scale per molecule; one shared scale cannot fit both columns
    assert by_molecule.chi2_reduced < 1.3
    assert single.chi2_reduced > 1.5 * by_molecule.chi2_reduced
    assert set(single.telluric_scales) == {"telluric"}
    shared = single.telluric_scales["telluric"].to_value(u.one)
    assert 0.7 < shared < 1.3  # somewhere between the two
    table = by_molecule.parameters
    assert table["telluric_scale_H2O"][0] == pytest.approx(scales["H2O"].value)
    assert "telluric_scale" in single.parameters.colnames


def test_round_trip_through_the_fit_file_is_exact(injection, tmp_path):
    by_molecule = injection[0]
    path = by_molecule.write(tmp_path / "fit.asdf")
    loaded = read_fit(path)
    fresh, stored = by_molecule.telluric, loaded.telluric
    assert isinstance(stored, ComponentForest)
    assert stored.names == fresh.names and stored.modes == fresh.modes
    for attr in ("center_ref", "ln_amplitude", "ln_sigma", "ln_gamma", "center_shift", "component"):
        assert torch.equal(getattr(stored, attr), getattr(fresh, attr).cpu()), attr
    assert telluric_settings(loaded) == telluric_settings(by_molecule)
    assert {k: v.value for k, v in loaded.telluric_scales.items()} == {
        k: v.value for k, v in by_molecule.telluric_scales.items()
    }
    assert {k: v.value for k, v in loaded.telluric_scale_uncertainties.items()} == {
        k: v.value for k, v in by_molecule.telluric_scale_uncertainties.items()
    }
    # and the transmission observed from the file is the fresh fit's
    pixels = np.linspace(LO + 1, HI - 1, 500)
    np.testing.assert_array_equal(
        observed_transmission(loaded, pixels), observed_transmission(by_molecule, pixels)
    )


def test_correct_tellurics_with_a_model_by_molecule(injection):
    by_molecule = injection[0]
    settings = telluric_settings(by_molecule)
    assert settings["components"] == ["H2O", "O2"] and len(settings["ln_scale"]) == 2
    fitted = {k: v.value for k, v in by_molecule.telluric_scales.items()}
    pixels = np.linspace(LO + 1, HI - 1, 900)
    # an independent reference: dense molecules, each at its fitted scale × airmass ratio
    grid = np.arange(LO - 3.0, HI + 3.0, 0.002)
    forest = by_molecule.telluric
    airmass = 1.5

    def reference(scales):
        log_t = sum(
            scales[name] * airmass * _dense_log(forest.component_forest(name), grid)
            for name in forest.names
        )
        return observe(
            grid, np.exp(log_t), pixels, rv=0.0, vsini=0.01,
            resolving_power=settings["resolving_power"], snr=1e12, step_kms=0.05,
        ).noiseless  # fmt: skip

    t_ref = reference(fitted)
    science = Spectrum(spectral_axis=pixels * u.AA, flux=2.0 * t_ref * u.one)
    corrected = correct_tellurics(
        science, by_molecule, airmass_ratio=airmass, min_transmission=0.05
    )
    t = corrected.meta["telluric_transmission"]
    assert t.min() < 0.3
    assert np.max(np.abs(t - t_ref)) < 2e-3
    good = ~corrected.mask
    assert good.sum() > 0.9 * pixels.size
    np.testing.assert_allclose(corrected.flux.value, 2.0 * t_ref / t)
    # the molecules' scales swapped would be far off: each one's own scale is applied
    swapped = reference({"H2O": fitted["O2"], "O2": fitted["H2O"]})
    assert np.max(np.abs(t - swapped)) > 0.05
    info = corrected.meta["telluric_correction"]
    assert info["standard_scale"] == pytest.approx(fitted)
    assert info["scale"] == pytest.approx({k: airmass * v for k, v in fitted.items()})
    # airmass 1 versus 1.5: each molecule's optical depth scales, T^1.5 overall
    t1 = observed_transmission(by_molecule, pixels)
    t15 = observed_transmission(by_molecule, pixels, airmass_ratio=1.5)
    deep = t1 < 0.9
    assert deep.sum() > 20
    assert np.all(t15[deep] < t1[deep])


# ------------------------------------------------------------------ errors
def test_bad_collections_of_clones_are_refused():
    h2o, o2 = _molecules()
    pixels = np.linspace(LO, HI, 200)
    flux = np.ones_like(pixels)
    kw = dict(stellar=_clone(_star()), epochs=0, global_epochs=0, rv_search=0.0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        fit(pixels, flux, 0.01 * flux, telluric={}, **kw)
    with pytest.raises(ValueError, match="empty"):
        fit(pixels, flux, 0.01 * flux, telluric=[], **kw)
    with pytest.raises(TypeError, match=r"telluric\['O2'\]"):
        fit(pixels, flux, 0.01 * flux, telluric={"H2O": h2o, "O2": 3.0}, **kw)
    with pytest.raises(TypeError, match=r"telluric\['O2'\]"):
        fit(pixels, flux, 0.01 * flux, telluric={"H2O": h2o, "O2": None}, **kw)
    with pytest.raises(ValueError, match="distinct.*H2O"):
        fit(pixels, flux, 0.01 * flux, telluric=[("H2O", h2o), ("H2O", o2)], **kw)
    with pytest.raises(ValueError, match="non-empty strings"):
        fit(pixels, flux, 0.01 * flux, telluric={"": h2o}, **kw)
    with pytest.raises(TypeError, match="pairs"):
        fit(pixels, flux, 0.01 * flux, telluric=[h2o, o2], **kw)
    with pytest.raises(TypeError, match="dict"):
        fit(pixels, flux, 0.01 * flux, telluric=3, **kw)
    with pytest.raises(ValueError, match="differ in dtype"):
        ComponentForest.from_forests([("H2O", h2o), ("O2", o2.to(torch.float32))])


# ------------------------------------------------------------------ cloning a PSG file
def _write_psg(path):
    """A small PSG-format file (µm): H2O and O2 lines, CO2 below 1e-3 deep, Rayleigh."""
    wl_aa = np.arange(8495.0, 8560.0, 0.01)
    h2o, o2 = _molecules()
    t_h2o = np.exp(_dense_log(h2o, wl_aa))
    t_o2 = np.exp(_dense_log(o2, wl_aa))
    t_co2 = 1.0 - 4e-4 * np.exp(-0.5 * ((wl_aa - 8530.0) / 0.05) ** 2)
    rayleigh = 0.99 + 0.001 * (wl_aa - 8495.0) / 65.0
    total = t_h2o * t_o2 * t_co2 * rayleigh
    rows = np.column_stack([wl_aa / 1e4, total, t_h2o, t_co2, t_o2, rayleigh])
    header = "# Spectral unit: Wavelength [um]\n# Wave/freq Total H2O CO2 O2 Rayleigh\n"
    with open(path, "w") as handle:
        handle.write(header)
        np.savetxt(handle, rows, fmt="%.8f")
    return wl_aa, {"H2O": t_h2o, "O2": t_o2}


def test_clone_molecules_clones_each_absorbing_column(tmp_path):
    from blase_specutils.cloning import clone_molecules

    path = tmp_path / "psg_trn.txt"
    wl, truth = _write_psg(path)
    clones = clone_molecules(path, epochs=30, prominence=0.02, progress=False)
    # Total and Rayleigh are not molecules; CO2 absorbs less than 1e-3 here
    assert list(clones) == ["H2O", "O2"]
    for name, result in clones.items():
        assert result.meta["molecule"] == name
        assert result.meta["min_transmission"] == pytest.approx(truth[name].min(), abs=1e-7)
        with torch.no_grad():
            model = result.forest.dense_flux(torch.as_tensor(wl)).double().numpy()
        assert np.sqrt(np.mean((model - truth[name]) ** 2)) < 5e-3, name
    # asked for by name, CO2 is still skipped when it does not absorb; with a lower
    # threshold it is cloned
    kept = clone_molecules(path, ["H2O", "CO2"], epochs=5, progress=False)
    assert list(kept) == ["H2O"]
    with pytest.raises(ValueError, match="no molecule absorbs.*CO2"):
        clone_molecules(path, ["CO2"], epochs=5, progress=False)
    weak = clone_molecules(
        path, ["CO2"], min_absorption=1e-4, prominence=1e-4, epochs=5, progress=False
    )
    assert list(weak) == ["CO2"]
    # deeper than min_absorption but shallower than the prominence (a PSG column over the
    # IGRINS H band did this): left out with a warning, not a "no lines found" crash
    with pytest.warns(UserWarning, match="CO2 0.0004"):
        shallow = clone_molecules(
            path, ["H2O", "CO2"], min_absorption=1e-4, epochs=5, progress=False
        )
    assert list(shallow) == ["H2O"]
    with pytest.raises(ValueError, match="lower prominence"):
        clone_molecules(path, ["CO2"], min_absorption=1e-4, epochs=5, progress=False)
    with pytest.raises(ValueError, match="min_absorption"):
        clone_molecules(path, min_absorption=1.0)
    with pytest.raises(ValueError, match="no column"):
        clone_molecules(path, ["CH4"])


def test_line_table_round_trip_of_mixed_modes_is_exact():
    from blase_specutils.astro.clone_files import forest_from_table, forest_to_table

    h2o, o2 = _molecules(mode_o2="linear")
    forest = ComponentForest.from_forests([("H2O", h2o), ("O2", o2)])
    table = forest_to_table(forest)
    assert table.meta["components"] == [
        {"name": "H2O", "mode": "log"}, {"name": "O2", "mode": "linear"}
    ]  # fmt: skip
    # the single-line depth follows each component's mode: 1 − T at the (isolated)
    # line's centre in that component's own dense evaluation
    for k, source in enumerate((h2o, o2)):
        centres = source.center_ref.numpy()
        expected = 1.0 - np.exp(_dense_log(source, centres))
        np.testing.assert_allclose(table["depth"][table["component"] == k], expected, rtol=5e-4)
    back = forest_from_table(table)
    assert isinstance(back, ComponentForest) and back.modes == ("log", "linear")
    for attr in ("center_ref", "ln_amplitude", "ln_sigma", "ln_gamma", "center_shift", "component"):
        assert torch.equal(getattr(back, attr), getattr(forest, attr)), attr
    # a plain forest's table has no components, and a damaged one says what is wrong
    assert "components" not in forest_to_table(h2o).meta
    del table["component"]
    with pytest.raises(ValueError, match="component"):
        forest_from_table(table)


# ------------------------------------------------------------------ command line
def test_cli_takes_one_telluric_clone_per_molecule(injection, tmp_path, capsys):
    from astropy.table import Table

    from blase_specutils.cli import main

    _, _, pixels, data = injection
    table = Table(
        {"wavelength": pixels * u.AA, "flux": data.flux, "uncertainty": data.uncertainty}
    )
    observed = tmp_path / "standard.fits"
    table.write(observed, format="fits")
    h2o, o2 = _molecules()
    paths = {}
    for name, forest in (
        ("star", _star()), ("H2O", h2o), ("O2", o2), ("all", _concatenated(h2o, o2))
    ):
        paths[name] = tmp_path / f"{name}.ecsv"
        _clone(forest).save(paths[name])
    base = [
        "fit", str(observed), "--stellar", str(paths["star"]), "--rv-search", "5",
        "--vsini", "1", "--resolving-power", str(R_INSTRUMENT), "--epochs", "0",
        "--global-epochs", "30", "-q",
    ]  # fmt: skip
    named = ["--telluric", f"H2O={paths['H2O']}", "--telluric", f"O2={paths['O2']}"]
    assert main([*base, *named, "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for name, truth in TRUE_SCALES.items():
        match = re.search(rf"telluric scale {name} = ([\d.]+) ± ([\d.]+)", out)
        assert match, out
        assert float(match.group(1)) == pytest.approx(truth, rel=0.05)
    loaded = read_fit(tmp_path / "out" / "fit.asdf")
    assert loaded.telluric.names == ("H2O", "O2")
    # one plain path is one clone with one scale, as before
    assert main([*base, "--telluric", str(paths["all"]), "-o", str(tmp_path / "one")]) == 0
    assert "telluric scale" not in capsys.readouterr().out
    assert read_fit(tmp_path / "one" / "fit.asdf").telluric_scales.keys() == {"telluric"}
    # mixing a plain path with named ones, or a molecule twice, is a usage error
    assert main([*base, "--telluric", f"{paths['H2O']}", "--telluric", f"O2={paths['O2']}"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    twice = ["--telluric", f"O2={paths['H2O']}", "--telluric", f"O2={paths['O2']}"]
    assert main([*base, *twice]) == 2
    assert "twice" in capsys.readouterr().err


def test_the_line_stage_trains_the_molecules_lines(injection):
    """With epochs > 0 the molecules' amplitudes learn (mixed modes too) and the model
    stays the fit's: χ² no worse than with the lines held."""
    _, _, pixels, data = injection
    h2o, o2 = _molecules(mode_o2="linear")
    result = fit(
        pixels, data.flux, data.uncertainty, stellar=_clone(_star()),
        telluric=[("H2O", _clone(h2o)), ("O2", _clone(o2))], rv=0.0, rv_search=5.0,
        vsini=0.0, fit_vsini=False, resolving_power=R_INSTRUMENT, epochs=20,
        global_epochs=10, progress=False, telluric_trainable=("amplitude", "sigma"),
    )  # fmt: skip
    trained = result.telluric
    start = ComponentForest.from_forests([("H2O", h2o), ("O2", o2)])
    assert trained.modes == ("log", "linear")
    assert not torch.equal(trained.ln_amplitude.detach().cpu(), start.ln_amplitude)
    assert result.meta["n_line_dof"] > 0
    assert set(result.telluric_scales) == {"H2O", "O2"}
    assert result.chi2_reduced < 2.0


def test_a_batch_fit_job_takes_one_telluric_clone_per_molecule(tmp_path):
    from blase_specutils import batch

    h2o, o2 = _molecules()
    paths = {}
    for name, forest in (("star", _star()), ("H2O", h2o), ("O2", o2)):
        paths[name] = tmp_path / f"{name}.ecsv"
        _clone(forest).save(paths[name])
    job = batch.Job(
        "fit", stellar=paths["star"], telluric={"O2": paths["O2"], "H2O": paths["H2O"]}
    )
    assert list(job.telluric) == ["H2O", "O2"]  # sorted: one order, one fingerprint
    assert [which for which, _ in job.clone_paths()] == [
        "stellar", "telluric['H2O']", "telluric['O2']"
    ]  # fmt: skip
    assert batch.Job.from_dict(job.to_dict()) == job
    assert batch.Job.load(job.save(tmp_path / "job.json")) == job
    before = job.fingerprint()
    _clone(_molecules()[1].to(torch.float32)).save(paths["O2"], overwrite=True)
    assert job.fingerprint() != before  # a molecule's clone file is part of the job
    with pytest.raises(ValueError, match="empty dict"):
        batch.Job("fit", stellar=paths["star"], telluric={})
    with pytest.raises(ValueError, match=r"telluric\['O2'\] clone must be a path"):
        batch.Job("fit", stellar=paths["star"], telluric={"O2": 3})
