"""A newcomer's first afternoon: import time, where the example data come from, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_python(code: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout's package."""
    environ = dict(os.environ, **env)
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=180,
    )


# ---------------------------------------------------------------------------
# Import time: registering the accessor loads neither torch nor matplotlib
# ---------------------------------------------------------------------------
_LAZY_PROBE = r"""
import builtins, json, sys, time
started = time.perf_counter()
import specutils
specutils_s = time.perf_counter() - started
before = set(sys.modules)
imported_by_us = []
real_import = builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    if importer.startswith("blase_specutils") and level == 0:
        imported_by_us.append(name)
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = spy
started = time.perf_counter()
import blase_specutils
import_s = time.perf_counter() - started
new = sorted(set(sys.modules) - before)
asked_on_import = sorted(set(imported_by_us))
import numpy as np, astropy.units as u
from specutils import Spectrum
spectrum = Spectrum(spectral_axis=np.linspace(1.0, 1.1, 20) * u.um, flux=np.ones(20) * u.one)
arrays = spectrum.blase.to_arrays()
after_accessor = "torch" in sys.modules
tensors = spectrum.blase.to_tensors()
print(json.dumps({
    "specutils_s": specutils_s, "import_s": import_s, "new": new,
    "imported_by_us": asked_on_import, "torch_after_accessor": after_accessor,
    "torch_after_to_tensors": "torch" in sys.modules, "n_pixels": int(arrays.n_pixels),
    "tensor_type": type(tensors["flux"]).__module__,
}))
"""


def test_import_registers_the_accessor_without_torch_or_matplotlib(tmp_path):
    done = _run_python(_LAZY_PROBE, tmp_path)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    heavy = ("torch", "matplotlib", "scipy")
    loaded_heavy = [m for m in probe["new"] if m.split(".")[0] in heavy]
    assert loaded_heavy == [], f"import blase_specutils loaded {loaded_heavy[:5]}"
    asked = [m for m in probe["imported_by_us"] if m.split(".")[0] in ("torch", "matplotlib")]
    assert asked == [], f"blase_specutils imported {asked} on import"
    assert not any(m.startswith("torch") for m in probe["new"])
    # the accessor works without torch; torch loads on the first method that needs it
    assert probe["n_pixels"] == 20 and probe["torch_after_accessor"] is False
    assert probe["torch_after_to_tensors"] is True and probe["tensor_type"] == "torch"
    # issue 16's goal: at most 1 s beyond `import specutils` (measured: under 0.01 s)
    assert probe["import_s"] < 1.0, probe


def test_public_names_still_load_on_first_use(tmp_path):
    code = (
        "import sys, blase_specutils as bs, blase_specutils.astro as astro\n"
        "assert 'torch' not in sys.modules\n"
        "assert bs.CloneResult is astro.CloneResult is astro.clones.CloneResult\n"
        "assert callable(bs.fit) and callable(astro.load_clone) and 'torch' in sys.modules\n"
        "print(sorted(set(['CloneResult', 'load_clone']) - set(dir(astro))))\n"
    )
    done = _run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    missing = _run_python("import blase_specutils.astro as a; a.nope", tmp_path)
    assert missing.returncode == 1 and "has no attribute 'nope'" in missing.stderr


# ---------------------------------------------------------------------------
# Where the example data come from
# ---------------------------------------------------------------------------
@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """Every astropy cache in a temporary folder, downloads refused (a closed port)."""
    import socket

    from astropy.config.paths import set_temp_cache

    from blase_specutils import datasets

    xdg = tmp_path / "xdg-cache"
    (xdg / "blase_specutils").mkdir(parents=True)
    (xdg / "astropy").mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(datasets.URL_ENV_VAR, f"http://127.0.0.1:{port}")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    astropy_cache = tmp_path / "astropy-cache"
    astropy_cache.mkdir()
    with set_temp_cache(astropy_cache):
        yield xdg


def test_a_data_variable_naming_no_folder_is_an_error_naming_it(tmp_path, monkeypatch):
    from blase_specutils import datasets

    missing = tmp_path / "no-such-folder"
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(missing))
    with pytest.raises(datasets.DataFolderError, match="no such folder") as caught:
        datasets.wasp69_path()
    assert str(missing) in str(caught.value) and datasets.DATA_ENV_VAR in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(a_file))
    with pytest.raises(datasets.DataFolderError, match="a file, not a folder"):
        datasets.phoenix_path("Z")
    monkeypatch.setenv(datasets.DATA_ENV_VAR, "")  # empty counts as unset
    assert datasets.mirror_folder() is None


def test_download_failure_advice_depends_on_the_variable(empty_cache, tmp_path, monkeypatch):
    from blase_specutils import datasets

    mirror = tmp_path / "empty-mirror"
    mirror.mkdir()
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(mirror))
    with pytest.raises(datasets.DataUnavailableError) as caught:
        datasets.wasp69_path()
    message = str(caught.value)
    assert f"is set to {mirror}" in message and "has no wasp69/WASP_69_hpf_stack.fits" in message
    assert "set the environment variable" not in message  # it is set: do not tell the user to
    monkeypatch.delenv(datasets.DATA_ENV_VAR)
    with pytest.raises(datasets.DataUnavailableError, match="set the environment variable"):
        datasets.wasp69_path()


def test_demo_with_a_missing_data_folder_says_which(tmp_path, capsys, monkeypatch):
    from blase_specutils import datasets
    from blase_specutils.cli import main

    missing = tmp_path / "typo"
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(missing))
    assert main(["demo", "--quick", "-q", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "no such folder" in err
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_test_data_folder_is_found_as_a_user_finds_it(empty_cache, tmp_path, monkeypatch):
    from blase_specutils import datasets

    from .conftest import example_data_dir

    find = example_data_dir.__wrapped__  # the uncached lookup
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(RuntimeError, match="gone.*no such folder"):
        find()
    partial = tmp_path / "partial"
    (partial / "wasp69").mkdir(parents=True)
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(partial))
    with pytest.raises(RuntimeError, match=r"partial \(BLASE_SPECUTILS_DATA\) lacks hpf/"):
        find()
    monkeypatch.delenv(datasets.DATA_ENV_VAR)  # no mirror, no network: say what to set
    with pytest.raises(RuntimeError, match="not set and the example data could not be down"):
        find()
