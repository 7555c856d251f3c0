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
