"""blase_specutils.batch: many clones and fits on dask, resumable, isolated; the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table

from blase_specutils import batch, datasets
from blase_specutils.astro.results import read_fit, read_line_table
from blase_specutils.astro.templates import read_template
from blase_specutils.cli import main
from blase_specutils.cloning import clone, load_clone

from .batch_helpers import DyingTemplate

distributed = pytest.importorskip("distributed")

#: A quick clone: ~100 lines over 15 Å of PHOENIX in well under a second.
CLONE_OPTIONS = {"teff": 3900, "epochs": 30, "refine": 0}
SLICE_ROWS = 1500  # 15 Å of the Z band (0.01 Å steps)
#: WASP 69's RV as this pipeline measures it on the HPF stack (km/s); see test_cli.py.
WASP69_RV_KMS = -9.5


def _slices(folder: Path, n: int, first: int = 30000) -> list[Path]:
    """``n`` consecutive 15 Å pieces of the real PHOENIX Z-band file, as PHOENIX .dat files."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = datasets.phoenix_path("Z").read_text().splitlines(keepends=True)
    paths = []
    for k in range(n):
        path = folder / f"z{k}_PHOENIX.dat"
        start = first + k * SLICE_ROWS
        path.write_text("".join(lines[start : start + SLICE_ROWS]))
        paths.append(path)
    return paths


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def client():
    """One local cluster for the module, as run() makes it: 2 worker processes, 1 thread each."""
    with batch._local_cluster(2, 1) as cluster:
        with distributed.Client(cluster, set_as_default=False) as c:
            yield c


@pytest.fixture(scope="module")
def slices(tmp_path_factory, data_dir):
    return _slices(tmp_path_factory.mktemp("inputs"), 3)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, slices, client):
    """Three PHOENIX pieces and a corrupted file, cloned once."""
    folder = slices[0].parent
    corrupted = folder / "broken_PHOENIX.dat"
    corrupted.write_text("this is not a spectrum\n1.0 2.0\n")
    out = tmp_path_factory.mktemp("run") / "clones"
    job = batch.Job("clone", options=CLONE_OPTIONS)
    summary = batch.run(str(folder / "*.dat"), job, out, client=client, progress=False)
    return summary, out, job, corrupted


def test_end_to_end_with_a_corrupted_file(first_run, slices):
    summary, out, job, corrupted = first_run
    assert list(summary["name"]) == ["broken_PHOENIX", "z0_PHOENIX", "z1_PHOENIX", "z2_PHOENIX"]
    assert list(summary["status"]) == ["failed", "done", "done", "done"]
    broken = summary[0]
    assert "ValueError" in broken["error"] and str(corrupted) in broken["error"]
    assert not (out / "broken_PHOENIX").exists()  # no outputs for a failure ...
    log = (out / "logs" / "broken_PHOENIX.log").read_text()
    assert "Traceback" in log and "failed" in log  # ... but a log that says why
    done = summary[summary["status"] == "done"]
    assert set(done["worker"]) <= {w for w in summary["worker"] if w.startswith("tcp://")}
    assert np.all(done["wall_time"] > 0) and summary["wall_time"].unit == u.s
    assert summary["rv"].unit == u.km / u.s and np.all(np.isnan(summary["rv"]))
    # every clone as good as calling clone() directly on the same piece (same settings)
    for row, path in zip(done, slices):
        direct = clone(read_template(path), **CLONE_OPTIONS, progress=False)
        written = load_clone(out / row["name"] / "clone.ecsv")
        assert row["n_lines"] == direct.n_lines == written.n_lines > 50
        assert row["rms"] == pytest.approx(direct.rms, rel=0.05)
        assert row["rms"] < 0.02
        lines = read_line_table(out / row["name"] / "lines.ecsv")
        assert len(lines) == row["n_lines"] and lines["equivalent_width"].unit == u.AA
        assert row["converged"] in ("yes", "no") and row["flags"]
    # the summary on disk is the table returned; the job beside it is the job run
    on_disk = Table.read(out / batch.SUMMARY_FILE, format="ascii.ecsv")
    assert list(on_disk["status"]) == list(summary["status"])
    assert np.allclose(on_disk["rms"][1:], summary["rms"][1:])
    assert on_disk.meta["n_failed"] == 1 and on_disk.meta["n_done"] == 3
    assert batch.Job.load(out / batch.JOB_FILE) == job


