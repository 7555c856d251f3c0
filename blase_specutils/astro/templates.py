"""Readers for synthetic templates: PHOENIX, muler's packaged templates, text/CSV.

Every reader returns plain numpy arrays: vacuum wavelength in Å (float64,
strictly increasing) and flux or transmission (float64). :func:`read_template`
wraps them in a :class:`Template`, whose ``wavelength_quantity``,
``flux_quantity`` and ``to_spectrum()`` give the astropy/specutils view.

Checks made on every read: the file exists, both columns are finite, the
wavelengths are positive and strictly increasing (unsorted input is an error
unless ``sort=True``; repeated wavelengths are always an error), and unit names
are real length units.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits

__all__ = [
    "Template",
    "TEMPLATE_KINDS",
    "MULER_TEMPLATES",
    "read_phoenix_dat",
    "read_phoenix_fits",
    "read_muler_template",
    "read_two_column",
    "read_template",
]

#: What a template's second array means: stellar flux, telluric transmission, or unknown.
TEMPLATE_KINDS = ("stellar", "telluric", "generic")
_FORMATS = ("muler", "phoenix-fits", "phoenix-dat", "two-column")
_MEDIA = ("vacuum", "air")
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- containers


@dataclass
class Template:
    """A synthetic spectrum on a vacuum wavelength grid.

    Parameters
    ----------
    wavelength : numpy.ndarray
        Vacuum wavelength in Å, 1-D, finite, strictly increasing (float64).
    flux : numpy.ndarray
        Flux (``kind="stellar"``, unit in ``meta["flux_unit"]``, default
        dimensionless) or transmission (``kind="telluric"``, dimensionless),
        same shape as ``wavelength`` (float64).
    kind : {"stellar", "telluric", "generic"}
        What ``flux`` represents.
    meta : dict
        Provenance: ``source`` (path or name), ``format``, ``flux_unit``
        (a string astropy can parse) and reader-specific entries.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    kind: str = "generic"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TEMPLATE_KINDS:
            raise ValueError(f"template kind must be one of {TEMPLATE_KINDS}, got {self.kind!r}")
        source = self.meta.get("source", "template")
        self.wavelength, self.flux = _checked(self.wavelength, self.flux, source=source)

    def __len__(self) -> int:
        return self.wavelength.size

    @property
    def wavelength_quantity(self) -> u.Quantity:
        """Vacuum wavelength as a Quantity in Å."""
        return u.Quantity(self.wavelength, u.AA, copy=False)

    @property
    def flux_quantity(self) -> u.Quantity:
        """Flux or transmission as a Quantity (unit from ``meta["flux_unit"]``)."""
        return u.Quantity(self.flux, u.Unit(self.meta.get("flux_unit", "")), copy=False)

    def to_spectrum(self):
        """The template as a :class:`specutils.Spectrum` (vacuum wavelengths in Å).

        Returns
        -------
        specutils.Spectrum
            Spectrum with ``spectral_axis`` in Å and ``flux`` in the template's unit;
            ``meta`` is a copy of :attr:`meta` plus ``kind``.
        """
        from specutils import Spectrum

        return Spectrum(
            flux=self.flux_quantity,
            spectral_axis=self.wavelength_quantity,
            meta={**self.meta, "kind": self.kind},
        )


@dataclass(frozen=True)
class _MulerTemplate:
    filename: str
    kind: str
    wavelength_column: str
    value_column: str
    wavelength_unit: str
    description: str


