"""Files and faults (issue 16, items 8–13): damaged, mismatched and foreign files, failed
writes, concurrent writers, a second backward pass, and inputs in the wrong unit.

Each test covers one class of defect: a file that is damaged, truncated, from another
save or edited by hand must give a clear error naming the file, never a silently wrong
clone or fit; a failed write must leave the previous files and no temporary ones.
"""

from __future__ import annotations

import re
import threading

import astropy.units as u
import numpy as np
import pytest
import torch
from astropy.io import registry
from astropy.nddata import StdDevUncertainty
from astropy.table import QTable
from specutils import Spectrum, SpectrumList

import blase_specutils as bs
from blase_specutils import _validation
from blase_specutils.astro import results as R
from blase_specutils.astro.clones import CloneResult, forest_from_table, forest_to_table
from blase_specutils.cloning import load_clone
from blase_specutils.core import sparse, train
from blase_specutils.core.lineforest import LineForest


# ----------------------------------------------------------------------------- helpers
def _forest(n=12, seed=0, dtype=torch.float32):
    rng = np.random.default_rng(seed)
    return LineForest(
        np.sort(rng.uniform(8601.0, 8619.0, n)),
        rng.uniform(0.005, 0.05, n),
        rng.uniform(0.02, 0.06, n),
        rng.uniform(0.005, 0.03, n),
        dtype=dtype,
    )


def _clone(seed=0, n=12) -> CloneResult:
    """A small clone with a spectrum, built without training (fast)."""
    forest = _forest(n, seed)
    wavelength = np.arange(8600.0, 8620.0, 0.01)
    with torch.no_grad():
        model = forest(forest.make_layout(wavelength)).double().numpy()
    continuum = np.linspace(1.0, 1.2, wavelength.size) * (1.0 + 0.1 * seed)
    return CloneResult(forest, wavelength, model, continuum, meta={"teff": 5000.0 + seed})


def _same_pair(loaded: CloneResult, original: CloneResult) -> bool:
    lines_match = torch.equal(loaded.forest.ln_amplitude, original.forest.ln_amplitude)
    spectrum_match = np.array_equal(loaded.continuum, original.continuum)
    return lines_match and spectrum_match


def _cut_rows(path, keep):
    """Keep the ECSV header and the first ``keep`` data rows (a truncated copy)."""
    lines = path.read_text().splitlines(keepends=True)
    header = [x for x in lines if x.startswith("#")]
    body = [x for x in lines if not x.startswith("#")]
    path.write_text("".join(header + body[: keep + 1]))  # + the column-name row


@pytest.fixture(scope="module")
def saved_fit(tmp_path_factory):
    """A one-order fit written to ASDF (tiny: a few epochs on a synthetic clone)."""
    rng = np.random.default_rng(5)
    wl = np.arange(8500.0, 8560.0, 0.01)
    centers = np.sort(rng.uniform(8502, 8558, 25))
    flux = np.ones_like(wl)
    for c, d in zip(centers, rng.uniform(0.1, 0.6, 25)):
        flux *= 1 - d * np.exp(-0.5 * ((wl - c) / 0.06) ** 2)
    template = bs.clone(wl, flux, flatten=False, prominence=0.02, epochs=10, progress=False)
    obs = np.linspace(8510.0, 8550.0, 600)
    data = template.evaluate(obs, velocity_kms=-7.0) + rng.normal(0, 0.004, obs.size)
    result = bs.fit(
        obs,
        data,
        np.full(obs.size, 0.004),
        stellar=template,
        rv=0.0,
        rv_search=15.0,
        vsini=0.0,
        fit_vsini=False,
        epochs=2,
        global_epochs=2,
        progress=False,
    )
    path = tmp_path_factory.mktemp("fit") / "fit.asdf"
    R.write_fit(result, path)
    return path


