"""The blase-specutils command line: demo, clone, fit and its error messages."""

from __future__ import annotations

import re

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits

from blase_specutils import datasets
from blase_specutils.astro.results import read_fit, read_line_table
from blase_specutils.cli import main, read_observation
from blase_specutils.cloning import load_clone

#: WASP 69's radial velocity as this pipeline measures it on the HPF stack (km/s);
#: the method paper reports −9.6 km/s.
WASP69_RV_KMS = -9.5


def _printed(text: str, label: str) -> tuple[float, float | None]:
    """(value, uncertainty) of a line like ``label = -9.436 ± 0.006 km/s``."""
    match = re.search(rf"{re.escape(label)}\s*=\s*(-?[\d.]+)(?:\s*±\s*([\d.]+))?", text)
    assert match, f"{label!r} not printed in:\n{text}"
    return float(match.group(1)), (float(match.group(2)) if match.group(2) else None)


@pytest.fixture(scope="module")
def stellar_clone_path(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("clone") / "star.ecsv"
    code = main(
        [
            "clone",
            "phoenix:Z",
            "--teff",
            "3900",
            "--range",
            "8630",
            "8795",
            "--epochs",
            "5",
            "-q",
            "-o",
            str(path),
        ]
    )
    assert code == 0
    return path


def test_demo_quick_end_to_end(tmp_path, capsys, data_dir):
    code = main(["demo", "--quick", "-q", "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("lines.ecsv", "fit.asdf", "fit.png", "clone.ecsv", "clone.png"):
        assert (tmp_path / name).is_file(), name
    lines = read_line_table(tmp_path / "lines.ecsv")
    assert lines["equivalent_width"].unit == u.AA and lines["center"].unit == u.AA
    assert len(lines) > 300  # a 3900 K template is line-rich over 170 Å
    assert np.isfinite(lines["equivalent_width_uncertainty"]).sum() > 100  # lines inside the data
    for label in ("template only: RV", "transfer learned: RV"):
        rv, rv_sigma = _printed(out, label)
        assert rv == pytest.approx(WASP69_RV_KMS, abs=3.0)
        assert 0 < rv_sigma < 1.0
    assert _printed(out, "transfer learned: chi2_red")[0] > 0
    loaded = read_fit(tmp_path / "fit.asdf")
    assert loaded.rv.value == pytest.approx(_printed(out, "transfer learned: RV")[0], abs=1e-3)
    assert load_clone(tmp_path / "clone.ecsv").n_lines == loaded.template.n_lines


def test_clone_command_makes_the_output_folder_first(tmp_path, capsys):
    path = tmp_path / "new" / "folder" / "star.ecsv"
    args = ["clone", "phoenix:Z", "--range", "8700", "8720", "--epochs", "0", "-q"]
    assert main([*args, "-o", str(path)]) == 0
    assert path.exists()
    capsys.readouterr()


def test_clone_command_writes_a_loadable_clone(stellar_clone_path, capsys):
    result = load_clone(stellar_clone_path)
    assert result.n_lines > 300
    assert result.meta["teff"] == 3900.0 and result.meta["prominence"] == 0.01
    assert result.meta["template"].startswith("phoenix:Z")
    assert result.wavelength[0] >= 8630.0 and result.wavelength[-1] <= 8795.0


def test_fit_command_on_wasp69(stellar_clone_path, tmp_path, capsys, data_dir):
    outdir = tmp_path / "fit"
    code = main(
        [
            "fit",
            str(datasets.wasp69_path()),
            "--stellar",
            str(stellar_clone_path),
            "--epochs",
            "3",
            "--global-epochs",
            "3",
            "--rv-search",
            "20",
            "-q",
            "-o",
            str(outdir),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    rv, rv_sigma = _printed(out, "RV")
    assert rv == pytest.approx(WASP69_RV_KMS, abs=3.0)
    assert rv_sigma is not None and rv_sigma > 0
    assert _printed(out, "R")[0] == pytest.approx(55000, rel=1e-6)
    assert "(fixed)" in out  # R was not fitted
    for name in ("lines.ecsv", "fit.asdf", "fit.png"):
        assert (outdir / name).is_file()
    # The fitted line table doubles as a clone for a later fit.
    assert load_clone(outdir / "lines.ecsv").n_lines == load_clone(stellar_clone_path).n_lines


def test_read_observation_recognises_hpf_and_tables(data_dir):
    hpf = read_observation(datasets.hpf_path(0))
    assert len(hpf) == 28
    assert all(o.uncertainty is not None for o in hpf)
    assert 8000 < hpf[0].wavelength[0] < hpf[-1].wavelength[-1] < 12900
    table = read_observation(datasets.wasp69_path())
    assert len(table) == 1 and table[0].n_pixels == 2048 and table[0].n_good == 2022


def _error(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.strip(), "no message on stderr"
    return captured.err


def test_error_paths(tmp_path, capsys, stellar_clone_path, data_dir):
    missing = tmp_path / "nope.fits"
    assert "no data file" in _error(
        capsys, ["fit", str(missing), "--stellar", str(stellar_clone_path)]
    )
    assert "no clone at" in _error(
        capsys, ["fit", str(datasets.wasp69_path()), "--stellar", str(tmp_path / "none.ecsv")]
    )
    garbage = tmp_path / "garbage.fits"
    garbage.write_text("this is not FITS")
    assert "is not a FITS file" in _error(
        capsys, ["fit", str(garbage), "--stellar", str(stellar_clone_path)]
    )
    image = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros(10)).writeto(image)
    assert "unknown data format" in _error(
        capsys, ["fit", str(image), "--stellar", str(stellar_clone_path)]
    )
    assert "unknown dataset 'phoenix:Q'" in _error(capsys, ["clone", "phoenix:Q"])
    assert "the only dataset prefix" in _error(capsys, ["clone", "kurucz:Z"])
    assert "template file not found" in _error(capsys, ["clone", str(tmp_path / "none.dat")])
    assert "prominence must be in (0, 1)" in _error(
        capsys,
        [
            "clone",
            "phoenix:Z",
            "--range",
            "8700",
            "8710",
            "--prominence",
            "2",
            "-q",
            "-o",
            str(tmp_path / "x.ecsv"),
        ],
    )
    variance = data_dir / "igrins" / "SDCH_20201202_0059.variance.fits"  # not a spectrum
    assert "muler could not read" in _error(
        capsys, ["fit", str(variance), "--stellar", str(stellar_clone_path)]
    )
    assert "invalid choice" in _error(capsys, ["bogus"])
    assert "required" in _error(capsys, ["fit", str(image)])  # --stellar missing
    assert main(["--help"]) == 0
    capsys.readouterr()


def test_fit_with_a_clone_that_misses_the_data(tmp_path, capsys, data_dir):
    far = tmp_path / "far.ecsv"
    assert (
        main(
            ["clone", "phoenix:Z", "--range", "8300", "8340", "--epochs", "0", "-q", "-o", str(far)]
        )
        == 0
    )
    capsys.readouterr()
    message = _error(
        capsys,
        [
            "fit",
            str(datasets.wasp69_path()),
            "--stellar",
            str(far),
            "-q",
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert "no order overlaps" in message and "8300" in message


def test_python_dash_m_runs_the_command(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, "-m", "blase_specutils", "fit", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: blase-specutils fit" in done.stdout
    for option in ("--fit-resolving-power", "--outside"):
        assert option in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "blase_specutils", "fit"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 2 and "--stellar" in bad.stderr


def test_fit_command_passes_resolving_power_and_outside(monkeypatch, tmp_path, capsys, data_dir):
    """--fit-resolving-power and --outside reach fit; R starts at the instrument's nominal
    value unless given; --outside error lets fit name the ranges instead of cropping."""
    import blase_specutils.fitting as fitting
    from blase_specutils.cli import UsageError

    calls = []

    def fake_fit(**kwargs):
        calls.append(kwargs)
        raise UsageError("stopped")

    part = tmp_path / "part.ecsv"  # covers only the red part of the WASP 69 order
    clone_args = ["clone", "phoenix:Z", "--range", "8700", "8795", "--epochs", "0", "-q"]
    assert main([*clone_args, "-o", str(part)]) == 0
    monkeypatch.setattr(fitting, "fit", fake_fit)
    base = ["fit", str(datasets.wasp69_path()), "--stellar", str(part), "-q"]
    assert main([*base, "--fit-resolving-power", "--resolving-power", "40000"]) == 2
    assert main(base) == 2
    assert main([*base, "--broad-lines", "mask"]) == 2
    # --outside error: the command stops before fit, naming the ranges (and the orders inside)
    capsys.readouterr()
    message = _error(capsys, [*base, "--outside", "error", "-o", str(tmp_path / "x")])
    assert "clone covers only" in message and "--outside crop" in message
    given, default, masked = calls
    assert default["broad_lines"] == "keep" and masked["broad_lines"] == "mask"
    assert given["fit_resolving_power"] is True and given["resolving_power"] == 40000.0
    assert default["fit_resolving_power"] is False and default["outside"] == "crop"
    assert default["resolving_power"] == 55000.0  # the HPF table's nominal R (or the default)
    # the cropped data lie inside the clone; uncropped WASP 69 reaches beyond it
    clone = load_clone(part)
    lo, hi = clone.meta["wavelength_min"], clone.meta["wavelength_max"]
    assert all(w.min() >= lo and w.max() <= hi for w in default["wavelength"])
    monkeypatch.undo()


def test_clone_command_refines_unless_told_not_to(tmp_path, data_dir):
    counts = {}
    for refine in ("1", "0"):
        path = tmp_path / f"refine{refine}.ecsv"
        args = ["clone", "phoenix:Z", "--teff", "3900", "--range", "8700", "8720"]
        assert main([*args, "--epochs", "20", "--refine", refine, "-q", "-o", str(path)]) == 0
        counts[refine] = load_clone(path).meta["lines_added"]
    assert counts["0"] == [] and len(counts["1"]) == 1 and counts["1"][0] > 0
    assert main(["clone", "phoenix:Z", "--refine", "-1"]) == 2  # a usage error
