"""A newcomer's first afternoon: import time, where the example data come from, the CLI."""

from __future__ import annotations

import json
import os
import re
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
import blase_specutils.astro as astro
same = blase_specutils.CloneResult is astro.CloneResult is astro.clones.CloneResult
same = same and callable(blase_specutils.fit) and callable(astro.load_clone)
same = same and not {"CloneResult", "load_clone"} - set(dir(astro))
print(json.dumps({
    "specutils_s": specutils_s, "import_s": import_s, "new": new,
    "imported_by_us": asked_on_import, "torch_after_accessor": after_accessor,
    "torch_after_to_tensors": "torch" in sys.modules, "n_pixels": int(arrays.n_pixels),
    "tensor_type": type(tensors["flux"]).__module__, "public_names": same,
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
    assert probe["public_names"] is True  # the lazy names still resolve, to one object


def test_a_missing_name_is_an_attribute_error():
    import blase_specutils.astro as astro

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        astro.nope  # noqa: B018


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


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------
def _cli_error(capsys, argv) -> str:
    """Run the command; it must fail with exit status 2 and one line on stderr."""
    from blase_specutils.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    # the error is one line, the last; only notes ("blase-specutils: fitting 3 of 5 ...")
    # may come before it
    assert lines and all(line.startswith("blase-specutils: ") for line in lines[:-1]), lines
    assert lines[-1].startswith("blase-specutils ") and ": error: " in lines[-1], lines
    return lines[-1]


@pytest.fixture(scope="module")
def small_clone(tmp_path_factory, data_dir):
    """An untrained clone of 8690-8740 Å (inside the WASP 69 order), written by the CLI."""
    from blase_specutils.cli import main

    path = tmp_path_factory.mktemp("newcomer") / "star.ecsv"
    argv = ["clone", "phoenix:Z", "--teff", "3900", "--range", "8690", "8740"]
    assert main([*argv, "--epochs", "0", "--refine", "0", "-q", "-o", str(path)]) == 0
    return path


def test_version_and_defaults_in_every_help(capsys):
    from blase_specutils import __version__
    from blase_specutils.cli import SUBCOMMANDS, build_parser, main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"blase-specutils {__version__}"
    parser = build_parser()
    for name in SUBCOMMANDS:
        sub = parser._subparsers._group_actions[0].choices[name]
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                shown = action.default
                if isinstance(shown, tuple):
                    shown = " ".join(shown)
                flag = action.option_strings[-1]
                options = text.split("\noptions:\n", 1)[1]
                entry = re.search(rf"^  (?:-\w [A-Z_]+, )?{flag}\b.*?(?=^  -|\Z)", options,
                                  re.M | re.S)  # fmt: skip
                assert entry, (name, flag)
                block = entry.group(0)
                assert f"(default: {shown})" in " ".join(block.split()), (name, flag)
    assert main(["fit", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--mask FILE",
        "--mask-range LO HI",
        "--trainable",
        "--prior-scale",
        "--prior-center",
        "--checkpoint FILE",
        "--resume FILE",
        "(default: 1000.0)",
    ):
        assert option in help_text, option
    assert main(["clone", "--help"]) == 0
    assert "{pseudo_voigt,voigt}" in capsys.readouterr().out


def test_cli_defaults_are_fits_defaults():
    import inspect

    from blase_specutils.cli import FIT_DEFAULTS
    from blase_specutils.fitting import fit

    parameters = inspect.signature(fit).parameters
    for name, value in FIT_DEFAULTS.items():
        if name == "global_epochs":  # the command's own choice (fit's default is 30)
            continue
        assert parameters[name].default == value, name


def _folder(path):
    path.mkdir()
    return path


def _bytes(content):
    def make(path):
        path.write_bytes(content)
        return path

    return make


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_folder, "is a folder, not a clone"),
        (_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40)), "is a PNG image, not a clone"),
        (_bytes(b"SIMPLE  =                    T" + bytes(50)), "is a FITS file, not a clone"),
        (_bytes(b"center amplitude\n8700 0.1\n"), "without the ECSV header"),
    ],
    ids=["folder", "png", "fits", "plain-text"],
)
def test_a_wrong_stellar_file_is_a_one_line_error(tmp_path, capsys, data_dir, make, expected):
    from blase_specutils import datasets

    wrong = make(tmp_path / "stellar.thing")
    message = _cli_error(capsys, ["fit", str(datasets.wasp69_path()), "--stellar", str(wrong)])
    assert expected in message and "--stellar" in message and str(wrong) in message