# ------------------------------------------------------------------ 8. fit files: checksums
def test_read_fit_refuses_a_file_with_flipped_bytes(saved_fit, tmp_path):
    good = saved_fit.read_bytes()
    R.read_fit(saved_fit)  # the intact file reads
    rng = np.random.default_rng(1)
    bad = tmp_path / "flipped.asdf"
    # 100 bytes flipped inside the arrays' data (line centres, orders, …): the block
    # headers (magic b"\xd3BLK", 6 + 48 bytes) are left alone, so only a checksum tells
    starts = [m.start() for m in re.finditer(b"\xd3BLK", good)]
    ends = starts[1:] + [good.find(b"#ASDF BLOCK INDEX") % (len(good) + 1)]
    inside = np.concatenate([np.arange(a + 54, b) for a, b in zip(starts, ends) if b > a + 54])
    damaged = bytearray(good)
    for i in rng.choice(inside, 100, replace=False):
        damaged[i] ^= 0x5A
    bad.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"flipped\.asdf is damaged.*checksum"):
        R.read_fit(bad)
    # 100 bytes flipped anywhere after the magic: never a fit, always a clear error
    for seed in range(3):
        damaged = bytearray(good)
        for i in np.random.default_rng(seed).choice(np.arange(6, len(good)), 100, replace=False):
            damaged[i] ^= 0x5A
        bad.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=r"flipped\.asdf is (damaged|an ASDF file but)"):
            R.read_fit(bad)
    # a digit of a result in the YAML header (no block checksum covers it)
    at = good.index(b"\n  rv: -") + len(b"\n  rv: -")
    digit = good[at : at + 1]
    bad.write_bytes(good[:at] + (b"8" if digit != b"8" else b"9") + good[at + 1 :])
    with pytest.raises(ValueError, match=r"flipped\.asdf is damaged.*results and settings"):
        R.read_fit(bad)


# ------------------------------------------------- 9. clone pairs: atomic, tied, checked on load
def test_load_clone_refuses_a_truncated_or_mismatched_pair(tmp_path):
    a, b = _clone(0), _clone(1, n=9)
    path_a = a.save(tmp_path / "a.ecsv")
    path_b = b.save(tmp_path / "b.ecsv")
    assert _same_pair(load_clone(path_a), a)
    assert "lines_sha256" not in load_clone(path_a).meta  # integrity keys stay in the file

    # the line table cut to fewer lines (header intact)
    cut = tmp_path / "cut.ecsv"
    cut.write_text(path_a.read_text())
    (tmp_path / "cut.spectrum.ecsv").write_text((tmp_path / "a.spectrum.ecsv").read_text())
    _cut_rows(cut, 5)
    with pytest.raises(ValueError, match=r"cut\.ecsv has 5 lines but 12 were saved"):
        load_clone(cut)

    # one clone's lines with the other's spectrum
    mixed = tmp_path / "mixed.ecsv"
    mixed.write_text(path_a.read_text())
    (tmp_path / "mixed.spectrum.ecsv").write_text((tmp_path / "b.spectrum.ecsv").read_text())
    with pytest.raises(ValueError, match="do not belong together"):
        load_clone(mixed)

    # the spectrum truncated at a row boundary, and a table cut in the middle of a row
    _cut_rows(tmp_path / "b.spectrum.ecsv", 100)
    with pytest.raises(ValueError, match=r"b\.ecsv and its spectrum file .* do not belong"):
        load_clone(path_b)
    text = path_a.read_text()
    path_a.write_text(text[: len(text) - 40])
    with pytest.raises(ValueError, match=r"a\.ecsv"):
        load_clone(path_a)


def test_clone_save_writes_both_files_or_neither(tmp_path, monkeypatch):
    a, b = _clone(0), _clone(1, n=9)
    path = tmp_path / "c.ecsv"
    spath = tmp_path / "c.spectrum.ecsv"

    # overwrite=False checks both targets before writing anything
    spath.write_text("someone else's file")
    with pytest.raises(FileExistsError, match=r"c\.spectrum\.ecsv exists.*nothing was written"):
        a.save(path)
    assert not path.exists() and spath.read_text() == "someone else's file"
    spath.unlink()

    a.save(path)
    before = (path.read_bytes(), spath.read_bytes())
    calls = []

    def fail_on_second(table):
        def write(target, *args, **kwargs):
            calls.append(target)
            if len(calls) == 2:  # the disk fills while the second file is written
                with open(target, "w") as handle:
                    handle.write("# %ECSV 1.0\n# ---\n# half a")
                raise OSError(28, "No space left on device")
            return registry.write(table, target, *args, **kwargs)

        return write

    monkeypatch.setattr(QTable, "write", property(fail_on_second))
    with pytest.raises(OSError, match=r"could not write .*c\.ecsv.*No space left"):
        b.save(path, overwrite=True)
    monkeypatch.undo()
    assert (path.read_bytes(), spath.read_bytes()) == before  # the old pair, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ecsv", "c.spectrum.ecsv"]
    assert _same_pair(load_clone(path), a)


