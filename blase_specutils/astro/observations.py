"""Observed spectra from files: HPF (muler), IGRINS (muler) and FITS tables, with
one-line errors that say what a wrong file looks like."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

__all__ = ["read_observation", "what_file", "igrins_variance_path", "MAGIC", "one_line"]


MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF", "a PDF document"),
    (b"SIMPLE  =", "a FITS file"),
    (b"#ASDF", "an ASDF file (a saved fit: read it with blase_specutils.read_fit)"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
)

def what_file(head: bytes) -> str:
    """A few words saying what a file looks like from its first bytes."""
    for magic, what in MAGIC:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file"
    return "a text file without the ECSV header ('# %ECSV')"

def igrins_variance_path(path: Path) -> Path | None:
    """The ``.variance.fits`` that muler reads beside an IGRINS ``.spec.fits`` file."""
    match = re.match(r"^(.*)\.spec(?:_a0v)?\.fits$", path.name)
    return None if match is None else path.with_name(f"{match.group(1)}.variance.fits")

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
        One entry per order; vacuum wavelengths in Å. ``meta["order"]`` is the
        file's order number where the reader gives one (IGRINS: the echelle order).

    Raises
    ------
    FileNotFoundError
        No such file, or an IGRINS spectrum without its ``.variance.fits``.
    IsADirectoryError
        A folder instead of a file.
    ValueError
        Not FITS, or a FITS layout none of the readers knows.
    """
    from astropy.io import fits

    from .adapters import read_table_spectrum, spectra_to_arrays

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder; `fit` reads one FITS file (HPF Goldilocks, IGRINS "
            ".spec.fits or a wavelength/flux binary table)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    try:
        with fits.open(path, memmap=False) as hdul:
            instrument = str(hdul[0].header.get("INSTRUME", "")).strip().upper()
            has_table = len(hdul) > 1 and isinstance(hdul[1], (fits.BinTableHDU, fits.TableHDU))
    except OSError as err:
        with path.open("rb") as stream:
            what = what_file(stream.read(64))
        raise ValueError(
            f"{path} is not a FITS file (it looks like {what}); `fit` reads HPF Goldilocks "
            "files, IGRINS .spec.fits files and FITS binary tables with "
            "wavelength/flux/uncertainty columns"
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

            spectra = read_with_muler(HPFSpectrumList, path, "an HPF Goldilocks spectrum")
        elif instrument == "IGRINS" or re.match(r"SDC[HK]_.*\.spec\.fits$", name):
            variance = igrins_variance_path(path)
            if variance is not None and not variance.is_file():
                raise FileNotFoundError(
                    f"{path} is an IGRINS spectrum but its variance file {variance.name} is not "
                    f"beside it in {path.parent}; muler reads the uncertainties from it: copy "
                    "it there"
                )
            from muler.igrins import IGRINSSpectrumList

            spectra = read_with_muler(
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

def read_with_muler(reader, path: Path, what: str):
    """``reader.read(path)``, with muler's bare assertion errors turned into a clear one."""
    try:
        return reader.read(str(path))
    except Exception as error:  # muler raises bare Exception, AssertionError, KeyError, ...
        raise ValueError(
            f"muler could not read {path} as {what} ({type(error).__name__}: "
            f"{one_line(str(error), 200)}); check that it is the pipeline's spectrum file, "
            "not a variance or calibration file"
        ) from error

def one_line(text: str, limit: int | None = None) -> str:
    line = " ".join(str(text).split())
    if limit is not None and len(line) > limit:
        line = line[: limit - 1] + "…"
    return line