def test_a_damaged_clone_is_a_one_line_error(tmp_path, capsys, small_clone, data_dir):
    import shutil

    from blase_specutils import datasets

    text = small_clone.read_text()
    cut = tmp_path / "cut.ecsv"
    cut.write_text(text[: len(text) // 3])  # truncated mid-table
    shutil.copyfile(small_clone.with_suffix(".spectrum.ecsv"), tmp_path / "cut.spectrum.ecsv")
    message = _cli_error(capsys, ["fit", str(datasets.wasp69_path()), "--stellar", str(cut)])
    assert f"could not read the clone {cut}" in message and "damaged or truncated" in message


def test_igrins_spectrum_without_its_variance_file(tmp_path, capsys, small_clone, data_dir):
    import shutil

    spec = tmp_path / "SDCH_20201202_0059.spec.fits"
    shutil.copyfile(data_dir / "igrins" / spec.name, spec)
    message = _cli_error(capsys, ["fit", str(spec), "--stellar", str(small_clone)])
    assert "SDCH_20201202_0059.variance.fits is not beside it" in message


def test_data_folder_or_image_is_a_one_line_error(tmp_path, capsys, small_clone):
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    argv = ["fit", str(tmp_path), "--stellar", str(small_clone)]
    assert "is a folder" in _cli_error(capsys, argv)
    message = _cli_error(capsys, ["fit", str(png), "--stellar", str(small_clone)])
    assert "is not a FITS file (it looks like a PNG image)" in message
    assert "is a PNG image" in _cli_error(capsys, ["clone", str(png)])


def test_a_full_disk_is_a_one_line_error(tmp_path, capsys, monkeypatch, data_dir):
    import errno

    from blase_specutils.astro.clones import CloneResult

    def no_space(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(CloneResult, "save", no_space)
    out = tmp_path / "star.ecsv"
    argv = ["clone", "phoenix:Z", "--range", "8700", "8705", "--epochs", "0", "-q", "-o", str(out)]
    message = _cli_error(capsys, argv)
    expected = f"blase-specutils clone: error: could not write {out}: No space left on device"
    assert message == expected


def test_fit_writes_fail_cleanly_and_options_reach_fit(
    tmp_path, capsys, monkeypatch, small_clone, data_dir
):
    import errno

    import numpy as np

    import blase_specutils.astro.results as results
    import blase_specutils.fitting as fitting
    from blase_specutils import datasets
    from blase_specutils.cli import main

    calls = []
    real_fit = fitting.fit

    def spy(**kwargs):
        calls.append(kwargs)
        return real_fit(**kwargs)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    mask_file = tmp_path / "mask.txt"
    mask_file.write_text("# a bad stretch\n8700.0, 8702.5\n\n8710 8712 # another\n")
    monkeypatch.setattr(fitting, "fit", spy)
    monkeypatch.setattr(results, "write_fit", no_space)
    checkpoint = tmp_path / "ckpt" / "fit.pt"
    argv = ["fit", str(datasets.wasp69_path()), "--stellar", str(small_clone), "-q",
            "--epochs", "2", "--global-epochs", "1", "--rv-search", "15", "--rv", "-9.5",
            "--mask", str(mask_file), "--mask-range", "8725", "8720",
            "--trainable", "amplitude", "sigma", "--prior-scale", "3", "--prior-center", "0.01",
            "--checkpoint", str(checkpoint), "--checkpoint-every", "1",
            "-o", str(tmp_path / "out")]  # fmt: skip
    message = _cli_error(capsys, argv)
    assert message.startswith("blase-specutils fit: error: could not write ")
    assert message.endswith("fit.asdf: No space left on device")
    (given,) = calls
    assert given["trainable"] == ("amplitude", "sigma")
    assert given["prior_scale"] == 3.0 and given["prior_center"] == 0.01
    assert given["checkpoint"] == str(checkpoint) and given["checkpoint_every"] == 1
    assert given["resume"] is None and given["rv"] == -9.5
    assert checkpoint.is_file()  # the line stage wrote its checkpoint
    (wl,), (good,) = given["wavelength"], given["mask"]
    for lo, hi in ((8700.0, 8702.5), (8710.0, 8712.0), (8720.0, 8725.0)):
        inside = (wl >= lo) & (wl <= hi)
        assert inside.any() and not good[inside].any(), (lo, hi)
    assert good[(wl > 8703) & (wl < 8709)].mean() > 0.9  # between the ranges: untouched
    # --trainable alone holds the lines; --resume needs an existing file
    monkeypatch.setattr(fitting, "fit", lambda **kw: calls.append(kw) or 1 / 0)
    base = ["fit", str(datasets.wasp69_path()), "--stellar", str(small_clone), "-q"]
    base += ["-o", str(tmp_path / "never-written")]
    with pytest.raises(ZeroDivisionError):
        main([*base, "--trainable", "--prior-weight", "2"])
    assert calls[-1]["trainable"] == () and calls[-1]["prior_weight"] == 2.0
    assert np.all(calls[-1]["wavelength"][0] >= 8690)
    # a checkpoint that cannot be written (torch says so with a RuntimeError)
    import torch

    def torch_no_space(*args, **kwargs):
        raise RuntimeError("[enforce fail] PytorchStreamWriter failed writing file data/0")

    monkeypatch.setattr(fitting, "fit", real_fit)
    monkeypatch.setattr(torch, "save", torch_no_space)
    argv_checkpoint = [*base, "--epochs", "2", "--global-epochs", "1", "--rv-search", "15"]
    message = _cli_error(capsys, [*argv_checkpoint, "--checkpoint", str(checkpoint)])
    expected = f"blase-specutils fit: error: could not write the checkpoint {checkpoint}"
    assert message.startswith(expected)
    assert "PytorchStreamWriter failed writing" in message
    missing = tmp_path / "none.pt"
    assert "--resume: the checkpoint" in _cli_error(capsys, [*base, "--resume", str(missing)])
    assert not (tmp_path / "never-written").exists()
    assert "invalid choice: 'width'" in " ".join(
        _cli_error(capsys, [*base, "--trainable", "width"]).split()
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8700 8702\n8700\n", "line 2: expected two wavelengths"),
        ("8700 nan\n", "line 1: expected two wavelengths"),
        ("# nothing\n\n", "holds no wavelength range"),
    ],
)
def test_bad_mask_files(tmp_path, capsys, small_clone, text, expected):
    mask = tmp_path / "mask.txt"
    mask.write_text(text)
    argv = ["fit", "data.fits", "--stellar", str(small_clone), "--mask", str(mask)]
    assert expected in _cli_error(capsys, argv)


def test_a_mask_file_read_back():
    from blase_specutils.cli import read_mask_file

    with pytest.raises(FileNotFoundError, match="no mask file at"):
        read_mask_file("/no/such/mask.txt")


def _orders_like_igrins(n=5, n_pixels=600, start=8690.0):
    """Orders labelled like IGRINS (echelle orders counting down), 0.05 Å pixels."""
    import astropy.units as u
    import numpy as np

    from blase_specutils.astro.adapters import OrderArrays

    orders = []
    for k in range(n):
        wl = start + k * 30.0 + 0.05 * np.arange(n_pixels)
        orders.append(
            OrderArrays(wl, np.ones(n_pixels), np.full(n_pixels, 0.01),
                        np.ones(n_pixels, bool), u.one, {"order": 125 - k, "index": k})
        )  # fmt: skip
    return orders


def _prepare_args(**kw):
    from types import SimpleNamespace

    from blase_specutils.cli import MIN_ORDER_PIXELS

    return SimpleNamespace(
        **{"outside": "crop", "min_order_pixels": MIN_ORDER_PIXELS, "mask_ranges": [], **kw}
    )


class _FakeClone:
    def __init__(self, lo, hi):
        self.meta = {"wavelength_min": lo, "wavelength_max": hi}


def test_orders_are_named_by_the_files_numbers_and_slivers_dropped(capsys):
    import io

    from blase_specutils.cli import UsageError, _prepare_orders, _relabel

    orders = _orders_like_igrins()  # 8690-8720, 8720-8750, ..., 8810-8840 Å
    err = io.StringIO()
    # the clone reaches 5 Å into the fourth order: a 100-pixel sliver of it is left
    kept, labels = _prepare_orders(orders, [_FakeClone(8600.0, 8785.0)], _prepare_args(), err)
    assert labels == ["order 125", "order 124", "order 123"]
    message = err.getvalue()
    assert "fitting 3 of 5 order(s)" in message
    assert "order 122 (" in message and "fewer than 200 good pixels" in message  # the sliver
    assert "order 121 outside the clone range" in message
    # fit's "order K" counts the orders it got: the command prints the file's numbers
    assert _relabel("order 2: the median flux is -2.2", labels).startswith("order 123:")
    assert _relabel("order 7: x", labels) == "order 7: x"
    # a bad order among the kept ones is named by its own number, not its position
    orders[2].flux[:] = -2.2
    with pytest.raises(UsageError, match=r"^order 123: the median flux is -2\.2"):
        _prepare_orders(orders, [_FakeClone(8600.0, 8900.0)], _prepare_args(), io.StringIO())
    # --outside error names the orders inside, by number
    orders = _orders_like_igrins()
    with pytest.raises(UsageError, match="orders 125, 124 lie inside it.*--outside crop"):
        _prepare_orders(orders, [_FakeClone(8680.0, 8755.0)], _prepare_args(outside="error"),
                        io.StringIO())  # fmt: skip
    # a mask that leaves an order too few good pixels drops it too
    args = _prepare_args(mask_ranges=[(8720.0, 8748.0)])
    err = io.StringIO()
    kept, labels = _prepare_orders(orders, [_FakeClone(8600.0, 8900.0)], args, err)
    assert "order 124" not in labels and "order 124 (" in err.getvalue()
    with pytest.raises(UsageError, match="holds no spectral order"):
        _prepare_orders([], [_FakeClone(8600.0, 8700.0)], _prepare_args(), io.StringIO())
    with pytest.raises(UsageError, match="no order keeps 200 good pixels.*order 125"):
        _prepare_orders(orders[:1], [_FakeClone(8600.0, 8700.0)], _prepare_args(), io.StringIO())


# ---------------------------------------------------------------------------
# Install weight and the README's promises
# ---------------------------------------------------------------------------
README_COMMANDS = (
    "pip install torch==2.13.0 . && blase-specutils demo",
    'pip install torch==2.13.0 -e ".[test]" && python -m pytest',
)


def test_triton_is_its_own_extra_and_torch_is_not_capped():
    import configparser

    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extras = config["options.extras_require"]

    def names(text):
        return {Requirement(line).name for line in text.splitlines() if line.strip()}

    assert "triton" not in names(extras["test"])  # about 1 GB on a CPU-only machine
    assert "triton" in names(extras["triton-tests"]) and "pytest" in names(extras["triton-tests"])
    requires = {
        Requirement(line).name: Requirement(line)
        for line in config["options"]["install_requires"].splitlines()
        if line.strip()
    }
    torch = requires["torch"].specifier
    assert torch.contains("2.1.0") and torch.contains("2.15.0") and torch.contains("3.0")
    assert not torch.contains("2.0.1")
    raw = (ROOT / "setup.cfg").read_text()
    why = raw[: raw.index("astroquery>=")].rsplit("muler>=", 1)[1]
    assert "muler" in why and "astroquery" in why and "tynt" in why  # the comment says why


def test_ci_runs_the_readme_command_and_the_triton_step_and_readme_starts_with_it():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("  #")[0].strip() for line in first_block[:2]] == list(README_COMMANDS)
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line and not line.lstrip().startswith("#")]
    assert README_COMMANDS[1] in commands
    triton_step = ci[ci.index(README_COMMANDS[1]) :]
    assert 'pip install -e ".[triton-tests]"' in triton_step
    assert "BLASE_SPECUTILS_REQUIRE_TRITON=1" in triton_step
    for module in ("tests/test_triton_kernels.py", "tests/test_triton_voigt.py"):
        assert module in triton_step.split('pip install -e ".[triton-tests]"', 1)[1]
    tox = (ROOT / "tox.ini").read_text()
    assert "[testenv:triton]" in tox and "triton-tests" in tox


