"""The ``blase-specutils`` command: clone a template, fit a spectrum, run the demo.

::

    blase-specutils clone phoenix:Z --teff 3900 --range 8620 8800 -o star.ecsv
    blase-specutils fit WASP_69_hpf_stack.fits --stellar star.ecsv -o wasp69_fit
    blase-specutils demo            # WASP 69 (HPF) against PHOENIX 3900 K
    blase-specutils --version

Every ``--help`` shows the defaults. Errors the user can fix (missing or wrong files,
unknown formats, bad values, a full disk) end with a one-line message on stderr and
exit status 2, never a traceback. Messages name orders by the file's own order
numbers (the echelle order where the reader gives one, else the position in the file).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np

from ._version import __version__

__all__ = [
    "main",
    "build_parser",
    "read_observation",
    "read_mask_file",
    "UsageError",
    "DEMO_TEFF",
    "DEMO_PROMINENCE",
    "DEMO_MARGIN_ANGSTROM",
    "MIN_ORDER_PIXELS",
]

from .astro.observations import MAGIC as _MAGIC
from .astro.observations import one_line as _one_line
from .astro.observations import read_observation
from .astro.observations import what_file as _what_file

PROG = "blase-specutils"
SPEED_OF_LIGHT_KMS = 299792.458
#: The demo's template: the PHOENIX Z-band sample (3900 K, log g 4.5, [Fe/H] 0).
DEMO_TEFF = 3900.0
DEMO_PROMINENCE = 0.01
#: Template range cloned beyond each end of the data, Å.
DEMO_MARGIN_ANGSTROM = 30.0
#: Velocity margin kept between the data and the ends of a clone, km/s.
_COVERAGE_MARGIN_KMS = 30.0
#: Fewest good pixels an order must keep (after masking and cropping) to be fitted: an
#: edge sliver this short cannot hold its own continuum polynomial (default of
#: ``fit --min-order-pixels``; a tenth of a 2048-pixel HPF or IGRINS order).
MIN_ORDER_PIXELS = 200

#: Defaults of ``fit``'s options that mirror keywords of :func:`blase_specutils.fit`
#: (written out so that ``--help`` does not import torch; a test checks them against
#: fit's signature).
FIT_DEFAULTS = {
    "rv": 0.0,
    "rv_search": 1000.0,
    "epochs": 300,
    "global_epochs": 150,  # more than fit's 30: the command line is used on whole spectra
    "trainable": ("amplitude",),
    "prior_scale": 5.0,
    "prior_weight": 1.0,
    "checkpoint_every": 50,
}
TRAINABLE_CHOICES = ("amplitude", "sigma", "gamma", "center")
PROFILE_CHOICES = ("pseudo_voigt", "voigt")


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
    path = Path(spec).expanduser()
    if path.is_dir():
        raise UsageError(f"the template {spec} is a folder; give a template file")
    if path.is_file():
        with path.open("rb") as stream:
            what = _what_file(stream.read(64))
        if what in _NOT_TEMPLATES:
            raise UsageError(
                f"the template {spec} is {what}; give a synthetic spectrum (PHOENIX .dat or "
                ".fits, a two-column text table) or a dataset name such as phoenix:Z"
            )
    return spec, spec




#: What a template can never be (FITS, text and others go to the template readers).
_NOT_TEMPLATES = frozenset(
    what
    for magic, what in _MAGIC
    if magic not in (b"SIMPLE  =", b"\x1f\x8b")  # .fits.gz
)


def _load_clone(path_text: str, option: str):
    """:func:`~blase_specutils.load_clone` with every way a user's file can be wrong
    turned into a one-line :class:`UsageError`."""
    from .cloning import load_clone

    path = Path(path_text).expanduser()
    made_by = "an ECSV line table written by `blase-specutils clone` (or a fit's lines.ecsv)"
    if not path.exists():
        raise UsageError(f"{option}: no clone at {path}; give {made_by}")
    if path.is_dir():
        raise UsageError(f"{option}: {path} is a folder, not a clone; give {made_by}")
    try:
        with path.open("rb") as stream:
            head = stream.read(64)
    except OSError as error:
        raise UsageError(f"{option}: cannot read {path}: {error.strerror or error}") from error
    if not head.startswith(b"# %ECSV"):
        raise UsageError(f"{option}: {path} is {_what_file(head)}, not a clone; give {made_by}")
    try:
        return load_clone(path)
    except Exception as error:  # a damaged or hand-edited file: any reader error
        raise UsageError(
            f"{option}: could not read the clone {path} ({type(error).__name__}: "
            f"{_one_line(str(error), 300)}); the file (or its .spectrum.ecsv beside it) may be "
            "damaged or truncated: write it again with `blase-specutils clone`"
        ) from error


def read_mask_file(path) -> list[tuple[float, float]]:
    """Wavelength ranges to leave out of a fit, from a text file.

    One range per line, two numbers (vacuum Å, the data's wavelengths), separated by
    white space or a comma; ``#`` starts a comment; blank lines are skipped::

        # telluric O2 band and a bad column
        7590 7700
        8662.0, 8663.5

    Parameters
    ----------
    path : path-like
        The text file.

    Returns
    -------
    list of (float, float)
        The ranges, each sorted (low, high), in Å.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A line that is not two finite numbers, or a file with no range.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"the mask file {path} is a folder")
    if not path.is_file():
        raise FileNotFoundError(f"no mask file at {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"the mask file {path} is not text: expected lines of two wavelengths in Å"
        ) from error
    ranges = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        try:
            values = [float(field) for field in fields]
        except ValueError:
            values = []
        if len(values) != 2 or not all(math.isfinite(v) for v in values):
            raise ValueError(
                f"{path}, line {number}: expected two wavelengths in Å (LO HI), "
                f"got {line.strip()!r}"
            )
        ranges.append((min(values), max(values)))
    if not ranges:
        raise ValueError(f"the mask file {path} holds no wavelength range (LO HI per line)")
    return ranges


