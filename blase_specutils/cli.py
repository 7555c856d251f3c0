"""The ``blase-specutils`` command: clone a template, fit a spectrum, run the demo.

::

    blase-specutils clone phoenix:Z --teff 3900 --range 8620 8800 -o star.ecsv
    blase-specutils fit WASP_69_hpf_stack.fits --stellar star.ecsv -o wasp69_fit
    blase-specutils demo            # WASP 69 (HPF) against PHOENIX 3900 K

Errors the user can fix (missing files, unknown formats, bad values) end with a
one-line message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np

__all__ = ["main", "read_observation", "DEMO_TEFF", "DEMO_PROMINENCE", "DEMO_MARGIN_ANGSTROM"]

PROG = "blase-specutils"
SPEED_OF_LIGHT_KMS = 299792.458
#: The demo's template: the PHOENIX Z-band sample (3900 K, log g 4.5, [Fe/H] 0).
DEMO_TEFF = 3900.0
DEMO_PROMINENCE = 0.01
#: Template range cloned beyond each end of the data, Å.
DEMO_MARGIN_ANGSTROM = 30.0
#: Velocity margin kept between the data and the ends of a clone, km/s.
_COVERAGE_MARGIN_KMS = 30.0
_MIN_ORDER_PIXELS = 50


class UsageError(Exception):
    """A problem the user can fix: reported on stderr with exit status 2."""


@dataclass(frozen=True)
class _DemoSettings:
    clone_epochs: int
    rv_search: float
    global_epochs: int
    line_epochs: int
    refine_rv_search: float


_DEMO_FULL = _DemoSettings(
    clone_epochs=300, rv_search=60.0, global_epochs=150, line_epochs=300, refine_rv_search=3.0
)
_DEMO_QUICK = _DemoSettings(
    clone_epochs=15, rv_search=20.0, global_epochs=6, line_epochs=10, refine_rv_search=2.0
)


# ---------------------------------------------------------------------------
# Reading inputs
# ---------------------------------------------------------------------------
def _template_source(spec: str) -> tuple[str | Path, str]:
    """A dataset name ``phoenix:BAND`` → its path; anything else is passed to read_template."""
    if spec.lower().startswith("phoenix:"):
        from . import datasets

        band = spec.split(":", 1)[1].strip().upper()
        try:
            path = datasets.phoenix_path(band)
        except ValueError as err:
            raise UsageError(f"unknown dataset {spec!r}: {err}") from err
        return (
            path,
            f"phoenix:{band} (PHOENIX-ACES 3900 K, log g 4.5, [Fe/H] 0; Husser et al. 2013)",
        )
    if ":" in spec and not Path(spec).exists() and not re.match(r"^[A-Za-z]:[\\/]", spec):
        raise UsageError(
            f"unknown dataset {spec!r}: the only dataset prefix is 'phoenix:' (Z, Y or H)"
        )
    return spec, spec


def read_observation(path) -> list:
    """Read an observed spectrum for fitting, as a list of :class:`OrderArrays`.

    Recognised: HPF Goldilocks files (muler ``HPFSpectrumList``; the name must keep
    ``Goldilocks``), IGRINS ``.spec.fits`` files (muler ``IGRINSSpectrumList``, with
    the ``.variance.fits`` beside them) and FITS binary tables with wavelength, flux
    and (optionally) uncertainty columns.

    Parameters
    ----------
    path : path-like
        The FITS file.

    Returns
    -------
    list of blase_specutils.astro.adapters.OrderArrays
        One entry per order; vacuum wavelengths in Å.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not FITS, or a FITS layout none of the readers knows.
    """
    from astropy.io import fits

    from .astro.adapters import read_table_spectrum, spectra_to_arrays

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    try:
        with fits.open(path, memmap=False) as hdul:
            instrument = str(hdul[0].header.get("INSTRUME", "")).strip().upper()
            has_table = len(hdul) > 1 and isinstance(hdul[1], (fits.BinTableHDU, fits.TableHDU))
    except OSError as err:
        raise ValueError(
            f"{path} is not a FITS file ({err}); `fit` reads HPF Goldilocks files, "
            "IGRINS .spec.fits "
            "files and FITS binary tables with wavelength/flux/uncertainty columns"
        ) from err
    name = path.name
    with warnings.catch_warnings():
        # muler's spectra subclass the deprecated Spectrum1D and warn on every construction.
        warnings.filterwarnings("ignore", message=".*Spectrum1D.*deprecated", category=Warning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="muler")
        if "goldilocks" in name.lower() or (instrument == "HPF" and not has_table):
            if "Goldilocks" not in name:
                raise ValueError(
                    f"{path} looks like an HPF spectrum, but muler reads HPF files only when their "
                    "name contains 'Goldilocks'; rename the file"
                )
            from muler.hpf import HPFSpectrumList

            spectra = _read_with_muler(HPFSpectrumList, path, "an HPF Goldilocks spectrum")
        elif instrument == "IGRINS" or re.match(r"SDC[HK]_.*\.spec\.fits$", name):
            from muler.igrins import IGRINSSpectrumList

            spectra = _read_with_muler(
                IGRINSSpectrumList,
                path,
                "an IGRINS .spec.fits spectrum (with its .variance.fits beside it)",
            )
        elif has_table:
            spectra = read_table_spectrum(path)
        else:
            raise ValueError(
                f"unknown data format in {path}: expected an HPF Goldilocks file, "
                "an IGRINS .spec.fits "
                "file, or a FITS binary table (extension 1) with wavelength and flux columns"
            )
        return spectra_to_arrays(spectra)


def _read_with_muler(reader, path: Path, what: str):
    """``reader.read(path)``, with muler's bare assertion errors turned into a clear one."""
    try:
        return reader.read(str(path))
    except (AssertionError, KeyError, IndexError, TypeError, OSError) as error:
        raise ValueError(
            f"muler could not read {path} as {what} ({type(error).__name__}: {error}); "
            "check that it is the pipeline's spectrum file, not a variance or calibration file"
        ) from error