def test_concurrent_saves_never_load_as_a_mixed_pair(tmp_path):
    clones = [_clone(0), _clone(1, n=9)]
    path = tmp_path / "shared.ecsv"
    clones[0].save(path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(k):
        try:
            for _ in range(12):
                clones[k].save(path, overwrite=True)
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    outcomes = {"a": 0, "b": 0, "refused": 0}

    def reader():
        while not stop.is_set():
            try:
                loaded = load_clone(path)
            except ValueError as err:
                assert "do not belong together" in str(err) or "checksum" in str(err)
                outcomes["refused"] += 1
                continue
            if _same_pair(loaded, clones[0]):
                outcomes["a"] += 1
            else:
                assert _same_pair(loaded, clones[1]), "one clone's lines with another's spectrum"
                outcomes["b"] += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert not errors, errors  # no writer tripped over the other's temporary file
    assert outcomes["a"] + outcomes["b"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.ecsv", "shared.spectrum.ecsv"]


# ---------------------------------------- 10. clone tables: version, dtype, units, value bounds
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.meta.update(format_version=99), "format version 99; this blase_specutils"),
        (lambda t: t.meta.update(format_version="abc"), "'abc', which is not an integer"),
        (lambda t: t.meta.update(dtype="banana"), "dtype 'banana'"),
        (lambda t: t.meta.update(mode="sideways"), "mode 'sideways'"),
        (lambda t: t["ln_sigma"].__setitem__(0, 30.0), r"'ln_sigma' has 1 value\(s\) outside"),
        (lambda t: t["ln_gamma"].__setitem__(2, -60.0), r"'ln_gamma' has 1 value\(s\) outside"),
        (lambda t: t["ln_amplitude"].__setitem__(1, np.inf), "'ln_amplitude' has non-finite"),
        (lambda t: setattr(t["ln_sigma"], "unit", u.nm), "'ln_sigma' must be unitless"),
        (
            lambda t: t.replace_column("center_ref", t["center_ref"].value * u.s),
            "expected a length",
        ),
    ],
)
def test_clone_tables_with_impossible_content_are_refused(edit, message, tmp_path):
    table = forest_to_table(_forest())
    edit(table)
    with pytest.raises(ValueError, match=message):
        forest_from_table(table)
    # the same table as a file (written by hand, without save's checksums) names the file
    table.write(tmp_path / "edited.ecsv", format="ascii.ecsv")
    with pytest.raises(ValueError, match=rf"edited\.ecsv.*{message}"):
        load_clone(tmp_path / "edited.ecsv")


def test_clone_table_units_convert_exactly_or_not_at_all():
    forest = _forest(dtype=torch.float64)
    table = forest_to_table(forest)
    table["center_ref"] = table["center_ref"].to(u.nm)  # a length unit converts
    again = forest_from_table(table)
    np.testing.assert_allclose(again.center_ref.numpy(), forest.center_ref.numpy(), rtol=1e-15)
    assert torch.equal(again.ln_sigma, forest.ln_sigma)


def test_saved_clone_edited_by_hand_fails_its_checksum(tmp_path):
    path = _clone(0).save(tmp_path / "c.ecsv")
    lines = path.read_text().splitlines(keepends=True)
    names = next(x for x in lines if not x.startswith("#")).split()
    k = names.index("ln_sigma")
    row = next(i for i, x in enumerate(lines) if not x.startswith("#")) + 1
    fields = lines[row].split()
    fields[k] = "-3.5"
    lines[row] = " ".join(fields) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"c\.ecsv does not match the checksum"):
        load_clone(path)


# --------------------------------------------------------------------- 11. checkpoints
def _module():
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.linspace(0.0, 1.0, 8, dtype=torch.float64))
    return module, torch.optim.Adam(module.parameters())


def test_checkpoint_writers_do_not_collide_and_failed_writes_clean_up(tmp_path, monkeypatch):
    module, opt = _module()
    ckpt = tmp_path / "run.pt"
    real_save = torch.save
    nested = []

    def save_while_another_writer_saves(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if not nested:  # a second run checkpoints to the same path before this renames
            nested.append(f)
            train.save_checkpoint(ckpt, module, opt, 7, [1.0])

    monkeypatch.setattr(torch, "save", save_while_another_writer_saves)
    train.save_checkpoint(ckpt, module, opt, 5, [1.0, 0.5])
    assert train.load_checkpoint(ckpt)["epoch"] == 5  # the last rename wins, intact

    def disk_full(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"PK half")
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=r"could not write the checkpoint .*run\.pt"):
        train.save_checkpoint(ckpt, module, opt, 9, [1.0])
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left
    monkeypatch.undo()
    assert train.load_checkpoint(ckpt)["epoch"] == 5