#: muler's packaged templates: file name → (kind, columns, unit, description).
MULER_TEMPLATES = {
    "PHOENIX_10kK_hpf_template.csv": _MulerTemplate(
        filename="PHOENIX_10kK_hpf_template.csv",
        kind="stellar",
        wavelength_column="wave_ang",
        value_column="flux",
        wavelength_unit="Angstrom",
        description="PHOENIX 10,000 K over the HPF band, 0.01 Å steps (A0V standard)",
    ),
    "telfit_HPFtemplate_temp286_hum050.csv": _MulerTemplate(
        filename="telfit_HPFtemplate_temp286_hum050.csv",
        kind="telluric",
        wavelength_column="wavelength_A",
        value_column="transmission",
        wavelength_unit="Angstrom",
        description="TelFit transmission at HPF pixel sampling, 286 K, 50% humidity",
    ),
    "psg_trn_r100000_1.4_2.5_um.txt": _MulerTemplate(
        filename="psg_trn_r100000_1.4_2.5_um.txt",
        kind="telluric",
        wavelength_column="Wave/freq",
        value_column="Total",
        wavelength_unit="micron",
        description="NASA PSG total telluric transmission, R = 100,000, 1.4–2.5 µm",
    ),
}
_MULER_ALIASES = {
    "phoenix_10kk_hpf": "PHOENIX_10kK_hpf_template.csv",
    "telfit_hpf": "telfit_HPFtemplate_temp286_hum050.csv",
    "psg": "psg_trn_r100000_1.4_2.5_um.txt",
}


# --------------------------------------------------------------------------- checks