def _clone_range(clone_result) -> tuple[float, float]:
    meta = clone_result.meta
    if "wavelength_min" in meta and "wavelength_max" in meta:
        return float(meta["wavelength_min"]), float(meta["wavelength_max"])
    centers = clone_result.forest.line_properties()["center"]
    return float(centers.min()), float(centers.max())


def _crop_to_clones(orders: list, clones: list, err) -> list:
    """Keep the pixels every clone covers (less a velocity margin); drop near-empty orders."""
    lo = max(_clone_range(c)[0] for c in clones)
    hi = min(_clone_range(c)[1] for c in clones)
    lo_keep = lo * (1 + _COVERAGE_MARGIN_KMS / SPEED_OF_LIGHT_KMS)
    hi_keep = hi * (1 - _COVERAGE_MARGIN_KMS / SPEED_OF_LIGHT_KMS)
    kept = []
    n_dropped = n_cropped = 0
    for order in orders:
        inside = (order.wavelength >= lo_keep) & (order.wavelength <= hi_keep)
        if np.count_nonzero(inside & order.good) < _MIN_ORDER_PIXELS:
            n_dropped += 1
            continue
        if not inside.all():
            n_cropped += 1
        kept.append(order if inside.all() else _subset(order, inside))
    if not kept:
        data_lo = min(float(o.wavelength[0]) for o in orders)
        data_hi = max(float(o.wavelength[-1]) for o in orders)
        raise UsageError(
            f"the clone(s) cover {lo:.2f}–{hi:.2f} Å but the data span "
            f"{data_lo:.2f}–{data_hi:.2f} Å: no "
            "order overlaps; clone the template over the data's range (clone --range LO HI)"
        )
    if n_dropped or n_cropped:
        print(
            f"{PROG}: fitting {len(kept)} of {len(orders)} order(s): {n_dropped} left out "
            f"(outside the clone range {lo:.2f}–{hi:.2f} Å), {n_cropped} trimmed at its edge",
            file=err,
        )
    return kept