# ---------------------------------------------------------------------------
# Orders: file labels, masks, cropping, slivers
# ---------------------------------------------------------------------------
def _order_label(order, position: int) -> str:
    """``order N`` with the file's own number (``meta["order"]``, else its position)."""
    label = order.meta.get("order")
    if label is None:
        label = order.meta.get("index", position)
    return f"order {label}"


def _label_list(labels: Sequence[str]) -> str:
    """``orders 3, 4, 7`` from ``["order 3", "order 4", "order 7"]``."""
    numbers = [label.removeprefix("order ") for label in labels]
    return ("order " if len(numbers) == 1 else "orders ") + ", ".join(numbers)


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


def _with_good(order, good: np.ndarray):
    from .astro.adapters import OrderArrays

    return OrderArrays(
        order.wavelength,
        order.flux,
        order.uncertainty,
        good,
        order.flux_unit,
        dict(order.meta),
    )


def _clone_range(clone_result) -> tuple[float, float]:
    meta = clone_result.meta
    if "wavelength_min" in meta and "wavelength_max" in meta:
        return float(meta["wavelength_min"]), float(meta["wavelength_max"])
    centers = clone_result.forest.line_properties()["center"]
    return float(centers.min()), float(centers.max())


def _apply_mask(orders: list, ranges: Sequence[tuple[float, float]]) -> list:
    """Mark the pixels inside any of ``ranges`` (Å) as bad."""
    if not ranges:
        return orders
    masked = []
    for order in orders:
        bad = np.zeros(order.wavelength.shape, dtype=bool)
        for lo, hi in ranges:
            bad |= (order.wavelength >= lo) & (order.wavelength <= hi)
        masked.append(_with_good(order, order.good & ~bad) if bad.any() else order)
    return masked


