"""Many spectra at once: clone a model grid or fit many observations on dask.distributed.

::

    from blase_specutils import batch

    job = batch.Job("clone", options={"teff": 3900, "epochs": 300})
    summary = batch.run("grid/*PHOENIX*.dat", job, "clones/")

    job = batch.Job("fit", stellar="clones/star/clone.ecsv", options={"epochs": 100})
    summary = batch.run(["night1/Goldilocks_*.fits"], job, "fits/", client=client)

A :class:`Job` is plain data (JSON/YAML) and is saved beside the outputs as
``job.json``. Each input gets a folder in the output folder, written atomically when
it finishes (a temporary folder renamed into place): the line table ``lines.ecsv``,
the result (``clone.ecsv`` with its ``clone.spectrum.ecsv``, or ``fit.asdf``) and
``record.json``, which holds the hashes of the job and of the input. A rerun with the
same job skips every input whose record matches (status ``reused``); a changed job or
input reruns it. ``summary.ecsv`` (one row per input) is rewritten atomically as items
finish and returned as an astropy Table. Per-item logs go to ``logs/<name>.log``.

Without a ``client`` a :class:`~distributed.LocalCluster` of worker processes is
started, one dask thread and one torch thread per worker (one worker per core). Any
:class:`~distributed.Client` works too (a dask-jobqueue cluster on SLURM or PBS, a
worker per GPU): workers must read the input files; the outputs come back to the
caller, which writes them, so the output folder need not be shared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import importlib.util
import inspect
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table

__all__ = [
    "Job",
    "run",
    "connect",
    "NO_WORKER_TIMEOUT_S",
    "TASKS",
    "CONNECT_TIMEOUT_S",
    "JOB_FILE",
    "SUMMARY_FILE",
    "RECORD_FILE",
    "LOG_FOLDER",
    "SUMMARY_COLUMNS",
]

#: What a job can do.
TASKS = ("clone", "fit")
#: Seconds to wait for a scheduler given by address before giving up.
CONNECT_TIMEOUT_S = 10.0
#: Seconds a local cluster may have no worker before its remaining items fail.
NO_WORKER_TIMEOUT_S = 60.0
JOB_FILE = "job.json"
SUMMARY_FILE = "summary.ecsv"
RECORD_FILE = "record.json"
LOG_FOLDER = "logs"
_RECORD_FORMAT = "blase_specutils.batch.record"

#: Columns of the summary table, in order.
SUMMARY_COLUMNS = (
    "input",
    "name",
    "status",
    "error",
    "wall_time",
    "worker",
    "rms",
    "chi2_red",
    "n_lines",
    "rv",
    "rv_err",
    "vsini",
    "vsini_err",
    "converged",
    "flags",
)
_FLOAT_COLUMNS = ("wall_time", "rms", "chi2_red", "rv", "rv_err", "vsini", "vsini_err")
_UNITS = {
    "wall_time": u.s,
    "rv": u.km / u.s,
    "rv_err": u.km / u.s,
    "vsini": u.km / u.s,
    "vsini_err": u.km / u.s,
}
_DESCRIPTIONS = {
    "input": "input file (absolute path) or a description of the spectrum object",
    "name": "folder of this input's outputs, inside the output folder",
    "status": "done (this run), reused (an earlier run's outputs), failed, or pending",
    "error": "why it failed (empty when it did not)",
    "wall_time": "seconds the item took on its worker (reused: in the run that made it)",
    "worker": "address of the dask worker that ran it",
    "rms": "clone: residual RMS at native resolution (continuum units)",
    "chi2_red": "fit: reduced chi-squared",
    "n_lines": "lines in the clone, or in the fit's line table",
    "rv": "fit: radial velocity",
    "rv_err": "fit: 1-sigma uncertainty of rv",
    "vsini": "fit: projected rotational velocity",
    "vsini_err": "fit: 1-sigma uncertainty of vsini",
    "converged": "yes / no as the result reports it (clone: training converged); empty: unknown",
    "flags": "flags the result reports (clone: the training's stop reason)",
}

# Keywords the batch itself passes, so a job may not set them.
_RESERVED = {
    "clone": ("wavelength", "flux", "progress"),
    "fit": (
        "wavelength",
        "flux",
        "uncertainty",
        "mask",
        "stellar",
        "telluric",
        "progress",
        "checkpoint",
        "resume",
    ),
}
_TEMPLATE_SUFFIXES = (".dat", ".txt", ".csv", ".tsv", ".gz")
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")


# ---------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------
def _task_function(task: str):
    if task == "clone":
        from .cloning import clone

        return clone
    from .fitting import fit

    return fit


def _check_plain(value: Any, what: str) -> None:
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{what} must be plain data (numbers, strings, lists, dicts; JSON), "
            f"got {value!r} ({error})"
        ) from None
    if json.loads(text) != value and not _has_nan(value):
        raise ValueError(f"{what} does not survive a JSON round trip: {value!r}")


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (list, tuple)):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False


def _plain(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python ones (what JSON gives back)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclasses.dataclass
class Job:
    """What a batch does to every input: plain data, saved as ``job.json``.

    Parameters
    ----------
    task : {"clone", "fit"}
        :func:`blase_specutils.clone` every template, or :func:`blase_specutils.fit`
        every observation.
    options : dict
        Keyword arguments of that function (JSON values), e.g. ``{"teff": 3900,
        "epochs": 300}``. ``progress`` and the data are the batch's; ``num_threads``
        defaults to 1 (one torch thread per worker; keep workers × threads ≤ cores).
        For fits ``outside`` defaults to
        ``"crop"`` (as the command line's ``fit``).
    read : dict
        Clone only: keyword arguments of
        :func:`~blase_specutils.astro.templates.read_template`, e.g.
        ``{"wavelength_range": [8600, 8620]}`` (Å).
    stellar, telluric : str, optional
        Fit only: the clone files (ECSV from ``clone``) to fit with; ``stellar`` is
        required. The clones are read once and sent to each worker once. ``telluric``
        may also be ``{molecule: path}``, one clone per molecule (a telluric model by
        molecule, see :func:`blase_specutils.fit`; kept sorted by name).

    Raises
    ------
    ValueError
        An unknown task or option, a value that is not plain data, or a clone given
        to (or missing from) a task.
    """

    task: str
    options: dict = dataclasses.field(default_factory=dict)
    read: dict = dataclasses.field(default_factory=dict)
    stellar: str | None = None
    telluric: str | dict | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: a batch job is one of {TASKS}")
        if not isinstance(self.options, Mapping) or not isinstance(self.read, Mapping):
            raise ValueError("a job's options and read settings must be dicts")
        self.options = _plain(dict(self.options))
        self.read = _plain(dict(self.read))
        _check_plain(self.options, "job options")
        _check_plain(self.read, "job read settings")
        allowed = _allowed_options(self.task)
        reserved = [k for k in self.options if k in _RESERVED[self.task]]
        if reserved:
            raise ValueError(
                f"job option(s) {reserved} are set by the batch itself, not by the job"
            )
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for task {self.task!r}; the options are the "
                f"keywords of blase_specutils.{self.task}: {sorted(allowed)}"
            )
        if self.task == "clone":
            if self.stellar is not None or self.telluric is not None:
                raise ValueError(
                    "a clone job takes no stellar or telluric clone (those are for 'fit')"
                )
            from .astro.templates import read_template

            readable = [
                name
                for name in inspect.signature(read_template).parameters
                if name != "path_or_name"
            ]
            unknown = sorted(set(self.read) - set(readable) - {"columns", "delimiter", "medium"})
            if unknown:
                raise ValueError(
                    f"unknown read setting(s) {unknown}; a clone job reads templates with "
                    f"read_template, whose settings are {sorted(readable)}"
                )
        else:
            if self.read:
                raise ValueError(
                    f"a fit job takes no read settings (got {sorted(self.read)}): "
                    "observations are read as the command line's fit reads them"
                )
            if self.stellar is None:
                raise ValueError("a fit job needs a stellar clone (Job('fit', stellar=PATH))")
        for which in ("stellar", "telluric"):
            value = getattr(self, which)
            if which == "telluric" and isinstance(value, Mapping):
                if not value:
                    raise ValueError("the job's telluric clones by molecule are an empty dict")
                for name in value:
                    if not isinstance(name, str) or not name.strip():
                        raise ValueError(
                            f"the job's telluric molecule names must be non-empty strings, "
                            f"got {name!r}"
                        )
                self.telluric = {
                    name: _clone_path(path, f"telluric[{name!r}]")
                    for name, path in sorted(value.items())
                }
            elif value is not None:
                setattr(self, which, _clone_path(value, which))

    # ----------------------------------------------------------- plain data
    def to_dict(self) -> dict:
        """The job as a JSON-able dict."""
        return {
            "task": self.task,
            "options": dict(self.options),
            "read": dict(self.read),
            "stellar": self.stellar,
            "telluric": dict(self.telluric) if isinstance(self.telluric, dict) else self.telluric,
        }

    def clone_paths(self) -> list[tuple[str, str]]:
        """``(which, path)`` of every clone file the job names (one per molecule of a
        telluric model by molecule, as ``telluric[NAME]``)."""
        out = [] if self.stellar is None else [("stellar", self.stellar)]
        if isinstance(self.telluric, dict):
            out += [(f"telluric[{name!r}]", path) for name, path in self.telluric.items()]
        elif self.telluric is not None:
            out.append(("telluric", self.telluric))
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Job:
        """A job from :meth:`to_dict`'s form; an unknown key is a ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a job is a mapping (dict), got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown job key(s) {unknown}; a job has {sorted(known)}")
        if "task" not in data:
            raise ValueError(f"a job needs a 'task', one of {TASKS}")
        return cls(
            **{k: v for k, v in data.items() if v is not None or k in ("stellar", "telluric")}
        )

    @classmethod
    def load(cls, path) -> Job:
        """Read a job from a JSON or YAML file (``.yaml``/``.yml``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no job file at {path}")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not a JSON job file ({error})") from error
        return cls.from_dict(data)

    def save(self, path) -> Path:
        """Write the job as JSON (atomically)."""
        path = Path(path)
        _write_atomic(path, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())
        return path

    def fingerprint(self) -> str:
        """SHA-256 of the job and of the clone files it names: what a result depends on."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode())
        for _, value in self.clone_paths():
            for path in (Path(value), _clone_spectrum_path(Path(value))):
                if path.is_file():
                    digest.update(_file_hash(path).encode())
        return digest.hexdigest()


def _clone_path(value, which: str) -> str:
    """A job's clone path, checked and made absolute."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(
            f"the job's {which} clone must be a path to its ECSV file, "
            f"got {type(value).__name__}"
        )
    return str(Path(value).expanduser().resolve())


def _allowed_options(task: str) -> list[str]:
    parameters = inspect.signature(_task_function(task)).parameters
    return [
        name
        for name, p in parameters.items()
        if name not in _RESERVED[task] and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _as_job(job) -> Job:
    if isinstance(job, Job):
        return job
    if isinstance(job, Mapping):
        return Job.from_dict(job)
    if isinstance(job, (str, os.PathLike)):
        if str(job) in TASKS:
            return Job(str(job))
        if not Path(job).exists():
            raise ValueError(
                f"unknown task or job file {str(job)!r}: give a Job, a dict, a job file, "
                f"or a task name {TASKS}"
            )
        return Job.load(job)
    raise TypeError(f"job must be a Job, a dict or a job file, not {type(job).__name__}")


def _clone_spectrum_path(path: Path) -> Path:
    return path.with_name(path.stem + ".spectrum.ecsv")


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class _Item:
    index: int
    label: str
    name: str
    source: Any  # a path (str) or a spectrum object
    kind: str  # "template", "observation", "either", "clone"
    input_hash: str = ""


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _companions(path: Path) -> list[Path]:
    """Files a reader reads beside ``path`` (IGRINS: the variance file)."""
    name = path.name
    if name.endswith(".spec.fits"):
        variance = path.with_name(name[: -len(".spec.fits")] + ".variance.fits")
        if variance.is_file():
            return [variance]
    return []


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _expand(inputs) -> list:
    if isinstance(inputs, (str, os.PathLike)) or not isinstance(inputs, Iterable):
        inputs = [inputs]
    expanded = []
    for entry in inputs:
        if isinstance(entry, (str, os.PathLike)):
            text = os.path.expanduser(os.fspath(entry))
            if text.lower().startswith("phoenix:"):
                from . import datasets

                expanded.append(datasets.phoenix_path(text.split(":", 1)[1].strip().upper()))
                continue
            if _has_glob(text):
                matches = sorted(glob.glob(text))
                files = [Path(m) for m in matches if Path(m).is_file()]
                if not files:
                    raise FileNotFoundError(f"the pattern {text!r} matches no file")
                expanded.extend(files)
                continue
            path = Path(text)
            if path.is_dir():
                raise IsADirectoryError(
                    f"input {text!r} is a folder; pass its files or a glob such as "
                    f"'{text.rstrip('/')}/*.dat'"
                )
            if not path.is_file():
                raise FileNotFoundError(f"no input file at {text}")
            expanded.append(path)
        else:
            expanded.append(entry)
    if not expanded:
        raise ValueError("no inputs: give at least one file, glob or spectrum")
    return expanded


def _classify_file(path: Path) -> str:
    """``template``, ``observation``, ``clone`` or ``either`` (a FITS table)."""
    lower = path.name.lower()
    if lower.endswith(".ecsv"):
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(20000)
        if "blase_specutils.clone" in head:
            return "clone"
        return "template"
    if "goldilocks" in lower or re.match(r"sdc[hk]_.*\.spec\.fits$", lower):
        return "observation"
    if lower.endswith(_FITS_SUFFIXES):
        from astropy.io import fits

        try:
            with fits.open(path, memmap=False) as hdul:
                instrument = str(hdul[0].header.get("INSTRUME", "")).strip().upper()
                has_table = len(hdul) > 1 and isinstance(hdul[1], (fits.BinTableHDU, fits.TableHDU))
        except (OSError, IndexError):
            return "either"  # unreadable: the item fails and says why
        if instrument in ("HPF", "IGRINS"):
            return "observation"
        return "either" if has_table else "template"
    return "template"


def _object_kind(obj) -> str:
    from .astro.templates import Template

    if isinstance(obj, Template):
        return "template"
    try:
        from specutils import Spectrum, SpectrumList
    except ImportError:  # pragma: no cover - specutils is a dependency
        Spectrum = SpectrumList = ()  # noqa: N806
    if isinstance(obj, (Spectrum, SpectrumList)):
        return "either"
    raise TypeError(
        f"unsupported input {type(obj).__name__}: give files, globs, Template objects "
        "(read_template) or specutils Spectrum / SpectrumList objects"
    )


def _object_hash(obj) -> str:
    digest = hashlib.sha256(type(obj).__name__.encode())
    parts = obj if isinstance(obj, list) else [obj]
    for part in parts:
        for name in ("wavelength", "flux", "spectral_axis", "uncertainty", "mask"):
            value = getattr(part, name, None)
            if value is None:
                continue
            value = getattr(value, "array", value)  # NDUncertainty
            unit = getattr(value, "unit", None)
            digest.update(f"{name}:{unit}".encode())
            digest.update(
                np.ascontiguousarray(np.asarray(getattr(value, "value", value))).tobytes()
            )
    return digest.hexdigest()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "item"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".spectrum.ecsv", ".spec.fits", ".spectra.fits", ".fits.gz", ".dat.gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _items(inputs) -> list[_Item]:
    items = []
    used: dict[str, int] = {}
    for index, entry in enumerate(_expand(inputs)):
        if isinstance(entry, Path):
            path = entry.resolve()
            label, kind, base = str(path), _classify_file(path), _stem(path)
        else:
            kind = _object_kind(entry)
            meta = getattr(entry, "meta", None) or {}
            given = meta.get("name") if isinstance(meta, Mapping) else None
            base = str(given) if given else f"spectrum{index:04d}"
            label = f"<{type(entry).__name__} #{index}{': ' + str(given) if given else ''}>"
            path = None
        name = _safe_name(base)
        if name in used:
            used[name] += 1
            name = f"{name}-{used[name]}"
        else:
            used[name] = 1
        items.append(_Item(index, label, name, str(path) if path else entry, kind))
    return items


def _check_kinds(items: list[_Item], task: str) -> None:
    clones = [it.label for it in items if it.kind == "clone"]
    if clones:
        raise ValueError(
            f"input(s) {clones[:3]} are clones, not spectra; give a clone to a fit job as "
            "its stellar or telluric clone (--stellar / --telluric)"
        )
    wrong = "observation" if task == "clone" else "template"
    odd = [it.label for it in items if it.kind == wrong]
    if odd:
        other = "fit" if task == "clone" else "clone"
        raise ValueError(
            f"mixing clone and fit inputs: this is a {task} job, but {len(odd)} of the "
            f"{len(items)} inputs are {wrong}s ({other} inputs), e.g. {odd[0]}; run "
            f"them as a separate {other} batch"
        )


def _hash_inputs(items: list[_Item]) -> None:
    for item in items:
        if isinstance(item.source, str):
            path = Path(item.source)
            digest = hashlib.sha256(_file_hash(path).encode())
            for companion in _companions(path):
                digest.update(_file_hash(companion).encode())
            item.input_hash = digest.hexdigest()
        else:
            item.input_hash = _object_hash(item.source)


# ---------------------------------------------------------------------------
# The work on a worker
# ---------------------------------------------------------------------------
def _kms(value) -> float:
    """A velocity as km/s: a float (km/s) or a Quantity; None → NaN."""
    if value is None:
        return float("nan")
    if isinstance(value, u.Quantity):
        return float(value.to_value(u.km / u.s))
    return float(value)


def _number(value) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, u.Quantity):
        return float(value.value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _yes_no(value) -> str:
    if value is None:
        return ""
    return "yes" if bool(value) else "no"


def _flags_text(flags) -> str:
    if flags is None:
        return ""
    if isinstance(flags, str):
        return flags
    if isinstance(flags, Mapping):
        return ",".join(str(k) for k, v in flags.items() if v)
    if isinstance(flags, Iterable):
        return ",".join(str(f) for f in flags)
    return str(flags)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"local-{os.getpid()}"


def _read_template_input(source, read: dict):
    from .astro.templates import read_template

    if not isinstance(source, str):
        return source
    settings = dict(read)
    if settings.get("wavelength_range") is not None:
        settings["wavelength_range"] = tuple(settings["wavelength_range"])
    if source.lower().endswith(_FITS_SUFFIXES) and _classify_file(Path(source)) == "either":
        from .astro.adapters import read_table_spectrum

        return read_table_spectrum(source)
    return read_template(source, **settings)


def _read_observation_input(source):
    if not isinstance(source, str):
        return source
    from .astro.adapters import arrays_to_spectrum
    from .astro.observations import read_observation

    return [
        arrays_to_spectrum(
            order.wavelength,
            order.flux,
            uncertainty=order.uncertainty,
            good=order.good,
            flux_unit=order.flux_unit,
            meta=order.meta,
        )
        for order in read_observation(source)
    ]


def _do_clone(source, job: dict, threads: int, folder: Path) -> dict:
    from .astro.results import write_line_table
    from .cloning import clone

    template = _read_template_input(source, job["read"])
    options = {"num_threads": threads, **job["options"], "progress": False}
    result = clone(template, **options)
    if isinstance(source, str):
        result.meta["template"] = source
    result.save(folder / "clone.ecsv", overwrite=True)
    lines = result.line_table
    write_line_table(lines, folder / "lines.ecsv", overwrite=True)
    stop = result.history.stop_reason
    return {
        "rms": float(result.rms),
        "n_lines": int(result.n_lines),
        "converged": "" if not stop else _yes_no(stop == "converged"),
        "flags": stop,
    }


def _do_fit(source, job: dict, clones: list, threads: int, folder: Path) -> dict:
    from .astro.results import write_line_table
    from .fitting import fit

    stellar, telluric = clones
    observation = _read_observation_input(source)
    options = {"num_threads": threads, "outside": "crop", **job["options"], "progress": False}
    result = fit(observation, stellar=stellar, telluric=telluric, **options)
    result.write(folder / "fit.asdf", overwrite=True)
    lines = result.line_table
    write_line_table(lines, folder / "lines.ecsv", overwrite=True)
    unc = dict(getattr(result, "uncertainties", None) or {})
    return {
        "chi2_red": _number(getattr(result, "chi2_reduced", None)),
        "n_lines": len(lines),
        "rv": _kms(result.rv),
        "rv_err": _kms(unc.get("rv")),
        "vsini": _kms(result.vsini),
        "vsini_err": _kms(unc.get("vsini")),
        "converged": _yes_no(getattr(result, "converged", None)),
        "flags": _flags_text(getattr(result, "flags", None)),
    }


class _ListHandler(logging.Handler):
    def __init__(self, stream):
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record):  # pragma: no cover - only when the package logs
        self.stream.write(self.format(record) + "\n")


def _execute(job: dict, source, label: str, clones, threads: int) -> dict:
    """Run one item (on a worker); never raises: a failure comes back as a record."""
    started = time.perf_counter()
    log = io.StringIO()
    worker = _worker_address()
    log.write(f"input: {label}\nworker: {worker} (pid {os.getpid()}), torch threads {threads}\n")
    log.write(f"started: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    files: dict[str, bytes] = {}
    metrics: dict = {}
    status, error = "done", ""
    handler = _ListHandler(log)
    package_log = logging.getLogger("blase_specutils")
    package_log.addHandler(handler)
    try:
        with tempfile.TemporaryDirectory(prefix="blase-batch-") as tmp:
            folder = Path(tmp)
            with (
                warnings.catch_warnings(record=True) as caught,
                contextlib.redirect_stdout(log),
                contextlib.redirect_stderr(log),
            ):
                warnings.simplefilter("always")
                try:
                    if job["task"] == "clone":
                        metrics = _do_clone(source, job, threads, folder)
                    else:
                        metrics = _do_fit(source, job, list(clones), threads, folder)
                finally:
                    for w in caught:
                        log.write(f"warning: {w.category.__name__}: {w.message}\n")
            for path in sorted(folder.iterdir()):
                files[path.name] = path.read_bytes()
    except Exception as exc:  # noqa: BLE001 - one item's failure must not stop the batch
        status = "failed"
        error = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        files = {}
        log.write("".join(traceback.format_exception(exc)))
    finally:
        package_log.removeHandler(handler)
    wall = time.perf_counter() - started
    log.write(f"{status} in {wall:.2f} s{': ' + error if error else ''}\n")
    return {
        "status": status,
        "error": error,
        "wall_time": wall,
        "worker": worker,
        "metrics": metrics,
        "files": files,
        "log": log.getvalue(),
    }


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _empty_row(item: _Item) -> dict:
    row = {name: float("nan") for name in _FLOAT_COLUMNS}
    row.update(
        input=item.label,
        name=item.name,
        status="pending",
        error="",
        worker="",
        n_lines=-1,
        converged="",
        flags="",
    )
    return row


def _row_from(item: _Item, outcome: dict) -> dict:
    row = _empty_row(item)
    row.update(
        status=outcome["status"],
        error=outcome["error"],
        wall_time=float(outcome["wall_time"]),
        worker=outcome["worker"],
    )
    for key, value in outcome.get("metrics", {}).items():
        if key in row:
            row[key] = value
    return row


def _done_record(out: Path, item: _Item, job_hash: str) -> dict | None:
    folder = out / item.name
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(record, dict)
        or record.get("format") != _RECORD_FORMAT
        or record.get("job_hash") != job_hash
        or record.get("input_hash") != item.input_hash
        or record.get("status") != "done"
        or not all((folder / f).is_file() for f in record.get("files", []))
    ):
        return None
    return record


def _write_item(out: Path, item: _Item, job_hash: str, outcome: dict, row: dict) -> None:
    """The item's folder, atomically: written aside, then renamed into place."""
    final = out / item.name
    tmp = out / f".{item.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in outcome["files"].items():
            (tmp / name).write_bytes(data)
        from ._version import __version__

        record = {
            "format": _RECORD_FORMAT,
            "job_hash": job_hash,
            "input_hash": item.input_hash,
            "input": item.label,
            "status": "done",
            "files": sorted(outcome["files"]),
            "row": _json_row(row),
            "blase_specutils_version": __version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        trash = None
        if final.exists():
            trash = out / f".{item.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
        os.replace(tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _json_row(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _row_from_json(data: dict, item: _Item) -> dict:
    row = _empty_row(item)
    for key in row:
        if key in data and data[key] is not None:
            row[key] = data[key]
    row["input"], row["name"] = item.label, item.name
    return row


def _summary_table(rows: list[dict], job: Job, job_hash: str) -> Table:
    table = Table()
    for name in SUMMARY_COLUMNS:
        values = [row[name] for row in rows]
        if name in _FLOAT_COLUMNS:
            column = np.array(values, dtype=np.float64)
        elif name == "n_lines":
            column = np.array(values, dtype=np.int64)
        else:
            column = np.array([str(v) for v in values], dtype=str)
            if column.size == 0:
                column = column.astype("U1")
        table[name] = column
        table[name].unit = _UNITS.get(name)
        table[name].description = _DESCRIPTIONS[name]
    statuses = [row["status"] for row in rows]
    table.meta.update(
        {
            "job": job.to_dict(),
            "job_hash": job_hash,
            "n_inputs": len(rows),
            "n_done": statuses.count("done"),
            "n_reused": statuses.count("reused"),
            "n_failed": statuses.count("failed"),
            "n_pending": statuses.count("pending"),
        }
    )
    return table


def _write_summary(out: Path, table: Table) -> None:
    buffer = io.StringIO()
    table.write(buffer, format="ascii.ecsv")
    _write_atomic(out / SUMMARY_FILE, buffer.getvalue().encode())


# ---------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------
def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def connect(address: str, timeout: float | None = None):
    """A :class:`distributed.Client` on the scheduler at ``address``.

    Raises
    ------
    ConnectionError
        No scheduler answered there within ``timeout`` seconds (default
        :data:`CONNECT_TIMEOUT_S`).
    """
    from distributed import Client

    timeout = CONNECT_TIMEOUT_S if timeout is None else float(timeout)
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as error:
        raise ConnectionError(
            f"could not reach a dask scheduler at {address!r} within {timeout:g} s "
            f"({type(error).__name__}: {error}); check the address (tcp://HOST:PORT) and "
            "that the scheduler is running"
        ) from None


@contextlib.contextmanager
def _cluster(client, n_workers: int | None, n_items: int, out):
    """(client, torch threads per worker): the given client, or a LocalCluster."""
    if client is not None:
        if isinstance(client, str):
            client = connect(client)
            try:
                yield client, None
            finally:
                client.close()
            return
        if hasattr(client, "submit"):
            yield client, None
            return
        if hasattr(client, "scheduler_address"):  # a cluster object (e.g. dask-jobqueue)
            from distributed import Client

            with Client(client, set_as_default=False) as owned:
                yield owned, None
            return
        raise TypeError(
            f"client must be a distributed.Client, a cluster or a scheduler address, "
            f"not {type(client).__name__}"
        )
    from distributed import Client

    cores = _cores()
    n = int(n_workers) if n_workers is not None else max(1, min(cores, n_items))
    # One torch thread per worker (workers x threads <= cores): on a busy machine torch's
    # OpenMP pool makes 2 threads several times slower than 1 (see the README), and the
    # workers already use the cores. A job's options["num_threads"] overrides it.
    threads = 1
    cluster = _local_cluster(n, threads)
    try:
        with Client(cluster, set_as_default=False) as local:
            if out is not None:
                link = local.dashboard_link if importlib.util.find_spec("bokeh") else None
                print(
                    f"blase batch: local dask cluster, {n} worker(s) x {threads} torch "
                    f"thread(s); dashboard: {link or 'not available (install bokeh)'}",
                    file=out,
                )
            yield local, threads
    finally:
        cluster.close()


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------
def _local_cluster(n_workers: int, threads: int):
    """A LocalCluster of ``n_workers`` processes, one dask thread each.

    A worker that dies fails its item at once (``allowed-failures`` 0): :func:`run` then
    submits the item once more itself, so it gets exactly one retry.
    """
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
        env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
        scheduler_kwargs={"allowed_failures": 0},
    )


def _check_out_dir(out_dir) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"the output folder {out} is a file; give a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot make the output folder {out}: {parent} is a file")
            break
    return out


def _load_clones(job: Job) -> list:
    if job.task != "fit":
        return []
    from .cloning import load_clone

    loaded = {}
    for which, path in job.clone_paths():
        try:
            loaded[which] = load_clone(path)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"the job's {which} clone: {error}") from None
        except ValueError as error:
            raise ValueError(f"the job's {which} clone {path} cannot be read: {error}") from None
    telluric = loaded.get("telluric")
    if isinstance(job.telluric, dict):
        telluric = {name: loaded[f"telluric[{name!r}]"] for name in job.telluric}
    return [loaded.get("stellar"), telluric]


def run(
    inputs,
    job,
    out_dir,
    *,
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
) -> Table:
    """Clone or fit every input on dask; write each result as it finishes.

    Parameters
    ----------
    inputs : path-like, glob, spectrum, or a list of them
        Files (PHOENIX ``.dat``/``.fits`` and two-column tables for
        a clone job; HPF Goldilocks, IGRINS ``.spec.fits`` and FITS binary tables for a
        fit job), glob patterns (``"grid/*.dat"``), ``phoenix:Z``-style dataset names,
        or :class:`~blase_specutils.astro.templates.Template` / specutils ``Spectrum``
        / ``SpectrumList`` objects.
    job : Job, dict, path-like or str
        What to do (see :class:`Job`): a job, its dict form, a JSON/YAML job file, or
        just ``"clone"`` (default options).
    out_dir : path-like
        Output folder (created). ``job.json``, ``summary.ecsv``, a folder per input and
        ``logs/`` go there.
    client : distributed.Client, cluster or str, optional
        Where to run: a client, a cluster object (e.g. ``dask_jobqueue.SLURMCluster``)
        or a scheduler address (``tcp://host:8786``; unreachable within
        :data:`CONNECT_TIMEOUT_S` s: a ConnectionError). Default: a LocalCluster of
        worker processes, closed at the end.
    n_workers : int, optional
        Workers of the local cluster (default: one per core, at most one per item);
        each trains with one torch thread (``options["num_threads"]`` to change it).
    progress : bool
        Show a progress bar over the items (and print the local dashboard's address).

    Returns
    -------
    astropy.table.Table
        The summary, one row per input in input order (also ``summary.ecsv``); see
        :data:`SUMMARY_COLUMNS`. ``status`` is ``done``, ``reused`` or ``failed``.

    Raises
    ------
    ValueError
        No inputs, an unknown task or job option, mixed clone and fit inputs, or a clone
        file that cannot be read. Raised before any work starts.
    FileNotFoundError
        A missing input, a glob that matches nothing, or a missing clone.
    NotADirectoryError
        The output folder is a file.
    ConnectionError
        The scheduler at the given address cannot be reached.
    """
    job = _as_job(job)
    out = _check_out_dir(out_dir)
    if n_workers is not None:
        if client is not None:
            raise ValueError("n_workers sets up the local cluster; it cannot go with a client")
        if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)):
            raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
        if n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, got {n_workers}")
    items = _items(inputs)
    _check_kinds(items, job.task)
    clones = _load_clones(job)
    _hash_inputs(items)
    job_hash = job.fingerprint()

    rows = [_empty_row(item) for item in items]
    pending = []
    for item in items:
        record = _done_record(out, item, job_hash)
        if record is None:
            pending.append(item)
        else:
            rows[item.index] = _row_from_json(record.get("row", {}), item)
            rows[item.index]["status"] = "reused"
    stream = sys.stderr if progress else None
    with contextlib.ExitStack() as stack:
        if pending:  # connect (or start the local cluster) before writing anything
            dask_client, threads = stack.enter_context(
                _cluster(client, n_workers, len(pending), stream)
            )
        out.mkdir(parents=True, exist_ok=True)
        (out / LOG_FOLDER).mkdir(exist_ok=True)
        _remove_leftovers(out)
        job.save(out / JOB_FILE)
        _write_summary(out, _summary_table(rows, job, job_hash))
        if pending:
            _run_pending(dask_client, threads, pending, job, job_hash, clones, out, rows, progress)
    table = _summary_table(rows, job, job_hash)
    _write_summary(out, table)
    return table