def test_rerun_skips_what_is_done_and_a_changed_job_or_input_reruns(
    first_run, slices, client, tmp_path
):
    _, first_out, job, corrupted = first_run
    out = tmp_path / "clones"
    shutil.copytree(first_out, out)
    before = _digests(out)
    folder = slices[0].parent
    again = batch.run(str(folder / "*.dat"), job, out, client=client, progress=False)
    assert list(again["status"]) == ["failed", "reused", "reused", "reused"]
    after = _digests(out)
    kept = [k for k in before if not k.startswith(("logs/", "summary"))]
    assert all(before[k] == after[k] for k in kept)  # outputs untouched, not rewritten

    # an input that changed reruns, alone
    inputs = [folder / "z0_PHOENIX.dat", folder / "z1_PHOENIX.dat"]
    changed = tmp_path / "z1_PHOENIX.dat"
    changed.write_text(inputs[1].read_text().replace("e+05", "e+04", 1))
    third = batch.run([inputs[0], changed], job, out, client=client, progress=False)
    assert list(third["status"]) == ["reused", "done"]

    # a changed job reruns everything
    new_job = batch.Job("clone", options={**CLONE_OPTIONS, "epochs": 31})
    assert new_job.fingerprint() != job.fingerprint()
    fourth = batch.run(inputs, new_job, out, client=client, progress=False)
    assert list(fourth["status"]) == ["done", "done"]
    record = json.loads((out / "z0_PHOENIX" / batch.RECORD_FILE).read_text())
    assert record["job_hash"] == new_job.fingerprint()
    assert batch.Job.load(out / batch.JOB_FILE) == new_job
    assert not list(out.glob(".*tmp-*")) and not list(out.glob(".*old-*"))


_KILLED_RUN = textwrap.dedent(
    """
    import sys
    from blase_specutils import batch

    if __name__ == "__main__":
        job = batch.Job("clone", options=dict(teff=3900, epochs=30, refine=0))
        batch.run(sys.argv[1], job, sys.argv[2], n_workers=1, progress=False)
    """
)


def test_a_killed_run_loses_nothing_and_the_rerun_finishes_the_rest(tmp_path, client, data_dir):
    paths = _slices(tmp_path / "in", 6, first=40000)
    out = tmp_path / "out"
    script = tmp_path / "killed_run.py"
    script.write_text(_KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "in" / "*.dat"), str(out)],
            env=env,
            start_new_session=True,  # its own process group: the workers die with it
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        deadline = time.monotonic() + 60
        try:
            while len(list(out.glob(f"*/{batch.RECORD_FILE}"))) < 2:
                assert process.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the batch did not get going in 60 s"
                time.sleep(0.02)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    finished = sorted(p.parent.name for p in out.glob(f"*/{batch.RECORD_FILE}"))
    assert 2 <= len(finished) < len(paths)  # killed part-way
    before = {name: _digests(out / name) for name in finished}

    job = batch.Job("clone", options=CLONE_OPTIONS)
    summary = batch.run(str(tmp_path / "in" / "*.dat"), job, out, client=client, progress=False)
    status = dict(zip(summary["name"], summary["status"]))
    assert all(status[name] == "reused" for name in finished)
    assert all(status[p.name[:-4]] == "done" for p in paths if p.name[:-4] not in finished)
    assert {name: _digests(out / name) for name in finished} == before  # identical outputs
    assert all((out / p.name[:-4] / "clone.ecsv").is_file() for p in paths)
    assert not list(out.glob(".*tmp-*"))


def test_a_worker_killed_mid_item_is_retried_once(tmp_path, slices, client):
    def dying(deaths, name):
        template = read_template(slices[0])
        meta = {**template.meta, "name": name, "counter": str(tmp_path / name), "deaths": deaths}
        return DyingTemplate(template.wavelength, template.flux, kind="stellar", meta=meta)

    inputs = [dying(1, "dies_once"), dying(5, "dies_always"), slices[1]]
    job = batch.Job("clone", options=CLONE_OPTIONS)
    summary = batch.run(inputs, job, tmp_path / "out", client=client, progress=False)
    assert list(summary["name"]) == ["dies_once", "dies_always", "z1_PHOENIX"]
    assert list(summary["status"]) == ["done", "failed", "done"]
    assert (tmp_path / "dies_once").read_text() == "1"  # killed once, then done elsewhere
    assert (tmp_path / "dies_always").read_text() == "2"  # tried twice, then given up
    assert "KilledWorker" in summary["error"][1] and "died" in summary["error"][1]
    assert summary["input"][0] == "<DyingTemplate #0: dies_once>"
    assert load_clone(tmp_path / "out" / "dies_once" / "clone.ecsv").n_lines > 50


