"""Readers for synthetic templates: PHOENIX, Sonora, PSG, muler's packaged templates, text/CSV.

Every reader returns plain numpy arrays: vacuum wavelength in Å (float64,
strictly increasing) and flux or transmission (float64). :func:`read_template`
wraps them in a :class:`Template`, whose ``wavelength_quantity``,
``flux_quantity`` and ``to_spectrum()`` give the astropy/specutils view.

Checks made on every read: the file exists, both columns are finite, the
wavelengths are positive and strictly increasing (unsorted input is an error
unless ``sort=True``; repeated wavelengths are always an error), and unit names
are real length units.

Formats (``read_template(format=...)``; guessed from the file name when omitted):

* ``"phoenix-fits"``, ``"phoenix-dat"``: PHOENIX HiRes FITS and two-column µm samples;
* ``"sonora-bobcat"``, ``"sonora-diamondback"``, ``"sonora-elfowl"``: the public Sonora
  brown-dwarf spectra (Marley et al. 2021; Morley et al. 2024; Mukherjee et al. 2024),
  converted to F_λ in erg s⁻¹ cm⁻² Å⁻¹ on ascending vacuum wavelengths
  (:func:`read_sonora`);
* ``"psg"``: NASA PSG transmittance files with one column per molecule
  (:func:`read_psg`);
* ``"muler"``: the templates muler ships; ``"two-column"``: any text/CSV table.
"""

from __future__ import annotations

import contextlib
import gzip
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

from .observations import what_file

__all__ = [
    "Template",
    "TEMPLATE_KINDS",
    "MULER_TEMPLATES",
    "read_phoenix_dat",
    "read_phoenix_fits",
    "read_muler_template",
    "read_two_column",
    "read_sonora",
    "read_psg",
    "read_template",
    "SONORA_MODELS",
    "FLAM_UNIT",
    "TRANSMISSION_TOLERANCE",
]

#: What a template's second array means: stellar flux, telluric transmission, or unknown.
TEMPLATE_KINDS = ("stellar", "telluric", "generic")
_FORMATS = (
    "muler",
    "phoenix-fits",
    "phoenix-dat",
    "sonora-bobcat",
    "sonora-diamondback",
    "sonora-elfowl",
    "psg",
    "two-column",
)
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
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a template file")
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
    _refuse_binary(path)
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


def _muler(name, *, sort, wavelength_range, column=None):
    entry = _muler_entry(name)
    if column is not None and entry.wavelength_column != "Wave/freq":
        raise TypeError(f"column= applies only to muler's PSG template, not {entry.filename}")
    if entry.wavelength_column == "Wave/freq":  # PSG: its own reader checks header and values
        column = entry.value_column if column is None else column
        wavelength, columns, psg_meta = _psg(
            entry.filename, column, sort=sort, wavelength_range=wavelength_range
        )
        meta = {
            "source": psg_meta["source"],
            "format": "muler",
            "flux_unit": "",
            "description": entry.description,
            "column": column,
            "columns": psg_meta["columns"],
        }
        return wavelength, columns[column], meta, entry.kind
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


# --------------------------------------------------------------------------- Sonora

#: F_λ as the Sonora readers return it: erg s⁻¹ cm⁻² Å⁻¹.
FLAM_UNIT = u.erg / (u.s * u.cm**2 * u.AA)


@dataclass(frozen=True)
class _SonoraModel:
    name: str
    reference: str
    layout: str
    wavelength_unit: str
    flux_unit: str
    description: str