def test_triton_tests_skip_with_a_reason_without_triton_unless_required(tmp_path):
    code = (
        "import sys, pytest\n"
        "sys.modules['triton'] = None  # as if triton were not installed\n"
        f"sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', '--rootdir', {str(ROOT)!r},"
        f" {str(ROOT / 'tests' / 'test_triton_voigt.py')!r}]))\n"
    )
    skipped = _run_python(code, tmp_path)
    # 5: pytest's "no tests ran" (the whole module skipped)
    assert skipped.returncode in (0, 5), skipped.stdout + skipped.stderr
    assert "SKIPPED" in skipped.stdout and "[triton-tests]" in skipped.stdout
    required = _run_python(code, tmp_path, BLASE_SPECUTILS_REQUIRE_TRITON="1")
    assert required.returncode != 0 and "ImportError" in required.stdout + required.stderr


def test_docs_pages_exist_and_are_in_the_toctree():
    index = (ROOT / "docs" / "index.rst").read_text()
    for page in ("tutorial", "benchmarks", "design"):
        assert (ROOT / "docs" / f"{page}.rst").is_file() and f"   {page}\n" in index
    readme = (ROOT / "README.md").read_text()
    assert "Choices worth knowing" not in readme  # moved to docs/design.rst
    assert readme.count("\n|---") == 1  # one benchmark table
    assert "Choices worth knowing" in (ROOT / "docs" / "design.rst").read_text()