def _remove_leftovers(out: Path) -> None:
    """Half-written item folders of a run that was killed."""
    for path in out.glob(".*.tmp-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for path in out.glob(".*.old-*"):
        shutil.rmtree(path, ignore_errors=True)


def _run_pending(dask_client, threads, pending, job, job_hash, clones, out, rows, progress):
    """Keep at most one item per dask thread in flight, so that a worker that dies takes
    only the item it was running with it; that item is submitted once more."""
    local = threads is not None  # a LocalCluster of our own
    from distributed import wait
    from tqdm.auto import tqdm

    job_dict = job.to_dict()
    n_total = len(rows)
    threads = int(job.options.get("num_threads") or threads or 1)
    shared = None
    if job.task == "fit":  # the clones go to the workers once, not once per item
        shared = dask_client.scatter(clones, hash=False)
    queue = list(reversed(pending))
    attempts: dict[int, int] = {}
    running: dict = {}

    def submit(item: _Item) -> None:
        attempts[item.index] = attempts.get(item.index, 0) + 1
        future = dask_client.submit(
            _execute,
            job_dict,
            item.source,
            item.label,
            shared,
            threads,
            key=f"blase_{job.task}-{uuid.uuid4().hex}",
            pure=False,
            retries=1,  # an exception that escapes _execute (it catches the item's own)
        )
        running[future] = item

    bar = tqdm(
        total=n_total,
        initial=n_total - len(pending),
        desc=f"blase batch {job.task}",
        unit="item",
        disable=not progress,
        file=sys.stderr,
    )

    def top_up() -> None:
        capacity = max(1, sum(dask_client.nthreads().values()))
        while queue and len(running) < capacity:
            submit(queue.pop())

    def finish(future) -> None:
        item = running.pop(future)
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: record, go on
            if type(exc).__name__ == "KilledWorker" and attempts[item.index] < 2:
                queue.append(item)  # the worker died running it: once more
                return
            outcome = _lost(item, exc, attempts[item.index])
        finally:
            future.release()
        if attempts[item.index] > 1:
            outcome["log"] = (
                f"attempt {attempts[item.index]} (the worker running attempt 1 died)\n"
                + outcome["log"]
            )
        row = _row_from(item, outcome)
        if outcome["status"] == "done":
            _write_item(out, item, job_hash, outcome, row)
        _write_atomic(out / LOG_FOLDER / f"{item.name}.log", outcome["log"].encode())
        rows[item.index] = row
        _write_summary(out, _summary_table(rows, job, job_hash))
        bar.update(1)
        if outcome["status"] == "failed":
            bar.write(f"{item.name}: failed: {outcome['error']}", file=sys.stderr)

    last_worker_seen = time.monotonic()
    try:
        while queue or running:
            top_up()
            try:
                with dask_client.as_current():
                    finished = wait(list(running), timeout=2.0, return_when="FIRST_COMPLETED")
            except TimeoutError:
                if dask_client.nthreads():
                    last_worker_seen = time.monotonic()
                elif local and time.monotonic() - last_worker_seen > NO_WORKER_TIMEOUT_S:
                    for future in list(running):
                        future.cancel()
                        queue.append(running.pop(future))
                    for item in reversed(queue):
                        lost = RuntimeError(
                            f"the local cluster has had no worker for {NO_WORKER_TIMEOUT_S:g} s"
                        )
                        outcome = _lost(item, lost, attempts.get(item.index, 0))
                        rows[item.index] = _row_from(item, outcome)
                    queue.clear()
                    _write_summary(out, _summary_table(rows, job, job_hash))
                continue
            for future in finished.done:
                finish(future)
    finally:
        bar.close()
        for future in running:
            future.cancel()


def _lost(item: _Item, error: BaseException, attempts: int) -> dict:
    name = type(error).__name__
    if name == "KilledWorker":
        message = (
            f"KilledWorker: the worker running it died, on {attempts} tries "
            "(out of memory? a crash in a library?)"
        )
    else:
        message = f"{name}: {error}".replace("\n", " ")
    return {
        "status": "failed",
        "error": message,
        "wall_time": float("nan"),
        "worker": "",
        "metrics": {},
        "files": {},
        "log": f"input: {item.label}\n{message}\n",
    }