def _checked(
    wavelength: Any, flux: Any, *, source: Any, sort: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validate (and optionally sort) a wavelength/flux pair; return float64 copies."""
    wavelength = np.array(wavelength, dtype=np.float64)
    flux = np.array(flux, dtype=np.float64)
    if wavelength.ndim != 1 or flux.ndim != 1:
        raise ValueError(
            f"{source}: wavelength and flux must be 1-D, got shapes {wavelength.shape} "
            f"and {flux.shape}"
        )
    if wavelength.shape != flux.shape:
        raise ValueError(
            f"{source}: wavelength has {wavelength.size} samples but flux has {flux.size}"
        )
    if wavelength.size < 2:
        raise ValueError(f"{source}: a template needs at least 2 samples, got {wavelength.size}")
    for label, values in (("wavelength", wavelength), ("flux", flux)):
        bad = ~np.isfinite(values)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{source}: {int(bad.sum())} non-finite (NaN or inf) {label} values, "
                f"first at index {first}"
            )
    if wavelength.min() <= 0:
        raise ValueError(f"{source}: wavelengths must be positive, minimum is {wavelength.min()}")
    steps = np.diff(wavelength)
    if not (steps > 0).all():
        if not sort:
            first = int(np.flatnonzero(steps <= 0)[0])
            raise ValueError(
                f"{source}: wavelengths are not strictly increasing (index {first}: "
                f"{wavelength[first]!r} then {wavelength[first + 1]!r}); pass sort=True to sort"
            )
        order = np.argsort(wavelength, kind="stable")
        wavelength, flux = wavelength[order], flux[order]
        repeated = np.flatnonzero(np.diff(wavelength) == 0)
        if repeated.size:
            raise ValueError(
                f"{source}: {repeated.size} repeated wavelength values "
                f"(first {wavelength[repeated[0]]!r} Å); a template grid needs distinct ones"
            )
    return wavelength, flux


def _angstrom_per(unit_name: Any) -> float:
    """Å per unit of ``unit_name`` (a length unit); clear errors otherwise."""
    try:
        unit = u.Unit(unit_name)
    except (ValueError, TypeError) as error:
        raise ValueError(f"unknown wavelength unit {unit_name!r}: {error}") from None
    if unit.physical_type != "length":
        raise ValueError(
            f"wavelength unit must be a length (Angstrom, nm, micron, ...), "
            f"got {unit_name!r} ({unit.physical_type})"
        )
    scale = float(unit.to(u.AA))
    # astropy's micron -> Å factor is 9999.999999999998; snap near-powers of ten so that
    # 0.83 µm becomes 8300.0 Å exactly as written, not 8299.999999999998 Å.
    power_of_ten = 10.0 ** round(np.log10(scale))
    return power_of_ten if abs(scale / power_of_ten - 1) < 1e-12 else scale


def _existing_file(path: PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"template file not found: {path}")
    return path


def _cropped(
    wavelength: np.ndarray, flux: np.ndarray, wavelength_range: Any, source: Any
) -> tuple[np.ndarray, np.ndarray]:
    if wavelength_range is None:
        return wavelength, flux
    low, high = (float(value) for value in wavelength_range)
    if not low < high:
        raise ValueError(
            f"wavelength_range must be (low, high) in Å with low < high, got {wavelength_range}"
        )
    keep = (wavelength >= low) & (wavelength <= high)
    if keep.sum() < 2:
        raise ValueError(
            f"{source}: fewer than 2 samples within {low}–{high} Å "
            f"(template covers {wavelength[0]}–{wavelength[-1]} Å)"
        )
    return wavelength[keep], flux[keep]


def _finish(wavelength, flux, *, source, sort, wavelength_range):
    wavelength, flux = _checked(wavelength, flux, source=source, sort=sort)
    return _cropped(wavelength, flux, wavelength_range, source)


# --------------------------------------------------------------------------- text tables


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _split(line: str, delimiter: str | None) -> list[str]:
    return [token.strip() for token in line.split(delimiter)] if delimiter else line.split()


def _read_table(
    path: Path,
    columns: tuple[int | str, int | str],
    delimiter: str | None,
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Two columns of a text table; header names come from a non-numeric first row or
    from the last ``#`` comment line with as many fields as the data."""
    last_comment = None
    header = None
    first_data = None
    with open(path, encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream):
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                last_comment = stripped.lstrip("#").strip()
                continue
            if delimiter is None and "," in stripped:
                delimiter = ","
            tokens = _split(stripped, delimiter)
            if header is None and not all(_is_number(token) for token in tokens):
                header = tokens
                continue
            first_data = (number, tokens)
            break
    if first_data is None:
        raise ValueError(f"{path}: no numeric data rows found")
    skiprows, tokens = first_data
    width = len(tokens)
    if header is None and last_comment is not None:
        candidate = _split(last_comment, delimiter)
        if len(candidate) == width:
            header = candidate

    indices = []
    for column in columns:
        if isinstance(column, str):
            if header is None or column not in header:
                raise ValueError(f"{path}: no column named {column!r}; columns are {header}")
            indices.append(header.index(column))
        else:
            if not -width <= int(column) < width:
                raise ValueError(f"{path}: column index {column} out of range for {width} columns")
            indices.append(int(column) % width)
    try:
        table = np.loadtxt(
            path,
            delimiter=delimiter,
            comments="#",
            skiprows=skiprows,
            usecols=indices,
            dtype=np.float64,
            ndmin=2,
        )
    except ValueError as error:
        raise ValueError(f"{path}: could not read numeric columns {indices}: {error}") from None
    return table[:, 0], table[:, 1], header


def read_two_column(
    path: PathLike,
    wavelength_unit: str | u.UnitBase = "Angstrom",
    *,
    columns: tuple[int | str, int | str] = (0, 1),
    delimiter: str | None = None,
    medium: str = "vacuum",
    sort: bool = False,
    wavelength_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read wavelength and flux columns from a text or CSV table.

    Lines starting with ``#`` and blank lines are skipped; a first non-numeric
    row is taken as column names.

    Parameters
    ----------
    path : str or os.PathLike
        The table file; no unit.
    wavelength_unit : str or astropy.units.UnitBase
        Unit of the wavelength column (any length unit: ``"Angstrom"``, ``"nm"``,
        ``"micron"``, ...).
    columns : (int or str, int or str)
        Wavelength and flux columns, by 0-based index or header name; no unit.
    delimiter : str, optional
        Column separator; default: comma if the first data row has one, else whitespace.
    medium : {"vacuum", "air"}
        Medium of the file's wavelengths; air wavelengths are converted to vacuum
        (Morton 2000, via :func:`specutils.utils.wcs_utils.air_to_vac`).
    sort : bool
        Sort unsorted wavelengths instead of raising.
    wavelength_range : (float, float), optional
        Keep only samples with vacuum wavelength within this range, in Å (inclusive).

    Returns
    -------
    wavelength : numpy.ndarray
        Vacuum wavelength in Å (float64, strictly increasing).
    flux : numpy.ndarray
        The second column, in the file's units (float64).
    """
    path = _existing_file(path)
    scale = _angstrom_per(wavelength_unit)
    if medium not in _MEDIA:
        raise ValueError(f"medium must be one of {_MEDIA}, got {medium!r}")
    wavelength, flux, _ = _read_table(path, columns, delimiter)
    wavelength = wavelength * scale
    if medium == "air":
        from specutils.utils.wcs_utils import air_to_vac

        wavelength = air_to_vac(wavelength * u.AA).to_value(u.AA)
    return _finish(wavelength, flux, source=path, sort=sort, wavelength_range=wavelength_range)


# --------------------------------------------------------------------------- PHOENIX


def read_phoenix_dat(
    path: PathLike,
    *,
    sort: bool = False,
    wavelength_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a two-column PHOENIX sample (vacuum wavelength in µm, flux).

    This is the layout of the ``*_band_test_sample_lte*-PHOENIX-ACES.dat`` files
    (e.g. :func:`blase_specutils.datasets.phoenix_path`).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.dat`` file; no unit.
    sort : bool
        Sort unsorted wavelengths instead of raising.
    wavelength_range : (float, float), optional
        Keep only samples within this range, in Å (inclusive).

    Returns
    -------
    wavelength : numpy.ndarray
        Vacuum wavelength in Å (float64, strictly increasing).
    flux : numpy.ndarray
        Model flux in the file's arbitrary linear units (float64).
    """
    return read_two_column(
        path, "micron", sort=sort, wavelength_range=wavelength_range, delimiter=None
    )


_PHOENIX_WAVE_PATTERN = "WAVE_PHOENIX*.fits"


def _find_phoenix_wavelength_file(flux_path: Path) -> Path:
    searched = []
    for folder in (flux_path.parent, *list(flux_path.parents)[1:3]):
        searched.append(str(folder))
        found = sorted(folder.glob(_PHOENIX_WAVE_PATTERN))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(
                f"several PHOENIX wavelength files in {folder}: {[p.name for p in found]}; "
                "pass wavelength_path"
            )
    raise FileNotFoundError(
        f"no PHOENIX wavelength file ({_PHOENIX_WAVE_PATTERN}) found beside {flux_path.name} "
        f"(searched {searched}); pass wavelength_path, e.g. the "
        "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits of the PHOENIX HiRes grid"
    )


def _phoenix_fits(path, wavelength_path, *, sort, wavelength_range):
    path = _existing_file(path)
    wavelength_file = (
        _find_phoenix_wavelength_file(path)
        if wavelength_path is None
        else _existing_file(wavelength_path)
    )
    with fits.open(path, memmap=False) as hdus:
        flux = np.asarray(hdus[0].data, dtype=np.float64)
        header = hdus[0].header
        flux_unit = header.get("BUNIT", "")
        meta = {
            "source": str(path),
            "format": "phoenix-fits",
            "wavelength_source": str(wavelength_file),
            "flux_unit": _astropy_unit_string(flux_unit),
        }
        for key, name in (
            ("PHXTEFF", "teff"),
            ("PHXLOGG", "logg"),
            ("PHXM_H", "feh"),
            ("PHXALPHA", "alpha"),
        ):
            if key in header:
                meta[name] = header[key]
    with fits.open(wavelength_file, memmap=False) as hdus:
        wavelength = np.asarray(hdus[0].data, dtype=np.float64)
        unit_name = hdus[0].header.get("UNIT", hdus[0].header.get("BUNIT", "Angstrom"))
    if flux.ndim != 1 or wavelength.ndim != 1:
        raise ValueError(
            f"{path}: PHOENIX flux and wavelength must be 1-D primary arrays, got shapes "
            f"{flux.shape} and {wavelength.shape}"
        )
    if flux.size != wavelength.size:
        raise ValueError(
            f"{path} has {flux.size} flux samples but wavelength file {wavelength_file} "
            f"has {wavelength.size}: they do not belong together"
        )
    wavelength = wavelength * _angstrom_per(unit_name)
    wavelength, flux = _finish(
        wavelength, flux, source=path, sort=sort, wavelength_range=wavelength_range
    )
    return wavelength, flux, meta


def _astropy_unit_string(unit_name: str) -> str:
    """An astropy-parsable version of a FITS unit string ('' if it cannot be parsed)."""
    if not unit_name:
        return ""
    with warnings.catch_warnings():
        # PHOENIX writes 'erg/s/cm^2/cm': several slashes draw a UnitsWarning, yet parse.
        warnings.simplefilter("ignore", u.UnitsWarning)
        for unit_format in ("generic", "fits"):
            try:
                return u.Unit(unit_name, format=unit_format).to_string()
            except ValueError:
                continue
    return ""


def read_phoenix_fits(
    path: PathLike,
    wavelength_path: PathLike | None = None,
    *,
    sort: bool = False,
    wavelength_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a PHOENIX HiRes FITS spectrum (flux in the primary HDU).

    The PHOENIX grid (Husser et al. 2013) stores wavelengths once, in a separate
    ``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits`` whose primary HDU holds vacuum
    wavelengths in Å.

    Parameters
    ----------
    path : str or os.PathLike
        The flux file (``lte*-PHOENIX-ACES-AGSS-COND-2011-HiRes.fits``); flux in
        erg s⁻¹ cm⁻² cm⁻¹ as stored.
    wavelength_path : str or os.PathLike, optional
        The wavelength file; by default a single ``WAVE_PHOENIX*.fits`` in the
        flux file's folder or one of its two parent folders (the grid's layout).
    sort : bool
        Sort unsorted wavelengths instead of raising.
    wavelength_range : (float, float), optional
        Keep only samples within this range, in Å (inclusive).

    Returns
    -------
    wavelength : numpy.ndarray
        Vacuum wavelength in Å (float64, strictly increasing).
    flux : numpy.ndarray
        Flux as stored (float64).
    """
    wavelength, flux, _ = _phoenix_fits(
        path, wavelength_path, sort=sort, wavelength_range=wavelength_range
    )
    return wavelength, flux


# --------------------------------------------------------------------------- muler


def _muler_entry(name: str) -> _MulerTemplate:
    if not isinstance(name, str):
        raise TypeError(f"muler template name must be a str, got {type(name).__name__}")
    key = _MULER_ALIASES.get(name.lower(), name)
    if key not in MULER_TEMPLATES:
        choices = sorted(MULER_TEMPLATES) + sorted(_MULER_ALIASES)
        raise ValueError(f"unknown muler template {name!r}; choose one of {choices}")
    return MULER_TEMPLATES[key]


def _muler(name, *, sort, wavelength_range):
    entry = _muler_entry(name)
    resource = importlib.resources.files("muler") / "templates" / entry.filename
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise FileNotFoundError(f"muler does not ship {entry.filename} (looked in {path})")
        wavelength, flux, _ = _read_table(
            path, (entry.wavelength_column, entry.value_column), delimiter=None
        )
    wavelength = wavelength * _angstrom_per(entry.wavelength_unit)
    source = f"muler/templates/{entry.filename}"
    wavelength, flux = _finish(
        wavelength, flux, source=source, sort=sort, wavelength_range=wavelength_range
    )
    meta = {
        "source": source,
        "format": "muler",
        "flux_unit": "",
        "description": entry.description,
        "column": entry.value_column,
    }
    return wavelength, flux, meta, entry.kind


def read_muler_template(
    name: str,
    *,
    sort: bool = False,
    wavelength_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one of the templates packaged with muler (``muler/templates/``).

    Parameters
    ----------
    name : str
        File name, one of :data:`MULER_TEMPLATES` (``PHOENIX_10kK_hpf_template.csv``,
        ``telfit_HPFtemplate_temp286_hum050.csv``, ``psg_trn_r100000_1.4_2.5_um.txt``),
        or an alias ``"phoenix_10kK_hpf"``, ``"telfit_hpf"``, ``"psg"``; no unit.
    sort : bool
        Sort unsorted wavelengths instead of raising.
    wavelength_range : (float, float), optional
        Keep only samples within this range, in Å (inclusive).

    Returns
    -------
    wavelength : numpy.ndarray
        Vacuum wavelength in Å (float64, strictly increasing).
    flux : numpy.ndarray
        Flux (PHOENIX, arbitrary linear units) or transmission (TelFit; PSG's
        ``Total`` column), dimensionless (float64).
    """
    wavelength, flux, _, _ = _muler(name, sort=sort, wavelength_range=wavelength_range)
    return wavelength, flux


# --------------------------------------------------------------------------- dispatcher


def _guess_format(path_or_name: PathLike) -> str:
    if isinstance(path_or_name, str):
        key = _MULER_ALIASES.get(path_or_name.lower(), path_or_name)
        if key in MULER_TEMPLATES:
            return "muler"
    path = Path(path_or_name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"template file not found: {path} (nor is it a muler template name: "
            f"{sorted(MULER_TEMPLATES)})"
        )
    lower = path.name.lower()
    if lower.endswith(_FITS_SUFFIXES):
        return "phoenix-fits"
    if lower.endswith(".dat") and re.search("phoenix", lower):
        return "phoenix-dat"
    return "two-column"


def read_template(
    path_or_name: PathLike,
    *,
    format: str | None = None,  # noqa: A002 - mirrors astropy's read(format=...)
    kind: str | None = None,
    wavelength_unit: str | u.UnitBase = "Angstrom",
    wavelength_path: PathLike | None = None,
    sort: bool = False,
    wavelength_range: tuple[float, float] | None = None,
    **table_options: Any,
) -> Template:
    """Read any supported template into a :class:`Template`.

    Parameters
    ----------
    path_or_name : str or os.PathLike
        A file, or the name of a muler template (see :func:`read_muler_template`).
    format : {"muler", "phoenix-fits", "phoenix-dat", "two-column"}, optional
        Reader to use; guessed when omitted: muler names → ``"muler"``; ``.fits`` →
        ``"phoenix-fits"``; ``.dat`` with PHOENIX in the name → ``"phoenix-dat"``
        (micron); anything else → ``"two-column"``.
    kind : {"stellar", "telluric", "generic"}, optional
        Overrides the guess (muler templates know theirs; PHOENIX → ``"stellar"``;
        tables → ``"generic"``).
    wavelength_unit : str or astropy.units.UnitBase
        Wavelength unit of a ``"two-column"`` table (a length unit).
    wavelength_path : str or os.PathLike, optional
        PHOENIX wavelength file for ``"phoenix-fits"``.
    sort : bool
        Sort unsorted wavelengths instead of raising.
    wavelength_range : (float, float), optional
        Keep only samples within this range, in Å (inclusive).
    **table_options
        ``columns``, ``delimiter``, ``medium`` for :func:`read_two_column`.

    Returns
    -------
    Template
        Vacuum wavelength in Å, flux or transmission, ``kind`` and ``meta``.
    """
    if format is None:
        format = _guess_format(path_or_name)  # noqa: A001
    if format not in _FORMATS:
        raise ValueError(f"template format must be one of {_FORMATS}, got {format!r}")
    if table_options and format != "two-column":
        raise TypeError(
            f"options {sorted(table_options)} only apply to format='two-column', not {format!r}"
        )
    common = {"sort": sort, "wavelength_range": wavelength_range}
    if format == "muler":
        wavelength, flux, meta, guessed_kind = _muler(path_or_name, **common)
    elif format == "phoenix-fits":
        wavelength, flux, meta = _phoenix_fits(path_or_name, wavelength_path, **common)
        guessed_kind = "stellar"
    elif format == "phoenix-dat":
        wavelength, flux = read_phoenix_dat(path_or_name, **common)
        meta = {"source": str(path_or_name), "format": format, "flux_unit": ""}
        guessed_kind = "stellar"
    else:
        wavelength, flux = read_two_column(path_or_name, wavelength_unit, **common, **table_options)
        meta = {"source": str(path_or_name), "format": format, "flux_unit": ""}
        guessed_kind = "generic"
    return Template(wavelength, flux, kind=kind or guessed_kind, meta=meta)