#: The public Sonora grids: how their spectra ship and in which units.
SONORA_MODELS = {
    "bobcat": _SonoraModel(
        name="bobcat",
        reference="Marley et al. 2021, ApJ 920, 85; zenodo.org/records/5063476",
        layout="text",
        wavelength_unit="micron",
        flux_unit="erg / (cm2 s Hz)",
        description=(
            "text files sp_t<Teff>g<g>nc_m<[M/H]> (often gzipped): two header lines (the "
            "model parameters, then 'microns  Flux (erg/cm^2/s/Hz)'), wavelength in µm "
            "descending, F_ν in erg s⁻¹ cm⁻² Hz⁻¹ at the surface"
        ),
    ),
    "diamondback": _SonoraModel(
        name="diamondback",
        reference="Morley et al. 2024, arXiv:2402.00758; zenodo.org/records/12735103",
        layout="text",
        wavelength_unit="micron",
        flux_unit="W / (m2 m)",
        description=(
            "text files t<Teff>g<g>f<fsed>_m<[M/H]>_co<C/O>.spec: text header lines (not "
            "'#'), wavelength in µm descending, F_λ in W m⁻² m⁻¹ at the surface"
        ),
    ),
    "elfowl": _SonoraModel(
        name="elfowl",
        reference="Mukherjee et al. 2024, ApJ 963, 73; zenodo.org/records/10385987",
        layout="netcdf",
        wavelength_unit="micron",
        flux_unit="erg / (cm2 s cm)",
        description=(
            "netCDF files (xarray datasets) with variables 'wavelength' (µm) and 'flux' "
            "(F_λ in erg s⁻¹ cm⁻² cm⁻¹)"
        ),
    ),
}
_SONORA_FORMATS = {f"sonora-{name}": name for name in SONORA_MODELS}

# How Sonora headers spell units, normalised to astropy names.
_WAVELENGTH_WORDS = {
    "micron": "micron",
    "microns": "micron",
    "um": "micron",
    "µm": "micron",
    "μm": "micron",
    "mum": "micron",
    "nm": "nm",
    "angstrom": "Angstrom",
    "angstroms": "Angstrom",
    "a": "Angstrom",
    "aa": "Angstrom",
    "å": "Angstrom",
    "cm": "cm",
    "m": "m",
}
_UNIT_ROW_KEYWORDS = re.compile(
    r"flux|wave|lambda|micron|\bum\b|µm|μm|angstrom|\bnm\b|erg|watt|w\s*/\s*m", re.IGNORECASE
)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_GZIP_SIGNATURE = b"\x1f\x8b"


def _refuse_binary(path: Path) -> None:
    """A ValueError saying what a binary file is (a PNG, a FITS file, …) before it is
    read as text (where it would fail on a column count or a number that says nothing)."""
    with open(path, "rb") as stream:
        head = stream.read(512)
    what = what_file(head)
    if what.startswith("a text file"):
        return
    if b"\0" in head or not what.startswith("a binary"):
        raise ValueError(
            f"{path} is {what}, not a text template; give a two-column text table "
            "(wavelength, flux), a PHOENIX .dat or .fits file, a Sonora or PSG file"
        )


def _text_lines(path: Path) -> list[str]:
    """All lines of a text file, gunzipped when it is a gzip file (whatever its name)."""
    with open(path, "rb") as stream:
        signature = stream.read(2)
    if signature != _GZIP_SIGNATURE:
        _refuse_binary(path)
    opener = gzip.open if signature == _GZIP_SIGNATURE else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as stream:
            return stream.read().splitlines()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: could not read it as text: {error}") from None


def _bracketed(text: str) -> str | None:
    match = re.search(r"[(\[]([^)\]]*)[)\]]", text)
    return match.group(1).strip() if match else None


def _wavelength_unit_from_label(label: str, source, row: str) -> str | None:
    """The length unit a column label names (None if it names none)."""
    inner = _bracketed(label)
    text = inner if inner is not None else label
    words = [
        word
        for word in re.split(r"[\s,;:=]+", text.strip().lower())
        if word and word not in ("wavelength", "wavelengths", "wave", "lambda", "vacuum", "in")
    ]
    if not words:
        return None
    if len(words) == 1 and words[0] in _WAVELENGTH_WORDS:
        return _WAVELENGTH_WORDS[words[0]]
    raise ValueError(
        f"{source}: unrecognised wavelength unit {' '.join(words)!r} in the header row {row!r}; "
        f"expected one of {sorted(set(_WAVELENGTH_WORDS.values()))} (e.g. 'microns')"
    )


def _flux_unit_from_label(label: str, source, row: str) -> u.UnitBase | None:
    """The F_ν or F_λ unit a column label names (None if it names none)."""
    inner = _bracketed(label)
    text = (inner if inner is not None else label).strip()
    if not text:
        return None
    return _flux_unit(text, source, f"the header row {row!r}")