def _subset(order, keep: np.ndarray):
    from .astro.adapters import OrderArrays

    return OrderArrays(
        order.wavelength[keep],
        order.flux[keep],
        None if order.uncertainty is None else order.uncertainty[keep],
        order.good[keep],
        order.flux_unit,
        dict(order.meta),
    )


def _fit_inputs(orders: list) -> dict:
    sigmas = [o.uncertainty for o in orders]
    if all(s is None for s in sigmas):
        uncertainty = None
    elif any(s is None for s in sigmas):
        raise UsageError("some orders have uncertainties and some do not; cannot fit them together")
    else:
        uncertainty = sigmas
    return {
        "wavelength": [o.wavelength for o in orders],
        "flux": [o.flux for o in orders],
        "uncertainty": uncertainty,
        "mask": [o.good for o in orders],
    }


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------
def _pm(value: float, sigma: float, digits: int, note: str | None = None) -> str:
    if not math.isfinite(sigma):
        return f"{value:.{digits}f} ({note or 'fixed'})"
    return f"{value:.{digits}f} ± {sigma:.{digits}f}"


def _report(result, out, label: str = "") -> None:
    unc = dict(result.uncertainties)
    notes = dict(result.meta.get("uncertainty_notes", {}))
    prefix = f"{label}: " if label else ""

    def pm(name, value, digits):
        note = notes.get(name)
        return _pm(value, unc.get(name, float("nan")), digits, note and f"no uncertainty: {note}")

    print(f"{prefix}RV       = {pm('rv', result.rv, 3)} km/s", file=out)
    print(f"{prefix}v sin i  = {pm('vsini', result.vsini, 3)} km/s", file=out)
    print(f"{prefix}R        = {pm('resolving_power', result.resolving_power, 0)}", file=out)
    print(f"{prefix}chi2_red = {result.chi2_reduced:.3f}", file=out)


def _write_fit_outputs(result, outdir: Path, out) -> dict:
    from .astro.results import line_table, plot_fit, write_fit, write_line_table

    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"lines": outdir / "lines.ecsv", "fit": outdir / "fit.asdf", "plot": outdir / "fit.png"}
    write_line_table(line_table(result), paths["lines"], overwrite=True)
    write_fit(result, paths["fit"], overwrite=True)
    plot_fit(result).savefig(paths["plot"], dpi=120)
    for path in paths.values():
        print(f"wrote {path}", file=out)
    return paths


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
def _cmd_clone(args, out, err) -> int:
    from .astro.templates import read_template
    from .cloning import clone

    source, description = _template_source(args.template)
    # check the output's folder before a long clone, not after it
    Path(args.output).expanduser().parent.mkdir(parents=True, exist_ok=True)
    wavelength_range = None if args.range is None else tuple(sorted(args.range))
    template = read_template(source, wavelength_range=wavelength_range)
    if len(template) < 3:
        raise UsageError(
            f"the template has {len(template)} samples in the range {wavelength_range}; "
            "widen --range"
        )
    started = time.perf_counter()
    result = clone(
        template,
        teff=args.teff,
        prominence=args.prominence,
        epochs=args.epochs,
        refine=args.refine,
        mode=args.mode,
        flatten=False if args.no_flatten else None,  # None: a telluric template stays flat
        progress=not args.quiet,
    )
    result.meta["template"] = description
    path = result.save(Path(args.output), overwrite=True)
    print(
        f"cloned {result.n_lines} lines over "
        f"{template.wavelength[0]:.2f}–{template.wavelength[-1]:.2f} Å "
        f"in {time.perf_counter() - started:.1f} s; residual RMS {result.rms:.4f}",
        file=out,
    )
    print(f"wrote {path}", file=out)
    return 0