def _prepare_orders(orders: list, clones: list, args, err) -> tuple[list, list[str]]:
    """Mask, crop to the clones (``--outside crop``) and drop short orders.

    Returns the orders to fit and their labels (the file's order numbers); every message
    names orders by those labels.
    """
    if not orders:
        raise UsageError("the data file holds no spectral order")
    labels = [_order_label(order, k) for k, order in enumerate(orders)]
    orders = _apply_mask(orders, args.mask_ranges)
    lo = max(_clone_range(c)[0] for c in clones)
    hi = min(_clone_range(c)[1] for c in clones)
    lo_keep = lo * (1 + _COVERAGE_MARGIN_KMS / SPEED_OF_LIGHT_KMS)
    hi_keep = hi * (1 - _COVERAGE_MARGIN_KMS / SPEED_OF_LIGHT_KMS)
    kept, kept_labels = [], []
    outside, slivers, trimmed = [], [], []
    for order, label in zip(orders, labels):
        inside = (order.wavelength >= lo_keep) & (order.wavelength <= hi_keep)
        if args.outside == "crop":
            n_inside = int(np.count_nonzero(inside & order.good))
            if n_inside == 0:
                outside.append(label)
                continue
            if n_inside < args.min_order_pixels:
                slivers.append(f"{label} ({n_inside})")
                continue
            if not inside.all():
                trimmed.append(label)
                order = _subset(order, inside)
        elif order.n_good < args.min_order_pixels:
            slivers.append(f"{label} ({order.n_good})")
            continue
        kept.append(order)
        kept_labels.append(label)
    if not kept:
        data_lo = min(float(o.wavelength[0]) for o in orders)
        data_hi = max(float(o.wavelength[-1]) for o in orders)
        if args.outside == "crop" and not slivers:
            raise UsageError(
                f"the clone(s) cover {lo:.2f}–{hi:.2f} Å but the data span "
                f"{data_lo:.2f}–{data_hi:.2f} Å: no order overlaps; clone the template over "
                "the data's range (clone --range LO HI)"
            )
        raise UsageError(
            f"no order keeps {args.min_order_pixels} good pixels ("
            + ", ".join(slivers)
            + " inside the clone range and the mask); clone a wider range, mask less, or "
            "lower --min-order-pixels"
        )
    notes = []
    if outside:
        notes.append(f"{_label_list(outside)} outside the clone range {lo:.2f}–{hi:.2f} Å")
    if slivers:
        notes.append(
            f"{_label_list(slivers)} with fewer than {args.min_order_pixels} good pixels "
            "(good pixels kept in brackets)"
        )
    if outside or slivers or trimmed:
        message = f"{PROG}: fitting {len(kept)} of {len(orders)} order(s)"
        if notes:
            message += "; left out: " + "; ".join(notes)
        if trimmed:
            message += f"; trimmed at the clone's edge: {_label_list(trimmed)}"
        print(message, file=err)
    for order, label in zip(kept, kept_labels):
        level = float(np.median(order.flux[order.good]))
        if not level > 0:
            raise UsageError(
                f"{label}: the median flux is {level:.3g} (<= 0); the model multiplies a "
                "positive continuum by line transmissions, so the data must be mostly positive "
                "(mask this order's range with --mask-range, or check the file)"
            )
    if args.outside == "error":
        _check_inside(kept, kept_labels, lo, hi)
    return kept, kept_labels


def _check_inside(orders: list, labels: list[str], lo: float, hi: float) -> None:
    """``--outside error``: stop, naming the file's orders that lie inside the clones."""
    spans = [(float(o.wavelength[o.good].min()), float(o.wavelength[o.good].max())) for o in orders]
    data_lo, data_hi = min(s[0] for s in spans), max(s[1] for s in spans)
    if data_lo >= lo and data_hi <= hi:
        return
    inside = [label for label, (a, b) in zip(labels, spans) if a >= lo and b <= hi]
    hint = f"; {_label_list(inside)} lie inside it" if inside else ""
    raise UsageError(
        f"the data span {data_lo:.2f}–{data_hi:.2f} Å but the clone covers only "
        f"{lo:.2f}–{hi:.2f} Å{hint}; clone a wider range (clone --range LO HI) or pass "
        "--outside crop (fit(outside='crop'))"
    )


def _relabel(message: str, labels: Sequence[str]) -> str:
    """Rewrite ``order K`` (K counting the orders passed to fit) with the file's labels."""

    def replace(match: re.Match) -> str:
        k = int(match.group(1))
        return labels[k] if 0 <= k < len(labels) else match.group(0)

    return re.sub(r"\border (\d+)\b", replace, message)


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
# Reporting and writing
# ---------------------------------------------------------------------------
def _pm(value: float, sigma: float, digits: int, note: str | None = None) -> str:
    if not math.isfinite(sigma):
        return f"{value:.{digits}f} ({note or 'fixed'})"
    return f"{value:.{digits}f} ± {sigma:.{digits}f}"