class _CountingClient:
    """A client that counts what it scatters and what each submit carries."""

    def __init__(self, inner):
        self.inner, self.scattered, self.submitted = inner, [], []

    def scatter(self, data, **kwargs):
        self.scattered.append(data)
        return self.inner.scatter(data, **kwargs)

    def submit(self, *args, **kwargs):
        self.submitted.append(args)
        return self.inner.submit(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_fits_that_share_a_clone_scatter_it_once(tmp_path, client, data_dir):
    template = read_template(datasets.phoenix_path("Z"), wavelength_range=(8695.0, 8735.0))
    star = clone(template, teff=3900, epochs=5, progress=False)
    star_path = star.save(tmp_path / "star.ecsv")
    for name in ("night1.fits", "night2.fits"):
        shutil.copy(datasets.wasp69_path(), tmp_path / name)
    job = batch.Job(
        "fit", stellar=star_path, options={"epochs": 3, "global_epochs": 3, "rv_search": 20.0}
    )
    counting = _CountingClient(client)
    summary = batch.run(
        str(tmp_path / "night*.fits"), job, tmp_path / "fits", client=counting, progress=False
    )
    assert list(summary["status"]) == ["done", "done"], list(summary["error"])
    assert len(counting.scattered) == 1 and len(counting.submitted) == 2
    for args in counting.submitted:  # futures of the scattered clones, not the clones
        assert all(isinstance(f, distributed.Future) for f in args[4])
    assert np.all(np.abs(summary["rv"] - WASP69_RV_KMS) < 3.0)
    assert np.all((summary["rv_err"] > 0) & (summary["rv_err"] < 1.0))
    assert summary["rv"][0] == summary["rv"][1]  # the same data, the same answer
    assert np.all(np.isfinite(summary["vsini"])) and np.all(summary["chi2_red"] > 0)
    loaded = read_fit(tmp_path / "fits" / "night1" / "fit.asdf")
    assert loaded.rv.value == pytest.approx(summary["rv"][0], abs=1e-6)
    assert len(read_line_table(tmp_path / "fits" / "night1" / "lines.ecsv")) == star.n_lines


def test_velocities_come_out_in_km_s_from_floats_or_quantities():
    assert batch._kms(1.5) == 1.5
    assert batch._kms(1500 * u.m / u.s) == pytest.approx(1.5)
    assert np.isnan(batch._kms(None))


def test_the_command_line_on_the_same_inputs(first_run, client, tmp_path, capsys):
    _, _, _, corrupted = first_run
    folder = corrupted.parent
    out = tmp_path / "cli"
    args = ["batch", "clone", str(folder / "z*.dat"), "--out", str(out), "-q"]
    args += ["--scheduler", client.scheduler.address, "--teff", "3900", "--epochs", "30"]
    args += ["--set", "refine=0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3 input(s): 3 done, 0 reused" in printed
    assert batch.Job.load(out / batch.JOB_FILE).options == CLONE_OPTIONS
    assert main(args) == 0
    assert "0 done, 3 reused" in capsys.readouterr().out
    # a failing input: status 1, the failure named on stderr
    assert main([*args[:2], str(corrupted), *args[3:]]) == 1
    assert "failed:" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Bad input: clear errors before any work
# ---------------------------------------------------------------------------
def test_bad_inputs_fail_before_any_work(tmp_path, slices):
    job = batch.Job("clone", options=CLONE_OPTIONS)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no inputs"):
        batch.run([], job, out)
    with pytest.raises(FileNotFoundError, match=r"'.*nothing\*\.dat' matches no file"):
        batch.run(str(tmp_path / "nothing*.dat"), job, out)
    with pytest.raises(FileNotFoundError, match="no input file at"):
        batch.run([tmp_path / "missing.dat"], job, out)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        batch.run([tmp_path], job, out)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(NotADirectoryError, match="output folder .* is a file"):
        batch.run(slices, job, a_file)
    with pytest.raises(ValueError, match="n_workers must be a positive integer"):
        batch.run(slices, job, out, n_workers=0)
    with pytest.raises(TypeError, match="unsupported input int"):
        batch.run([3], job, out)
    assert not out.exists()  # nothing was started or written


def test_bad_jobs_are_named(tmp_path, slices):
    with pytest.raises(ValueError, match=r"unknown task 'cloen'.*\('clone', 'fit'\)"):
        batch.Job("cloen")
    with pytest.raises(ValueError, match=r"unknown job key\(s\) \['optionz'\]"):
        batch.Job.from_dict({"task": "clone", "optionz": {}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epoch'\].*'epochs'"):
        batch.Job("clone", options={"epoch": 3})
    with pytest.raises(ValueError, match="set by the batch itself"):
        batch.Job("clone", options={"progress": True})
    with pytest.raises(ValueError, match="must be plain data"):
        batch.Job("clone", options={"teff": object()})
    with pytest.raises(ValueError, match="needs a stellar clone"):
        batch.Job("fit")
    with pytest.raises(ValueError, match="unknown read setting"):
        batch.Job("clone", read={"wavelength_rang": [1, 2]})
    with pytest.raises(ValueError, match="unknown task or job file 'fitt'"):
        batch.run(slices, "fitt", tmp_path / "out")
    missing = batch.Job("fit", stellar=tmp_path / "nope.ecsv")
    with pytest.raises(FileNotFoundError, match="stellar clone: no clone at"):
        batch.run([datasets.wasp69_path()], missing, tmp_path / "out")
    # plain data: a round trip through JSON and YAML gives the same job
    job = batch.Job(
        "clone", options={"teff": 3900.0, "epochs": 5}, read={"wavelength_range": (1, 2)}
    )
    assert batch.Job.load(job.save(tmp_path / "job.json")) == job
    (tmp_path / "job.yaml").write_text(
        "task: clone\noptions: {teff: 3900.0, epochs: 5}\nread: {wavelength_range: [1, 2]}\n"
    )
    assert batch.Job.load(tmp_path / "job.yaml") == job
    assert not (tmp_path / "out").exists()


def test_mixing_clone_and_fit_inputs_is_refused(tmp_path, slices, data_dir):
    hpf = datasets.hpf_path(0)
    with pytest.raises(ValueError, match="mixing clone and fit inputs: this is a clone job"):
        batch.run([slices[0], hpf], batch.Job("clone"), tmp_path / "out")
    star = tmp_path / "star.ecsv"
    clone(read_template(slices[0]), epochs=0, progress=False).save(star)
    fit_job = batch.Job("fit", stellar=star)
    with pytest.raises(ValueError, match="mixing clone and fit inputs: this is a fit job"):
        batch.run([hpf, slices[0]], fit_job, tmp_path / "out")
    with pytest.raises(ValueError, match="are clones, not spectra.*--stellar"):
        batch.run([star], batch.Job("clone"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_named_within_the_timeout(
    tmp_path, slices, monkeypatch, capsys
):
    monkeypatch.setattr(batch, "CONNECT_TIMEOUT_S", 1.0)
    address = "tcp://127.0.0.1:9"
    started = time.perf_counter()
    with pytest.raises(
        ConnectionError,
        match=r"could not reach a dask scheduler at 'tcp://127\.0\.0\.1:9' within 1 s",
    ):
        batch.run(slices, batch.Job("clone"), tmp_path / "out", client=address)
    assert time.perf_counter() - started < 8
    assert not (tmp_path / "out").exists()
    code = main(
        ["batch", "clone", str(slices[0]), "--out", str(tmp_path / "o"), "--scheduler", address]
    )
    assert code == 2
    assert "tcp://127.0.0.1:9" in capsys.readouterr().err


def test_command_line_errors(tmp_path, capsys, slices):
    code = main(["batch", "clone", str(tmp_path / "none*.dat"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "matches no file" in capsys.readouterr().err
    code = main(
        ["batch", "clone", str(slices[0]), "--out", str(tmp_path / "o"), "--set", "epoch=3"]
    )
    assert code == 2
    assert "unknown option(s) ['epoch']" in capsys.readouterr().err
    code = main(["batch", "fit", str(slices[0]), "--out", str(tmp_path / "o")])
    assert code == 2  # argparse: --stellar is required
    assert "--stellar" in capsys.readouterr().err