def _cmd_fit(args, out, err) -> int:
    from .cloning import load_clone
    from .fitting import _initial_resolving_power, fit

    stellar = load_clone(args.stellar)
    telluric = None if args.telluric is None else load_clone(args.telluric)
    orders = read_observation(args.data)
    instrument = orders[0].meta.get("instrument") if orders else None
    if args.outside == "crop":
        orders = _crop_to_clones(orders, [c for c in (stellar, telluric) if c is not None], err)
    # the instrument's nominal R unless given (as spectrum.blase.fit does)
    resolving_power, source = _initial_resolving_power(args.resolving_power, instrument)
    result = fit(
        **_fit_inputs(orders),
        stellar=stellar,
        telluric=telluric,
        rv=args.rv,
        vsini=args.vsini,
        resolving_power=resolving_power,
        fit_resolving_power=args.fit_resolving_power,
        outside=args.outside,
        epochs=args.epochs,
        global_epochs=args.global_epochs,
        rv_search=args.rv_search,
        progress=not args.quiet,
    )
    result.meta["resolving_power_source"] = source
    _report(result, out)
    _write_fit_outputs(result, Path(args.output), out)
    return 0


def _cmd_demo(args, out, err) -> int:
    from . import datasets
    from .astro.adapters import read_table_spectrum, spectrum_to_arrays
    from .astro.results import plot_clone
    from .astro.templates import read_template
    from .cloning import clone
    from .fitting import fit

    settings = _DEMO_QUICK if args.quick else _DEMO_FULL
    progress = not args.quiet
    outdir = Path(args.output)
    started = time.perf_counter()

    data_path = datasets.wasp69_path()
    order = spectrum_to_arrays(read_table_spectrum(data_path))
    lo = float(order.wavelength[order.good][0]) - DEMO_MARGIN_ANGSTROM
    hi = float(order.wavelength[order.good][-1]) + DEMO_MARGIN_ANGSTROM
    print(
        f"data: WASP 69 with HPF, {order.n_good} good pixels, "
        f"{order.wavelength[0]:.2f}–{order.wavelength[-1]:.2f} Å ({data_path.name})",
        file=out,
    )
    template_path, description = _template_source("phoenix:Z")
    template = read_template(template_path, wavelength_range=(lo, hi))
    print(f"template: {description}, {len(template)} samples over {lo:.2f}–{hi:.2f} Å", file=out)

    clone_result = clone(
        template.wavelength,
        template.flux,
        teff=DEMO_TEFF,
        prominence=DEMO_PROMINENCE,
        epochs=settings.clone_epochs,
        progress=progress,
    )
    clone_result.meta["template"] = description
    print(
        f"clone: {clone_result.n_lines} lines, residual RMS {clone_result.rms:.4f} "
        f"({time.perf_counter() - started:.0f} s)",
        file=out,
    )

    inputs = _fit_inputs([order])
    template_only = fit(
        **inputs,
        stellar=clone_result,
        rv=0.0,
        rv_search=settings.rv_search,
        trainable=(),
        epochs=0,
        global_epochs=settings.global_epochs,
        progress=progress,
    )
    _report(template_only, out, "template only")
    transfer = fit(
        **inputs,
        stellar=clone_result,
        rv=template_only.rv,
        vsini=template_only.vsini,
        rv_search=settings.refine_rv_search,
        epochs=settings.line_epochs,
        global_epochs=settings.global_epochs,
        progress=progress,
    )
    _report(transfer, out, "transfer learned")
    _write_fit_outputs(transfer, outdir, out)
    clone_path = clone_result.save(outdir / "clone.ecsv", overwrite=True)
    print(f"wrote {clone_path}", file=out)
    clone_plot = outdir / "clone.png"
    plot_clone(clone_result, region=((lo + hi) / 2 - 10, (lo + hi) / 2 + 10)).savefig(
        clone_plot, dpi=120
    )
    print(f"wrote {clone_plot}", file=out)
    print(f"demo finished in {time.perf_counter() - started:.0f} s", file=out)
    return 0