def _plain(value) -> float:
    """A float from a float or a Quantity (km/s or dimensionless)."""
    if isinstance(value, u.Quantity):
        unit = u.km / u.s if value.unit.physical_type == "speed" else u.one
        return float(value.to_value(unit))
    return float(value)


def _report(result, out, label: str = "") -> None:
    unc = {name: _plain(value) for name, value in dict(result.uncertainties).items()}
    notes = dict(result.meta.get("uncertainty_notes", {}))
    prefix = f"{label}: " if label else ""

    def pm(name, value, digits):
        note = notes.get(name)
        return _pm(
            _plain(value), unc.get(name, float("nan")), digits, note and f"no uncertainty: {note}"
        )

    print(f"{prefix}RV       = {pm('rv', result.rv, 3)} km/s", file=out)
    print(f"{prefix}v sin i  = {pm('vsini', result.vsini, 3)} km/s", file=out)
    print(f"{prefix}R        = {pm('resolving_power', result.resolving_power, 0)}", file=out)
    print(f"{prefix}chi2_red = {_plain(result.chi2_reduced):.3f}", file=out)
    scales = result.meta.get("telluric_scales") or {}
    if len(scales) > 1 or (scales and "telluric" not in scales):  # a model by molecule
        for name, entry in scales.items():
            value = _pm(entry["value"], entry["uncertainty"], 4, None)
            print(f"{prefix}telluric scale {name} = {value}", file=out)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (a full disk, no permission) into a UsageError."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error)
        raise UsageError(f"could not write {path}: {reason}") from error


def _write_fit_outputs(result, outdir: Path, out) -> dict:
    from .astro.results import line_table, plot_fit, write_fit, write_line_table

    with _writing(outdir):
        outdir.mkdir(parents=True, exist_ok=True)
    paths = {"lines": outdir / "lines.ecsv", "fit": outdir / "fit.asdf", "plot": outdir / "fit.png"}
    with _writing(paths["lines"]):
        write_line_table(line_table(result), paths["lines"], overwrite=True)
    with _writing(paths["fit"]):
        write_fit(result, paths["fit"], overwrite=True)
    with _writing(paths["plot"]):
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
    output = Path(args.output).expanduser()
    # check the output's folder before a long clone, not after it
    with _writing(output.parent):
        output.parent.mkdir(parents=True, exist_ok=True)
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
        profile=args.profile,
        flatten=False if args.no_flatten else None,  # None: a telluric template stays flat
        progress=not args.quiet,
    )
    result.meta["template"] = description
    with _writing(output):
        path = result.save(output, overwrite=True)
    print(
        f"cloned {result.n_lines} lines over "
        f"{template.wavelength[0]:.2f}–{template.wavelength[-1]:.2f} Å "
        f"in {time.perf_counter() - started:.1f} s; residual RMS {result.rms:.4f}",
        file=out,
    )
    print(f"wrote {path}", file=out)
    return 0


def _fit_keywords(args) -> dict:
    """Keywords of :func:`blase_specutils.fit` from the options of :func:`_add_fit_options`."""
    return {
        "rv": args.rv,
        "vsini": args.vsini,
        "fit_resolving_power": args.fit_resolving_power,
        "outside": args.outside,
        "epochs": args.epochs,
        "global_epochs": args.global_epochs,
        "rv_search": args.rv_search,
        "trainable": tuple(args.trainable),
        "prior_scale": args.prior_scale,
        "prior_weight": args.prior_weight,
        "prior_center": args.prior_center,
        "prior_center_scaling": args.prior_center_scaling,
        "hold_common_modes": not args.free_common_modes,
        "broad_lines": args.broad_lines,
        "checkpoint": args.checkpoint,
        "checkpoint_every": args.checkpoint_every,
        "resume": args.resume,
        "progress": not args.quiet,
    }