def _flux_unit(text: str, source, where: str) -> u.UnitBase:
    """Parse a flux-density unit as model files write it (``erg/cm^2/s/Hz``, ``Watt/m2/m``,
    ``erg/cm**2/s/cm``); only F_ν and F_λ (energy) units are accepted."""
    cleaned = re.sub(r"\bwatts?\b", "W", text.strip(), flags=re.IGNORECASE)
    cleaned = cleaned.replace("**", "").replace("^", "").replace(" ", "")
    cleaned = re.sub(r"(?i)\bmicrons?\b", "micron", cleaned)
    unit = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)  # several slashes parse, with a warning
        try:
            unit = u.Unit(cleaned)
        except (ValueError, TypeError):
            unit = None
    energy_density = unit is not None and (
        unit.is_equivalent(u.erg / (u.s * u.cm**2 * u.Hz))
        or unit.is_equivalent(u.erg / (u.s * u.cm**2 * u.AA))
    )
    if not energy_density:
        raise ValueError(
            f"{source}: unrecognised flux unit {text!r} in {where}; expected a flux density "
            "per frequency (F_ν, e.g. 'erg/cm^2/s/Hz') or per wavelength (F_λ, e.g. "
            "'W/m2/m', 'erg/cm^2/s/cm')"
        )
    return unit


def _units_from_header(header: list[str], model: _SonoraModel, source):
    """(wavelength unit, flux unit, where they came from) from a Sonora text header.

    The unit row is the last header line that names a wavelength or flux column (Bobcat:
    ``microns  Flux (erg/cm^2/s/Hz)``); a unit it names must be one the reader knows. A
    header without a unit row takes the model's published units.
    """
    rows = [line.strip() for line in header if _UNIT_ROW_KEYWORDS.search(line)]
    if not rows:
        return model.wavelength_unit, u.Unit(model.flux_unit), "published default"
    row = rows[-1]
    found = re.search(r"\bflux\b", row, flags=re.IGNORECASE)
    if found:
        wave_label, flux_label = row[: found.start()], row[found.end() :]
    else:
        tokens = row.split()
        if len(tokens) != 2:
            raise ValueError(
                f"{source}: unrecognised header row {row!r}: expected the wavelength and flux "
                "column labels, e.g. 'microns  Flux (erg/cm^2/s/Hz)'"
            )
        wave_label, flux_label = tokens
    wavelength_unit = _wavelength_unit_from_label(wave_label, source, row)
    flux_unit = _flux_unit_from_label(flux_label, source, row)
    return (
        wavelength_unit or model.wavelength_unit,
        flux_unit if flux_unit is not None else u.Unit(model.flux_unit),
        "header",
    )