# ---------------------------------------------------------------------------
# batch: many inputs on dask (self-contained: parser and command)
# ---------------------------------------------------------------------------
def _job_value(text: str):
    """``KEY=VALUE`` of ``--set``: the value as JSON when it parses, else a string."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _add_batch_parser(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="clone or fit many inputs at once on dask (a local cluster, or --scheduler)",
        description="Clone every template, or fit every observation, on dask.distributed; "
        "outputs per input, summary.ecsv and job.json go to --out. A rerun with the same job "
        "skips the inputs already done. Exit status 1 when an input failed.",
    )
    tasks = p.add_subparsers(dest="task", required=True, metavar="{clone,fit}")
    for task, help_text in (
        ("clone", "clone every template (PHOENIX .dat/.fits, two-column tables)"),
        ("fit", "fit every observation (HPF, IGRINS, FITS tables) with the same clone(s)"),
    ):
        q = tasks.add_parser(task, help=help_text)
        q.add_argument("inputs", nargs="+", metavar="INPUTS", help="files or globs (quoted)")
        q.add_argument("--out", required=True, metavar="DIR", help="output folder")
        where = q.add_mutually_exclusive_group()
        where.add_argument(
            "--workers",
            type=int,
            default=None,
            metavar="N",
            help="worker processes of the local cluster (default: one per core)",
        )
        where.add_argument(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="address of a running dask scheduler (tcp://HOST:PORT) instead",
        )
        q.add_argument("--job", default=None, help="job file (JSON/YAML) to start from")
        q.add_argument(
            "--set",
            dest="settings",
            action="append",
            type=_job_value,
            default=[],
            metavar="KEY=VALUE",
            help=f"an option of blase_specutils.{task} (VALUE read as JSON), repeatable",
        )
        q.add_argument("--epochs", type=_non_negative_int, default=None, help="training epochs")
        if task == "clone":
            q.add_argument("--teff", type=float, default=None, help="black-body temperature, K")
            q.add_argument(
                "--range",
                nargs=2,
                type=float,
                metavar=("LO", "HI"),
                help="wavelength range to clone, Å",
            )
        else:
            q.add_argument("--stellar", required=True, help="stellar clone (ECSV from `clone`)")
            q.add_argument("--telluric", default=None, help="telluric clone (ECSV)")
        q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        q.set_defaults(handler=_cmd_batch)


def _cmd_batch(args, out, err) -> int:
    from . import batch

    try:
        job = batch.Job.load(args.job).to_dict() if args.job else {"task": args.task}
        if job.get("task") != args.task:
            raise UsageError(
                f"the job file {args.job} is a {job.get('task')!r} job, not {args.task!r}"
            )
        options = dict(job.get("options") or {})
        options.update(dict(args.settings))
        if args.epochs is not None:
            options["epochs"] = args.epochs
        if args.task == "clone":
            if args.teff is not None:
                options["teff"] = args.teff
            if args.range is not None:
                job["read"] = {**(job.get("read") or {}), "wavelength_range": sorted(args.range)}
        else:
            job["stellar"], job["telluric"] = args.stellar, args.telluric
        job["options"] = options
        started = time.perf_counter()
        summary = batch.run(
            args.inputs,
            batch.Job.from_dict(job),
            args.out,
            client=args.scheduler,
            n_workers=args.workers,
            progress=not args.quiet,
        )
    except (ConnectionError, NotADirectoryError, IsADirectoryError, TypeError) as error:
        raise UsageError(str(error)) from error
    counts = {
        s: int(np.count_nonzero(summary["status"] == s)) for s in ("done", "reused", "failed")
    }
    print(
        f"{len(summary)} input(s): {counts['done']} done, {counts['reused']} reused from an "
        f"earlier run, {counts['failed']} failed, in {time.perf_counter() - started:.1f} s; "
        f"summary in {Path(args.out) / batch.SUMMARY_FILE}",
        file=out,
    )
    for row in summary[summary["status"] == "failed"]:
        print(f"failed: {row['input']}: {row['error']}", file=err)
    return 1 if counts["failed"] else 0


# ---------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------
def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``blase-specutils``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Clone synthetic spectra into tunable line forests and transfer-learn them on "
        "observed échelle spectra (the blasé method).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{clone,fit,demo,batch}")

    p = sub.add_parser("clone", help="clone a synthetic template into a line forest")
    p.add_argument(
        "template",
        help="template file (PHOENIX .dat/.fits, two-column text, muler template name) "
        "or a dataset name such as phoenix:Z",
    )
    p.add_argument(
        "--teff", type=float, default=None, help="effective temperature for the black body, K"
    )
    p.add_argument(
        "--prominence", type=float, default=0.01, help="line-finding prominence (continuum units)"
    )
    p.add_argument(
        "--range", nargs=2, type=float, metavar=("LO", "HI"), help="wavelength range to clone, Å"
    )
    p.add_argument("--epochs", type=_non_negative_int, default=300, help="training epochs")
    p.add_argument(
        "--refine",
        type=_non_negative_int,
        default=1,
        help="refinement passes adding lines hidden on the shoulders of stronger ones "
        "(0: the published algorithm)",
    )
    p.add_argument("--mode", choices=("linear", "log"), default="linear", help="forest mode")
    p.add_argument(
        "--no-flatten",
        action="store_true",
        help="do not flatten (transmission already at 1; the default for telluric templates)",
    )
    p.add_argument(
        "-o", "--output", default="clone.ecsv", help="output ECSV line table (default clone.ecsv)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_clone)

    p = sub.add_parser("fit", help="transfer-learn clones against an observed spectrum")
    p.add_argument(
        "data",
        help="FITS file: HPF Goldilocks, IGRINS .spec.fits, or a wavelength/flux binary table",
    )
    p.add_argument("--stellar", required=True, help="stellar clone (ECSV from `clone`)")
    p.add_argument(
        "--telluric", default=None, help="telluric clone (ECSV from `clone --no-flatten`)"
    )
    p.add_argument("--rv", type=float, default=0.0, help="initial radial velocity, km/s")
    p.add_argument("--vsini", type=float, default=None, help="initial v sin i, km/s")
    p.add_argument(
        "--resolving-power",
        type=float,
        default=None,
        help="instrumental resolving power R, the start when fitted (default: the "
        "instrument's nominal R, else 55000)",
    )
    p.add_argument(
        "--fit-resolving-power",
        action="store_true",
        help="fit R too (starting from --resolving-power)",
    )
    p.add_argument(
        "--outside",
        choices=("crop", "error"),
        default="crop",
        help="data beyond the clones' range: crop it (default; orders with too little left "
        "are left out) or stop with an error that names the orders inside",
    )
    p.add_argument(
        "--rv-search", type=float, default=300.0, help="half-width of the RV grid search, km/s"
    )
    p.add_argument("--epochs", type=_non_negative_int, default=300, help="epochs of the line stage")
    p.add_argument(
        "--global-epochs", type=_non_negative_int, default=150, help="epochs of each global stage"
    )
    p.add_argument("-o", "--output", default="blase_fit", help="output folder (default blase_fit)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_fit)

    p = sub.add_parser("demo", help="fit WASP 69 (HPF) with a PHOENIX 3900 K clone")
    p.add_argument("--quick", action="store_true", help="far fewer epochs (seconds; for tests)")
    p.add_argument(
        "-o", "--output", default="blase_demo", help="output folder (default ./blase_demo)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_demo)
    _add_batch_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``blase-specutils``; returns the exit status (0 success, 2 usage/input error).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    from .datasets import DataUnavailableError

    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as stop:  # argparse already printed its message
        return int(stop.code or 0) if not isinstance(stop.code, str) else 2
    out, err = sys.stdout, sys.stderr
    try:
        return args.handler(args, out, err)
    except (
        UsageError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
        u.UnitsError,
        DataUnavailableError,
    ) as error:
        print(f"{PROG} {args.command}: error: {error}", file=err)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