def _check_fit_files(args) -> None:
    """Fail before any work on the files ``fit`` will need or write."""
    args.mask_ranges = [tuple(sorted(r)) for r in (args.mask_range or [])]
    if args.mask is not None:
        args.mask_ranges += read_mask_file(args.mask)
    if args.resume is not None:
        resume = Path(args.resume).expanduser()
        if not resume.is_file():
            what = "a folder" if resume.is_dir() else "not there"
            raise UsageError(f"--resume: the checkpoint {resume} is {what}")
    if args.checkpoint is not None:
        checkpoint = Path(args.checkpoint).expanduser()
        if checkpoint.is_dir():
            raise UsageError(f"--checkpoint: {checkpoint} is a folder; give a file name")
        with _writing(checkpoint.parent):
            checkpoint.parent.mkdir(parents=True, exist_ok=True)


def _telluric_paths(values: list[str] | None):
    """``--telluric`` as given: None, one path (``PATH``), or one per molecule
    (``NAME=PATH``, the option repeated) as a dict for a telluric model by molecule."""
    if not values:
        return None
    if len(values) == 1 and not _names_a_molecule(values[0]):
        return values[0]
    paths = {}
    for value in values:
        if not _names_a_molecule(value):
            raise UsageError(
                f"--telluric {value}: with several telluric clones, name each one's molecule "
                "as NAME=PATH (e.g. --telluric H2O=h2o.ecsv --telluric O2=o2.ecsv)"
            )
        name, path = value.split("=", 1)
        if name in paths:
            raise UsageError(f"--telluric: the molecule {name} is given twice")
        paths[name] = path
    return paths


def _load_telluric(values: list[str] | None):
    """The clone(s) ``--telluric`` names (see :func:`_telluric_paths`)."""
    paths = _telluric_paths(values)
    if isinstance(paths, dict):
        return {name: _load_clone(path, f"--telluric {name}") for name, path in paths.items()}
    return None if paths is None else _load_clone(paths, "--telluric")


def _names_a_molecule(value: str) -> bool:
    """Whether a ``--telluric`` value is ``NAME=PATH`` (not a file whose name holds '=')."""
    name, equals, path = value.partition("=")
    return (
        bool(equals and name and path)
        and name.replace("_", "").replace("-", "").replace("+", "").isalnum()
        and not Path(value).expanduser().exists()
    )