def _sonora_text(path: Path, model: _SonoraModel):
    """Header lines, wavelength, flux, units of a Sonora text spectrum."""
    lines = _text_lines(path)
    header: list[str] = []
    start = None
    for number, line in enumerate(lines):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) == 2 and all(_is_number(token) for token in tokens):
            start = number
            break
        header.append(line)
    if start is None:
        raise ValueError(
            f"{path}: no data rows (two numbers: wavelength and flux) found in this "
            f"Sonora {model.name} file"
        )
    data_lines = [line.replace("D", "E").replace("d", "e") for line in lines[start:]]
    try:
        table = np.loadtxt(data_lines, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise ValueError(
            f"{path}: could not read the two numeric columns after the "
            f"{len(header)}-line header: {error}"
        ) from None
    if table.shape[1] != 2:
        raise ValueError(f"{path}: expected 2 data columns, found {table.shape[1]}")
    wavelength_unit, flux_unit, units_from = _units_from_header(header, model, path)
    return header, table[:, 0], table[:, 1], wavelength_unit, flux_unit, units_from


def _netcdf_variables(path: Path, names: tuple[str, ...]):
    """``{name: (values, units attribute or None)}`` from a NetCDF3 or NetCDF4/HDF5 file."""
    with open(path, "rb") as stream:
        signature = stream.read(8)
    out = {}
    if signature[:3] == b"CDF":
        from scipy.io import netcdf_file

        with netcdf_file(path, "r", mmap=False) as dataset:
            available = sorted(dataset.variables)
            for name in names:
                if name not in dataset.variables:
                    raise ValueError(
                        f"{path}: no variable {name!r} in this netCDF file; it has {available}"
                    )
                variable = dataset.variables[name]
                units = getattr(variable, "units", None)
                out[name] = (np.array(variable.data, dtype=np.float64), units)
    elif signature == _HDF5_SIGNATURE:
        try:
            import h5py
        except ImportError:
            raise ImportError(
                f"{path} is a NetCDF4 (HDF5) file; reading it needs the optional package "
                "h5py (pip install h5py), which is not installed. Alternatively convert it "
                "to NetCDF3 elsewhere, e.g. xarray.open_dataset(path).to_netcdf(new_path, "
                "format='NETCDF3_64BIT')"
            ) from None
        with h5py.File(path, "r") as dataset:
            available = sorted(dataset.keys())
            for name in names:
                if name not in dataset:
                    raise ValueError(
                        f"{path}: no variable {name!r} in this netCDF file; it has {available}"
                    )
                variable = dataset[name]
                out[name] = (
                    np.array(variable[()], dtype=np.float64),
                    variable.attrs.get("units"),
                )
    else:
        raise ValueError(
            f"{path} is not a netCDF file (it starts with neither the NetCDF3 'CDF' nor the "
            "HDF5 signature); Sonora Elf Owl spectra ship as .nc files"
        )
    return {
        name: (values.ravel(), units.decode() if isinstance(units, bytes) else units)
        for name, (values, units) in out.items()
    }


def _sonora_netcdf(path: Path, model: _SonoraModel):
    variables = _netcdf_variables(path, ("wavelength", "flux"))
    wavelength, wave_units = variables["wavelength"]
    flux, flux_units = variables["flux"]
    if wavelength.size != flux.size:
        raise ValueError(
            f"{path}: 'wavelength' has {wavelength.size} values but 'flux' has {flux.size}"
        )
    units_from = "published default"
    wavelength_unit = model.wavelength_unit
    if wave_units:
        units_from = "file attributes"
        wavelength_unit = (
            _wavelength_unit_from_label(wave_units, path, f"units={wave_units!r} of 'wavelength'")
            or model.wavelength_unit
        )
    flux_unit = u.Unit(model.flux_unit)
    if flux_units:
        units_from = "file attributes"
        flux_unit = _flux_unit(flux_units, path, f"the units attribute of 'flux' ({flux_units!r})")
    return [], wavelength, flux, wavelength_unit, flux_unit, units_from


def _one_direction(wavelength: np.ndarray, flux: np.ndarray, source, sort: bool):
    """Ascending order for a grid written in either direction; a mixed grid is an error."""
    steps = np.diff(wavelength)
    if steps.size and np.all(steps < 0):
        return wavelength[::-1].copy(), flux[::-1].copy()
    if sort or np.all(steps > 0):
        return wavelength, flux
    direction = np.sign(steps)
    turn = int(np.flatnonzero(direction != direction[0])[0])  # steps[turn] goes the other way
    raise ValueError(
        f"{source}: wavelengths are neither strictly descending nor strictly ascending: they "
        f"run {'up' if direction[0] > 0 else 'down'} from the first row, then step from "
        f"{wavelength[turn]!r} to {wavelength[turn + 1]!r} (data rows {turn + 1}–{turn + 2}); "
        "a Sonora spectrum runs one way (pass sort=True to sort it anyway)"
    )


_SONORA_NAME_PATTERNS = {
    # Elf Owl: spectra_logzz_2.0_teff_1000.0_grav_178.0_mh_0.0_co_1.0.nc
    "elfowl": re.compile(r"teff_(?P<teff>\d+(?:\.\d*)?)_grav_(?P<gravity>\d+(?:\.\d*)?)"),
    # Bobcat: sp_t1000g1000nc_m0.0; Diamondback: t1000g316f2_m0.0_co1.0.spec
    "text": re.compile(r"(?:^|_)t(?P<teff>\d+(?:\.\d*)?)g(?P<gravity>\d+(?:\.\d*)?)"),
}


def _sonora_name_meta(name: str) -> dict[str, float]:
    for pattern in _SONORA_NAME_PATTERNS.values():
        match = pattern.search(name)
        if match:
            return {
                "teff": float(match.group("teff")),
                "gravity_mks": float(match.group("gravity")),
            }
    return {}


def _sonora(path, model, *, sort, wavelength_range):
    path = _existing_file(path)
    if model is None:
        model = _guess_sonora_model(path)
        if model is None:
            raise ValueError(
                f"{path}: cannot tell which Sonora grid this is from its name; pass "
                f"model= one of {sorted(SONORA_MODELS)}"
            )
    if model not in SONORA_MODELS:
        raise ValueError(f"Sonora model must be one of {sorted(SONORA_MODELS)}, got {model!r}")
    entry = SONORA_MODELS[model]
    reader = _sonora_netcdf if entry.layout == "netcdf" else _sonora_text
    header, wavelength, flux, wavelength_unit, flux_unit, units_from = reader(path, entry)
    wavelength = wavelength * _angstrom_per(wavelength_unit)
    wavelength, flux = _one_direction(wavelength, flux, path, sort)
    wavelength, flux = _checked(wavelength, flux, source=path, sort=sort)
    flux = u.Quantity(flux, flux_unit).to_value(
        FLAM_UNIT, equivalencies=u.spectral_density(wavelength * u.AA)
    )
    wavelength, flux = _cropped(wavelength, flux, wavelength_range, path)
    meta = {
        "source": str(path),
        "format": f"sonora-{model}",
        "flux_unit": FLAM_UNIT.to_string(),
        "file_flux_unit": flux_unit.to_string(),
        "file_wavelength_unit": wavelength_unit,
        "units_from": units_from,
        "medium": "vacuum",
        "header": [line.strip() for line in header],
        "reference": entry.reference,
        **_sonora_name_meta(path.name),
    }
    return wavelength, flux, meta


def _guess_sonora_model(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".nc"):
        return "elfowl"
    if re.match(r"sp_t\d", name):
        return "bobcat"
    if re.match(r"t\d+(\.\d+)?g\d", name) and ".spec" in name:
        return "diamondback"
    return None


def read_sonora(
    path: PathLike,
    model: str | None = None,
    *,
    sort: bool = False,
    wavelength_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a public Sonora brown-dwarf spectrum as F_λ on ascending vacuum wavelengths.

    The three grids ship differently (see :data:`SONORA_MODELS`):

    * **Bobcat** (Marley et al. 2021): text, two header lines (the model parameters, then
      ``microns  Flux (erg/cm^2/s/Hz)``), wavelength in µm *descending*, F_ν in
      erg s⁻¹ cm⁻² Hz⁻¹; gzipped files are read as they are.
    * **Diamondback** (Morley et al. 2024): text ``.spec`` files, text header lines,
      µm descending, F_λ in W m⁻² m⁻¹.
    * **Elf Owl** (Mukherjee et al. 2024): netCDF (xarray) files with ``wavelength`` (µm)
      and ``flux`` (erg s⁻¹ cm⁻² cm⁻¹). NetCDF3 files are read with scipy; NetCDF4/HDF5
      files need the optional package h5py (a clear ImportError says so otherwise).

    Units come from the file where it names them (the header's unit row, or the netCDF
    ``units`` attributes) and from the grid's published units where it does not; a unit
    the reader does not recognise is an error, never a guess. The flux is converted with
    ``F_λ = F_ν c / λ²`` where needed. Sonora wavelengths are vacuum wavelengths.

    Parameters
    ----------
    path : str or os.PathLike
        The spectrum file; no unit.
    model : {"bobcat", "diamondback", "elfowl"}, optional
        Which grid; guessed from the file name when omitted (``sp_t…`` → Bobcat,
        ``t…g….spec`` → Diamondback, ``*.nc`` → Elf Owl).
    sort : bool
        Sort wavelengths that run in both directions instead of raising.
    wavelength_range : (float, float), optional
        Keep only samples within this range, in Å (inclusive).

    Returns
    -------
    wavelength : numpy.ndarray
        Vacuum wavelength in Å (float64, strictly increasing).
    flux : numpy.ndarray
        F_λ in erg s⁻¹ cm⁻² Å⁻¹ at the model's surface (:data:`FLAM_UNIT`; float64).

    Raises
    ------
    ValueError
        Wavelengths that change direction, a unit row or attribute naming a unit that is
        not a length (wavelength) or an F_ν/F_λ (flux), no data rows, non-finite values.
    ImportError
        A NetCDF4/HDF5 Elf Owl file without h5py installed.
    """
    wavelength, flux, _ = _sonora(path, model, sort=sort, wavelength_range=wavelength_range)
    return wavelength, flux


# --------------------------------------------------------------------------- PSG

#: Transmissions may exceed [0, 1] by this much (PSG prints 6 significant digits).
TRANSMISSION_TOLERANCE = 1e-5
_PSG_SPECTRAL_UNITS = {
    "um": u.micron,
    "micron": u.micron,
    "microns": u.micron,
    "nm": u.nm,
    "mm": u.mm,
    "an": u.AA,
    "a": u.AA,
    "angstrom": u.AA,
    "cm-1": u.cm**-1,
    "hz": u.Hz,
    "khz": u.kHz,
    "mhz": u.MHz,
    "ghz": u.GHz,
}


def _psg_path(path_or_name):
    """(a context manager giving the file's path, the source label) for a file or muler name."""
    if isinstance(path_or_name, str) and not Path(path_or_name).expanduser().is_file():
        key = _MULER_ALIASES.get(path_or_name.lower(), path_or_name)
        if key in MULER_TEMPLATES and key.startswith("psg"):
            resource = importlib.resources.files("muler") / "templates" / key
            return importlib.resources.as_file(resource), f"muler/templates/{key}"
    path = _existing_file(path_or_name)
    return contextlib.nullcontext(path), str(path)


def _psg_header(path: Path, source):
    """(column names, spectral unit, header lines) from the '#' lines above PSG data."""
    header = []
    first_data = None
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                header.append(stripped.lstrip("#").strip())
                continue
            first_data = stripped.split()
            break
    if first_data is None:
        raise ValueError(f"{source}: no data rows below the '#' header")
    width = len(first_data)
    names = None
    for line in reversed(header):
        tokens = line.split()
        if tokens and tokens[0].lower().startswith(("wave", "freq")):
            names = tokens
            break
    if names is None:
        raise ValueError(
            f"{source}: no PSG column header ('# Wave/freq Total H2O ...') above the data; "
            "is this a PSG transmittance file?"
        )
    if len(names) != width:
        raise ValueError(
            f"{source}: the header names {len(names)} columns ({' '.join(names)}) but the "
            f"first data row has {width}"
        )
    unit = None
    for line in header:
        match = re.match(r"spectral unit:\s*(.*)$", line, flags=re.IGNORECASE)
        if match:
            bracket = _bracketed(match.group(1))
            key = (bracket if bracket is not None else match.group(1)).strip().lower()
            if key not in _PSG_SPECTRAL_UNITS:
                raise ValueError(
                    f"{source}: unrecognised spectral unit {match.group(1)!r} in the PSG "
                    f"header; known: {sorted(_PSG_SPECTRAL_UNITS)}"
                )
            unit = _PSG_SPECTRAL_UNITS[key]
    if unit is None:
        raise ValueError(
            f"{source}: the PSG header has no '# Spectral unit: ...' line, so the first "
            "column could be a wavelength, a wavenumber or a frequency"
        )
    return names, unit, header


def _psg_table(path: Path, width: int, source) -> np.ndarray:
    try:
        return np.loadtxt(path, comments="#", dtype=np.float64, ndmin=2)
    except ValueError:
        pass
    # find the row that does not fit, for a message that names it
    with open(path, encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            tokens = stripped.split()
            if len(tokens) != width:
                raise ValueError(
                    f"{source}: line {number} has {len(tokens)} values but the header names "
                    f"{width} columns: the columns have different lengths"
                ) from None
            if not all(_is_number(token) for token in tokens):
                raise ValueError(f"{source}: line {number} is not numeric: {stripped!r}") from None
    raise ValueError(f"{source}: could not read the numeric table")  # pragma: no cover


def _checked_transmission(name: str, values: np.ndarray, wavelength: np.ndarray, source):
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"{source}: column {name!r} has {int(bad.sum())} non-finite values, first at "
            f"{wavelength[np.flatnonzero(bad)[0]]:.4f} Å"
        )
    for label, outside, extreme in (
        ("above 1", values > 1 + TRANSMISSION_TOLERANCE, np.argmax(values)),
        ("below 0", values < -TRANSMISSION_TOLERANCE, np.argmin(values)),
    ):
        if outside.any():
            raise ValueError(
                f"{source}: column {name!r} is not a transmission: {int(outside.sum())} values "
                f"{label} beyond rounding ({TRANSMISSION_TOLERANCE:g}), the most extreme "
                f"{values[extreme]:.6g} at {wavelength[extreme]:.4f} Å"
            )
    return np.clip(values, 0.0, 1.0)


def _psg(path_or_name, molecules, *, sort, wavelength_range):
    context, source = _psg_path(path_or_name)
    with context as path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"PSG file not found: {path}")
        names, spectral_unit, header = _psg_header(Path(path), source)
        table = _psg_table(Path(path), len(names), source)
    if table.shape[1] != len(names):
        raise ValueError(
            f"{source}: rows have {table.shape[1]} values but the header names {len(names)} "
            "columns: the columns have different lengths"
        )
    available = names[1:]
    if molecules is None:
        wanted = list(available)
    else:
        wanted = [molecules] if isinstance(molecules, str) else list(molecules)
        missing = [name for name in wanted if name not in available]
        if missing:
            raise ValueError(
                f"{source}: no column {', '.join(map(repr, missing))} in this PSG file; its "
                f"columns are {available}"
            )
        if not wanted:
            raise ValueError(f"{source}: molecules is empty; choose from {available}")
    if spectral_unit.physical_type == "length":
        wavelength = table[:, 0] * _angstrom_per(spectral_unit)
    else:  # a wavenumber or a frequency
        wavelength = u.Quantity(table[:, 0], spectral_unit).to_value(
            u.AA, equivalencies=u.spectral()
        )
    columns = {name: table[:, names.index(name)] for name in wanted}
    steps = np.diff(wavelength)
    order = None
    if steps.size and np.all(steps < 0):  # e.g. an increasing wavenumber axis
        order = np.arange(wavelength.size)[::-1]
    elif sort and not np.all(steps > 0):
        order = np.argsort(wavelength, kind="stable")
    if order is not None:
        wavelength = wavelength[order]
        columns = {name: values[order] for name, values in columns.items()}
    # finite, positive, strictly increasing (unsorted: an error naming sort=True)
    wavelength, _ = _checked(wavelength, next(iter(columns.values())), source=source)
    columns = {
        name: _checked_transmission(name, values, wavelength, source)
        for name, values in columns.items()
    }
    if wavelength_range is not None:
        _, kept = _cropped(
            wavelength, np.arange(wavelength.size, dtype=np.float64), wavelength_range, source
        )
        keep = kept.astype(np.int64)
        wavelength = wavelength[keep]
        columns = {name: values[keep] for name, values in columns.items()}
    meta = {
        "source": source,
        "format": "psg",
        "flux_unit": "",
        "columns": list(available),
        "spectral_unit": spectral_unit.to_string(),
        "header": header,
    }
    return wavelength, columns, meta


def read_psg(
    path_or_name: PathLike = "psg",
    molecules: str | list[str] | tuple[str, ...] | None = None,
    *,
    sort: bool = False,
    wavelength_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read a NASA PSG transmittance file: one transmission per molecule.

    PSG (Villanueva et al. 2018, 2022) writes ``#`` header lines, among them
    ``# Spectral unit: Wavelength [um]`` and the column names
    ``# Wave/freq Total H2O CO2 O3 N2O CO CH4 O2 N2 Rayleigh CIA``, then one row per
    spectral point. The spectral axis may be a wavelength (µm, nm, mm, Å), a wavenumber
    (cm⁻¹) or a frequency (Hz … GHz): it is converted to vacuum wavelength in Å, ascending.

    Parameters
    ----------
    path_or_name : str or os.PathLike
        A PSG file, or muler's packaged one (``"psg"`` or
        ``"psg_trn_r100000_1.4_2.5_um.txt"``, the default); no unit.
    molecules : str or sequence of str, optional
        Columns to return (``"Total"``, ``"H2O"``, …); default: every column.
    sort : bool
        Sort an unsorted spectral axis instead of raising.
    wavelength_range : (float, float), optional
        Keep only samples within this range, in Å (inclusive).

    Returns
    -------
    wavelength : numpy.ndarray
        Vacuum wavelength in Å (float64, strictly increasing).
    transmission : dict of str to numpy.ndarray
        One dimensionless transmission per requested column, in the file's column order
        (a plain dict, so ``transmission["H2O"]`` is an array on ``wavelength``; values
        within rounding of [0, 1] are clipped into it).

    Raises
    ------
    ValueError
        A molecule the file does not have (the message lists its columns), a
        transmission above 1 or below 0 beyond rounding (:data:`TRANSMISSION_TOLERANCE`),
        rows with a different number of values than the header names (columns of
        different lengths), no column header or no spectral unit in the header.
    """
    wavelength, columns, _ = _psg(
        path_or_name, molecules, sort=sort, wavelength_range=wavelength_range
    )
    return wavelength, columns


# --------------------------------------------------------------------------- dispatcher


def _looks_like_psg(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            start = stream.read(2048)
    except OSError:
        return False
    return b"Planetary Spectrum Generator" in start


def _guess_format(path_or_name: PathLike) -> str:
    if isinstance(path_or_name, str):
        key = _MULER_ALIASES.get(path_or_name.lower(), path_or_name)
        if key in MULER_TEMPLATES:
            return "muler"
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a template file")
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
    sonora = _guess_sonora_model(path)
    if sonora is not None:
        return f"sonora-{sonora}"
    if lower.startswith("psg") or _looks_like_psg(path):
        return "psg"
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
    column: str | None = None,
    **table_options: Any,
) -> Template:
    """Read any supported template into a :class:`Template`.

    Parameters
    ----------
    path_or_name : str or os.PathLike
        A file, or the name of a muler template (see :func:`read_muler_template`).
    format : {"muler", "phoenix-fits", "phoenix-dat", "sonora-bobcat", \
"sonora-diamondback", "sonora-elfowl", "psg", "two-column"}, optional
        Reader to use; guessed when omitted: muler names → ``"muler"``; ``.fits`` →
        ``"phoenix-fits"``; ``.dat`` with PHOENIX in the name → ``"phoenix-dat"``
        (micron); Sonora file names (``sp_t…`` → Bobcat, ``t…g….spec`` → Diamondback,
        ``*.nc`` → Elf Owl, see :func:`read_sonora`); a name starting with ``psg`` or a
        file whose header says "Planetary Spectrum Generator" → ``"psg"``
        (:func:`read_psg`); anything else → ``"two-column"``.
    kind : {"stellar", "telluric", "generic"}, optional
        Overrides the guess (muler templates know theirs; PHOENIX and Sonora →
        ``"stellar"``; PSG → ``"telluric"``; tables → ``"generic"``).
    wavelength_unit : str or astropy.units.UnitBase
        Wavelength unit of a ``"two-column"`` table (a length unit).
    wavelength_path : str or os.PathLike, optional
        PHOENIX wavelength file for ``"phoenix-fits"``.
    sort : bool
        Sort unsorted wavelengths instead of raising.
    wavelength_range : (float, float), optional
        Keep only samples within this range, in Å (inclusive).
    column : str, optional
        The PSG column to read (``"Total"``, ``"H2O"``, …) for ``"psg"`` files and muler's
        PSG template; default ``"Total"``.
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
    if column is not None and format not in ("psg", "muler"):
        raise TypeError(f"column= applies to PSG files (format='psg'), not format={format!r}")
    common = {"sort": sort, "wavelength_range": wavelength_range}
    if format == "muler":
        wavelength, flux, meta, guessed_kind = _muler(path_or_name, column=column, **common)
    elif format in _SONORA_FORMATS:
        wavelength, flux, meta = _sonora(path_or_name, _SONORA_FORMATS[format], **common)
        guessed_kind = "stellar"
    elif format == "psg":
        column = "Total" if column is None else column
        wavelength, columns, meta = _psg(path_or_name, column, **common)
        flux = columns[column]
        meta = {**meta, "column": column}
        guessed_kind = "telluric"
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