def test_garbage_or_foreign_checkpoints_give_a_clear_error(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"garbage\.pt is not a blase_specutils checkpoint"):
        train.load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt is not a .* lacks module"):
        train.load_checkpoint(foreign)
    # a checkpoint of another model: refused before any training, not torch's message
    module, opt = _module()
    other = tmp_path / "other.pt"
    train.save_checkpoint(other, module, opt, 3, [1.0])
    different = torch.nn.Module()
    different.v = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"other\.pt was written for another model"):
        train.optimize(
            different, lambda: (different.v**2).sum(), epochs=5, resume=other, progress=False
        )


# ------------------------------------------------- 12. exact-Voigt backward: gradcheck
@pytest.mark.parametrize("linear, emission", [(True, False), (False, True)])
def test_exact_voigt_kernel_passes_gradcheck(linear, emission):
    rng = np.random.default_rng(3)
    n = 4
    forest = LineForest(
        np.sort(rng.uniform(8600.1, 8600.9, n)),
        rng.uniform(0.002, 0.02, n),
        rng.uniform(0.01, 0.04, n),
        rng.uniform(0.001, 0.03, n),
        emission=[emission and k == 1 for k in range(n)],
        profile="voigt",
        dtype=torch.float64,
    )
    layout = forest.make_layout(np.arange(8600.0, 8601.0, 0.02))
    shift = forest.shift(None).detach()
    layout.refresh(shift)
    inputs = tuple(
        t.detach().clone().requires_grad_()
        for t in (
            torch.exp(forest.ln_amplitude),
            torch.exp(forest.ln_sigma),
            torch.exp(forest.ln_gamma),
            shift,
        )
    )

    def kernel(a, sigma, gamma, s):
        return sparse._VoigtLogTransmission.apply(
            a, sigma, gamma, s, forest.sign, layout, linear, 1.0 - 1e-6, True
        )

    assert torch.autograd.gradcheck(kernel, inputs, eps=1e-7, atol=1e-6, rtol=1e-5)
    # two backward passes over one retained graph give the same gradients, bit for bit
    out = (kernel(*inputs) * torch.linspace(-1, 1, layout.n_pixels, dtype=torch.float64)).sum()
    first = torch.autograd.grad(out, inputs, retain_graph=True)
    second = torch.autograd.grad(out, inputs)
    for g1, g2 in zip(first, second):
        assert torch.equal(g1, g2)


# ----------------------------------------------------------------------- 13. inputs
def test_unitless_wavelengths_in_micron_or_metre_are_refused():
    wl = np.arange(8600.0, 8620.0, 0.01)
    flux = 1.0 - 0.5 * np.exp(-0.5 * ((wl - 8610.0) / 0.05) ** 2)
    with pytest.raises(ValueError, match=r"read as Å.*look like µm.*wavelength \* u\.um"):
        bs.clone(wl * 1e-4, flux, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"look like m\b.*wavelength \* u\.m"):
        bs.clone(wl * 1e-10, flux, epochs=1, progress=False)
    # legitimate Å inputs, UV to mid-infrared, and the same values with a unit, pass
    for lo, hi in ((1150.0, 1450.0), (3000.0, 9000.0), (15000.0, 60000.0)):
        np.testing.assert_array_equal(
            _validation.as_angstrom(np.linspace(lo, hi, 5)), np.linspace(lo, hi, 5)
        )
    np.testing.assert_allclose(_validation.as_angstrom(wl * 1e-4 * u.um), wl, rtol=1e-15)


def test_an_order_without_uncertainty_keeps_the_others_uncertainties():
    rng = np.random.default_rng(2)
    wl1, wl2 = np.linspace(8600.0, 8610.0, 400), np.linspace(8620.0, 8630.0, 400)
    sigma1 = np.full(400, 0.01)
    with_sigma = Spectrum(
        spectral_axis=wl1 * u.AA,
        flux=(1.0 + rng.normal(0, 0.01, 400)) * u.one,
        uncertainty=StdDevUncertainty(sigma1),
    )
    without = Spectrum(spectral_axis=wl2 * u.AA, flux=(1.0 + rng.normal(0, 0.03, 400)) * u.one)
    with pytest.warns(UserWarning, match=r"spectrum 1 of 2 has no uncertainty.*other spectra keep"):
        _, _, sigmas, _, _ = _validation.unpack_spectra(
            SpectrumList([with_sigma, without]), None, None, None, "fit"
        )
    assert sigmas is not None and len(sigmas) == 2
    np.testing.assert_array_equal(sigmas[0].value, sigma1)  # kept as given
    assert np.all(sigmas[1].value == sigmas[1].value[0])  # one estimate for that order
    assert sigmas[1].value[0] == pytest.approx(0.03, rel=0.2)  # from its own scatter