def _cmd_fit(args, out, err) -> int:
    from . import fitting

    _check_fit_files(args)
    stellar = _load_clone(args.stellar, "--stellar")
    telluric = _load_telluric(args.telluric)
    orders = read_observation(args.data)
    instrument = orders[0].meta.get("instrument") if orders else None
    by_molecule = list(telluric.values()) if isinstance(telluric, dict) else [telluric]
    clones = [c for c in (stellar, *by_molecule) if c is not None]
    orders, labels = _prepare_orders(orders, clones, args, err)
    # the instrument's nominal R unless given (as spectrum.blase.fit does)
    resolving_power, source = fitting.initial_resolving_power(args.resolving_power, instrument)
    try:
        result = fitting.fit(
            **_fit_inputs(orders),
            stellar=stellar,
            telluric=telluric,
            resolving_power=resolving_power,
            **_fit_keywords(args),
        )
    except ValueError as error:  # fit counts the orders it was given: use the file's numbers
        raise UsageError(_relabel(str(error), labels)) from error
    except RuntimeError as error:
        # torch.save reports a failed write (a full disk) as a RuntimeError
        if args.checkpoint is None or "writ" not in str(error).lower():
            raise
        raise UsageError(
            f"could not write the checkpoint {args.checkpoint}: {_one_line(str(error), 200)}"
        ) from error
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

    settings = _DEMO_FULL if not args.quick else _DEMO_QUICK
    progress = not args.quiet
    outdir = Path(args.output)
    started = time.perf_counter()

    datasets.mirror_folder()  # a BLASE_SPECUTILS_DATA naming no folder stops here
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
    with _writing(outdir / "clone.ecsv"):
        clone_path = clone_result.save(outdir / "clone.ecsv", overwrite=True)
    print(f"wrote {clone_path}", file=out)
    clone_plot = outdir / "clone.png"
    with _writing(clone_plot):
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
            q.add_argument(
                "--telluric",
                action="append",
                default=None,
                metavar="[NAME=]PATH",
                help="telluric clone (ECSV); repeat as NAME=PATH for one per molecule",
            )
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
            job["stellar"], job["telluric"] = args.stellar, _telluric_paths(args.telluric)
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
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` after every option that has a value by default.

    Options whose default is None (the help text says what happens then) and plain
    flags are left alone; a tuple default is shown as the words it stands for.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is False:
            return text
        positional = not action.option_strings and action.nargs not in ("?", "*")
        if default is argparse.SUPPRESS or positional:
            return text
        if isinstance(default, (tuple, list)):
            shown = " ".join(map(str, default)) or "none"
            return f"{text} (default: {shown})"
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (with a pointer to ``--help``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def _add_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand parser that shows defaults in its ``--help``."""
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        formatter_class=_HelpFormatter,
    )


def _add_common_options(p: argparse.ArgumentParser, output: str, output_help: str) -> None:
    p.add_argument("-o", "--output", default=output, help=output_help)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_clone_parser(sub) -> None:
    p = _add_parser(sub, "clone", "clone a synthetic template into a line forest")
    p.add_argument(
        "template",
        help="template file (PHOENIX .dat/.fits, two-column text, muler template name) "
        "or a dataset name such as phoenix:Z",
    )
    p.add_argument(
        "--teff",
        type=_finite_float,
        default=None,
        help="effective temperature for the black body, K (default: none, no black body)",
    )
    p.add_argument(
        "--prominence",
        type=_finite_float,
        default=0.01,
        help="line-finding prominence (continuum units)",
    )
    p.add_argument(
        "--range",
        nargs=2,
        type=_finite_float,
        metavar=("LO", "HI"),
        help="wavelength range to clone, Å (default: the whole template)",
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
        "--profile",
        choices=PROFILE_CHOICES,
        default="pseudo_voigt",
        help="line profile: the pseudo-Voigt, or the exact Voigt (about 2.5x slower)",
    )
    p.add_argument(
        "--no-flatten",
        action="store_true",
        help="do not flatten (transmission already at 1; the default for telluric templates)",
    )
    _add_common_options(p, "clone.ecsv", "output ECSV line table")
    p.set_defaults(handler=_cmd_clone)


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    """The options of ``fit`` that become keywords of :func:`blase_specutils.fit`
    (see :func:`_fit_keywords`); shareable by other subcommands."""
    p.add_argument("--stellar", required=True, help="stellar clone (ECSV from `clone`)")
    p.add_argument(
        "--telluric",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help=(
            "telluric clone (ECSV from `clone --no-flatten`; default: none); repeat as "
            "NAME=PATH for one clone per molecule, each with its own optical-depth scale "
            "(--telluric H2O=h2o.ecsv --telluric O2=o2.ecsv)"
        ),
    )
    p.add_argument(
        "--rv", type=_finite_float, default=FIT_DEFAULTS["rv"], help="initial radial velocity, km/s"
    )
    p.add_argument(
        "--vsini",
        type=_finite_float,
        default=None,
        help="initial v sin i, km/s (default: 5)",
    )
    p.add_argument(
        "--resolving-power",
        type=_finite_float,
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
        help="data beyond the clones' range: crop it (orders with too little left are left "
        "out) or stop with an error that names the orders inside",
    )
    p.add_argument(
        "--min-order-pixels",
        type=_positive_int,
        default=MIN_ORDER_PIXELS,
        help="leave out orders (edge slivers) with fewer good pixels than this after the "
        "mask and the crop",
    )
    p.add_argument(
        "--mask",
        default=None,
        metavar="FILE",
        help="text file of wavelength ranges to leave out, one 'LO HI' (vacuum Å) per line, "
        "# comments (default: none)",
    )
    p.add_argument(
        "--mask-range",
        nargs=2,
        type=_finite_float,
        action="append",
        metavar=("LO", "HI"),
        help="a wavelength range to leave out, vacuum Å; repeat for more (default: none)",
    )
    p.add_argument(
        "--rv-search",
        type=_finite_float,
        default=FIT_DEFAULTS["rv_search"],
        help="half-width of the RV grid search, km/s",
    )
    p.add_argument(
        "--epochs",
        type=_non_negative_int,
        default=FIT_DEFAULTS["epochs"],
        help="epochs of the line stage",
    )
    p.add_argument(
        "--global-epochs",
        type=_non_negative_int,
        default=FIT_DEFAULTS["global_epochs"],
        help="epochs of each global stage",
    )
    p.add_argument(
        "--trainable",
        nargs="*",
        choices=TRAINABLE_CHOICES,
        default=FIT_DEFAULTS["trainable"],
        metavar="PROPERTY",
        help="line properties that train in the line stage, any of "
        f"{', '.join(TRAINABLE_CHOICES)}; give none (--trainable alone) to hold the lines",
    )
    p.add_argument(
        "--prior-scale",
        type=_finite_float,
        default=FIT_DEFAULTS["prior_scale"],
        help="scale Λ of the L1 prior on ln-amplitude departures from the clone",
    )
    p.add_argument(
        "--prior-weight",
        type=_finite_float,
        default=FIT_DEFAULTS["prior_weight"],
        help="weight of the priors relative to chi2/2",
    )
    p.add_argument(
        "--prior-center",
        type=_finite_float,
        default=None,
        help="width of a Gaussian prior on line-centre moves, Å (default: none)",
    )
    p.add_argument(
        "--prior-center-scaling",
        choices=("uniform", "depth"),
        default="uniform",
        help="'depth': centre-prior width scales with line depth (default: %(default)s)",
    )
    p.add_argument(
        "--free-common-modes",
        action="store_true",
        help="let trained centres and widths take a common shift / broadening (by default "
        "it stays with the RV, v sin i and R)",
    )
    p.add_argument(
        "--broad-lines",
        choices=("mask", "keep"),
        default="keep",
        help="the stellar clone's broad lines (intrinsic FWHM > 200 km/s, hydrogen): 'keep' "
        "fits them, 'mask' leaves them out of the chi2 (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="write checkpoints of the line stage to this file (default: none)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=FIT_DEFAULTS["checkpoint_every"],
        help="epochs between checkpoints",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="FILE",
        help="resume the line stage from this checkpoint (default: start afresh)",
    )


def _add_fit_parser(sub) -> None:
    p = _add_parser(sub, "fit", "transfer-learn clones against an observed spectrum")
    p.add_argument(
        "data",
        help="FITS file: HPF Goldilocks, IGRINS .spec.fits, or a wavelength/flux binary table",
    )
    _add_fit_options(p)
    _add_common_options(p, "blase_fit", "output folder")
    p.set_defaults(handler=_cmd_fit)


def _add_demo_parser(sub) -> None:
    p = _add_parser(sub, "demo", "fit WASP 69 (HPF) with a PHOENIX 3900 K clone")
    p.add_argument("--quick", action="store_true", help="far fewer epochs (seconds; for tests)")
    _add_common_options(p, "blase_demo", "output folder")
    p.set_defaults(handler=_cmd_demo)


#: The subcommands, in the order ``--help`` lists them: name → function adding its parser.
SUBCOMMANDS = {
    "clone": _add_clone_parser,
    "fit": _add_fit_parser,
    "demo": _add_demo_parser,
    "batch": _add_batch_parser,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``blase-specutils``."""
    parser = _Parser(
        prog=PROG,
        description="Clone synthetic spectra into tunable line forests and transfer-learn them on "
        "observed échelle spectra (the blasé method).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}"
    )
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def _error_message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return str(error)


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
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as stop:  # argparse already printed its message
        return int(stop.code or 0) if not isinstance(stop.code, str) else 2
    out, err = sys.stdout, sys.stderr
    try:
        return args.handler(args, out, err)
    except (UsageError, OSError, ValueError, u.UnitsError) as error:
        # OSError covers missing files and folders, permissions, a full disk and failed
        # downloads (datasets.DataUnavailableError); ValueError bad values and formats.
        print(f"{PROG} {args.command}: error: {_one_line(_error_message(error))}", file=err)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
