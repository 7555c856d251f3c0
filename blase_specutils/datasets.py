"""Example data: real spectra with pinned public origins and checksums.

Every file listed here is real: a published synthetic model (PHOENIX) or a
real telescope observation (HPF, IGRINS, WASP 69 with HPF). Each one is pinned
to a commit of a public repository and to a SHA-256 checksum, so a file found
anywhere (a local mirror or the astropy download cache) is verified before it
is handed out.

How a file is found, in order:

1. a local mirror: if the environment variable ``BLASE_SPECUTILS_DATA`` names a
   folder holding ``<folder>/<file>`` (e.g. ``phoenix/Z_band_...dat``), that file
   is verified and returned where it lies. A variable that names no existing folder
   (a typo, an unmounted disk) raises :class:`DataFolderError` naming it, rather
   than quietly downloading; a folder that lacks one file goes on to steps 2 and 3;
2. a copy under its real file name in this package's cache folder
   (``<cache>/files/<folder>/<file>``, with ``<cache>`` from
   ``astropy.config.paths.get_cache_dir("blase_specutils")``), verified;
3. a download with :func:`astropy.utils.data.download_file` (``cache=True``,
   ``pkgname="blase_specutils"``), verified, then copied to the place of step 2
   so that readers that need real file names (muler) get them.

The download origin is ``https://raw.githubusercontent.com/<repo>/<commit>/<path>``;
the environment variable ``BLASE_SPECUTILS_DATA_URL`` replaces the
``https://raw.githubusercontent.com`` part (a mirror server, or a loopback server
in tests).

Cite the models as their authors ask (PHOENIX: Husser et al. 2013, A&A 553, A6).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import tempfile
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "DATA_ENV_VAR",
    "URL_ENV_VAR",
    "DEFAULT_BASE_URL",
    "ChecksumError",
    "DataUnavailableError",
    "DataFolderError",
    "DataFile",
    "mirror_folder",
    "REGISTRY",
    "list_files",
    "url_for",
    "get_path",
    "phoenix_path",
    "hpf_path",
    "igrins_path",
    "wasp69_path",
]

#: Environment variable naming a local folder laid out like ``shared/data``.
DATA_ENV_VAR = "BLASE_SPECUTILS_DATA"
#: Environment variable replacing :data:`DEFAULT_BASE_URL` for downloads.
URL_ENV_VAR = "BLASE_SPECUTILS_DATA_URL"
#: Host part of every origin URL.
DEFAULT_BASE_URL = "https://raw.githubusercontent.com"

_PKGNAME = "blase_specutils"
_DOWNLOAD_TIMEOUT_S = 60.0


class ChecksumError(ValueError):
    """A data file's SHA-256 checksum differs from the pinned one."""


class DataUnavailableError(ConnectionError):
    """A data file could not be fetched from its origin."""


class DataFolderError(FileNotFoundError):
    """``BLASE_SPECUTILS_DATA`` is set but names no existing folder."""


@dataclass(frozen=True)
class DataFile:
    """One example file: where it comes from and what its bytes must hash to.

    Parameters
    ----------
    folder : str
        Folder of the file in the data layout (``phoenix``, ``hpf``, ``igrins``,
        ``wasp69``); no unit.
    filename : str
        The file's real name; no unit.
    repo : str
        Public GitHub repository of origin, ``owner/name``; no unit.
    commit : str
        40-hex-digit commit of ``repo`` the file is pinned to; no unit.
    repo_path : str
        Path of the file inside ``repo``; no unit.
    sha256 : str
        Hex SHA-256 digest of the file's bytes; no unit.
    description : str
        One line saying what the file holds; no unit.
    """

    folder: str
    filename: str
    repo: str
    commit: str
    repo_path: str
    sha256: str
    description: str

    @property
    def name(self) -> str:
        """Registry key, ``<folder>/<filename>``."""
        return f"{self.folder}/{self.filename}"

    def url(self, base_url: str | None = None) -> str:
        """Origin URL of the file.

        Parameters
        ----------
        base_url : str, optional
            Replaces ``https://raw.githubusercontent.com``; defaults to the value
            of ``BLASE_SPECUTILS_DATA_URL`` or, if unset, the GitHub host.

        Returns
        -------
        str
            ``<base_url>/<repo>/<commit>/<repo_path>``.
        """
        if base_url is None:
            base_url = os.environ.get(URL_ENV_VAR) or DEFAULT_BASE_URL
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{self.repo_path}"


# (repo, commit, folder inside the repo) per data folder, from shared/data/README.md.
_ORIGINS = {
    "phoenix": ("jason-neal/eniric", "fe22c85b9ee521f4a56f901b311885bd647a44f4", "data/test_data"),
    "hpf": ("OttoStruve/muler", "161472957c1d2f09d79adedfe668bd9992aa3fcb", "data/HPF"),
    "igrins": (
        "OttoStruve/muler_example_data",
        "3c0445eac43e99d20a3fcc24c2daf255203bda89",
        "IGRINS/01_IGRINS_test_data",
    ),
    "wasp69": ("gully/blase", "6f6817b0c4095c104a10b2940375fc1e16cb80ca", "data"),
}

_PHOENIX_NOTE = "PHOENIX-ACES-AGSS-COND-2011, Teff 3900 K, log g 4.5, [Fe/H] 0; vacuum micron"
_FILES = (
    (
        "hpf/Goldilocks_20210212T072837_v1.0_0037.spectra.fits",
        "af3d2ba171a28576f52c8cdc29fc58734cf906a0b6d3533a0bd49ac57a9d3170",
        "HPF Goldilocks, A0V telluric standard HR 3039, 2021-02-12, 28 orders x 2048 px",
    ),
    (
        "hpf/Goldilocks_20210517T054403_v1.0_0060.spectra.fits",
        "6e3b40455ed475bae18fb8527e0d76320a93336b353e37aba5455d8ac3b9489d",
        "HPF Goldilocks, A0V telluric standard HR 4829, 2021-05-17, 28 orders x 2048 px",
    ),
    (
        "igrins/SDCH_20201202_0059.spec.fits",
        "0e3ea915ce691e18064e21db8c328a6b94ebdeec00435d230b0767c891ef27c6",
        "IGRINS H band, CPD-57 1131, 2020-12-03, 28 orders x 2048 px (spectrum)",
    ),
    (
        "igrins/SDCH_20201202_0059.variance.fits",
        "c951ceec549fbe97e0ddcad1949edf429ee48970233b4449a426b4ef95d0becb",
        "IGRINS H band, CPD-57 1131, 2020-12-03 (variance)",
    ),
    (
        "igrins/SDCK_20201202_0059.spec.fits",
        "b6e18ec9c0aae898e0c1fa6e450204e986f5522552af84c52c4d2fc2d4d681fb",
        "IGRINS K band, CPD-57 1131, 2020-12-03, 26 orders x 2048 px (spectrum)",
    ),
    (
        "igrins/SDCK_20201202_0059.variance.fits",
        "ca05c714107e14acbc61633fb3b006e4922dfbd98858a798c8471041c5b23e87",
        "IGRINS K band, CPD-57 1131, 2020-12-03 (variance)",
    ),
    (
        "phoenix/H_band_test_sample_lte03900-PHOENIX-ACES.dat",
        "e7995aca72b3cadb943882624b40062d5d5a5dfe19c5116de3e119025b0f8355",
        f"{_PHOENIX_NOTE}, 1.500-1.750 um, 83,333 samples",
    ),
    (
        "phoenix/Y_band_test_sample_lte03900-PHOENIX-ACES.dat",
        "29e1c724ef2fe13b0276a77b7cf9909d86ebe001742657931e2b2a09d3c33aae",
        f"{_PHOENIX_NOTE}, 1.000-1.100 um, 49,999 samples",
    ),
    (
        "phoenix/Z_band_test_sample_lte03900-PHOENIX-ACES.dat",
        "f96c0363ef98586ddbeaeb330897149cfb0f9fb131914dc8449c25a3c42dc579",
        f"{_PHOENIX_NOTE}, 0.830-0.930 um, 100,000 samples",
    ),
    (
        "wasp69/WASP_69_hpf_stack.fits",
        "ecc401230416c6c3bb824647fc5051e721a289d1ef235342fb7467b308ea9f3b",
        "WASP 69 (K5 V) with HPF, one order, 2048 px, continuum-normalised",
    ),
)


def _build_registry() -> Mapping[str, DataFile]:
    registry = {}
    for key, sha256, description in _FILES:
        folder, filename = key.split("/")
        repo, commit, repo_folder = _ORIGINS[folder]
        registry[key] = DataFile(
            folder=folder,
            filename=filename,
            repo=repo,
            commit=commit,
            repo_path=f"{repo_folder}/{filename}",
            sha256=sha256,
            description=description,
        )
    return MappingProxyType(registry)


#: Every example file, keyed by ``<folder>/<filename>`` (read-only mapping).
REGISTRY: Mapping[str, DataFile] = _build_registry()


def list_files() -> list[str]:
    """Names of every example file.

    Returns
    -------
    list of str
        Registry keys ``<folder>/<filename>``, sorted; pass one to :func:`get_path`.
    """
    return sorted(REGISTRY)


def _lookup(name: str) -> DataFile:
    if not isinstance(name, str):
        raise TypeError(f"data file name must be a str, got {type(name).__name__}")
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(list_files())
        raise ValueError(f"unknown data file {name!r}; known files: {known}") from None


def url_for(name: str) -> str:
    """Download URL of an example file (honours ``BLASE_SPECUTILS_DATA_URL``).

    Parameters
    ----------
    name : str
        Registry key ``<folder>/<filename>``; no unit.

    Returns
    -------
    str
        The URL the file is downloaded from.
    """
    return _lookup(name).url()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum_error(entry: DataFile, path: Path, actual: str, where: str) -> ChecksumError:
    return ChecksumError(
        f"checksum mismatch for {entry.name} ({where} {path}): "
        f"expected sha256 {entry.sha256}, got {actual}"
    )


def _named_cache_path(entry: DataFile) -> Path:
    from astropy.config.paths import get_cache_dir

    return Path(get_cache_dir(rootname=_PKGNAME)) / "files" / entry.folder / entry.filename


def mirror_folder() -> Path | None:
    """The local mirror named by ``BLASE_SPECUTILS_DATA``, checked.

    Returns
    -------
    pathlib.Path or None
        The folder, or None when the variable is unset or empty (files are then
        downloaded into the astropy cache).

    Raises
    ------
    DataFolderError
        If the variable is set but names no existing folder.
    """
    mirror = os.environ.get(DATA_ENV_VAR)
    if not mirror:
        return None
    folder = Path(mirror).expanduser()
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise DataFolderError(
            f"{DATA_ENV_VAR} is set to {folder}, but that is {what}; point it at a folder "
            "laid out like shared/data (phoenix/, hpf/, igrins/, wasp69/), or unset it to "
            "download the example files, checksum-verified, into the astropy cache"
        )
    return folder


def _mirror_path(entry: DataFile) -> Path | None:
    folder = mirror_folder()
    if folder is None:
        return None
    candidate = folder / entry.folder / entry.filename
    return candidate if candidate.is_file() else None


def _clear_cached_url(url: str) -> None:
    from astropy.utils.data import clear_download_cache

    kwargs = {}
    if "on_missing" in inspect.signature(clear_download_cache).parameters:
        kwargs["on_missing"] = "ignore"  # astropy >= 8 warns on a missing cache otherwise
    clear_download_cache(url, pkgname=_PKGNAME, **kwargs)


def _download(entry: DataFile, url: str) -> Path:
    from astropy.utils.data import download_file

    try:
        return Path(
            download_file(
                url,
                cache=True,
                show_progress=False,
                timeout=_DOWNLOAD_TIMEOUT_S,
                pkgname=_PKGNAME,
            )
        )
    except (urllib.error.URLError, OSError) as error:  # HTTPError and timeouts included
        if isinstance(error, urllib.error.HTTPError):
            error.close()  # release the response's socket now, not at garbage collection
        mirror = os.environ.get(DATA_ENV_VAR)
        if mirror:
            advice = (
                f"{DATA_ENV_VAR} is set to {mirror}, but that folder has no "
                f"{entry.folder}/{entry.filename}; copy the file there"
            )
        else:
            advice = (
                f"without network access, set the environment variable {DATA_ENV_VAR} "
                f"to a folder holding {entry.folder}/{entry.filename}"
            )
        raise DataUnavailableError(
            f"could not download {entry.name} from {url} ({error}); {advice}"
        ) from error


def _copy_atomically(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".partial-")
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def get_path(name: str) -> Path:
    """Local path of a verified example file, downloading it if needed.

    Parameters
    ----------
    name : str
        Registry key ``<folder>/<filename>`` (see :func:`list_files`); no unit.

    Returns
    -------
    pathlib.Path
        A file whose SHA-256 matches the pinned checksum and whose name is the
        file's real name (muler needs it, e.g. ``Goldilocks`` for HPF).

    Raises
    ------
    ValueError
        If ``name`` is not in the registry.
    ChecksumError
        If the mirrored or downloaded file's bytes differ from the pinned ones
        (a bad download is removed from the cache first).
    DataUnavailableError
        If the file has to be downloaded and its origin cannot be reached.
    DataFolderError
        If ``BLASE_SPECUTILS_DATA`` is set but names no existing folder.
    """
    entry = _lookup(name)

    mirrored = _mirror_path(entry)
    if mirrored is not None:
        actual = _sha256_of(mirrored)
        if actual != entry.sha256:
            raise _checksum_error(entry, mirrored, actual, f"mirror {DATA_ENV_VAR}")
        return mirrored

    named = _named_cache_path(entry)
    if named.is_file():
        if _sha256_of(named) == entry.sha256:
            return named
        named.unlink()  # stale or damaged copy: fetch afresh

    url = entry.url()
    downloaded = _download(entry, url)
    actual = _sha256_of(downloaded)
    if actual != entry.sha256:
        _clear_cached_url(url)
        raise _checksum_error(entry, downloaded, actual, f"downloaded from {url} to")
    _copy_atomically(downloaded, named)
    return named


def _together(names: list[str]) -> list[Path]:
    """Resolve files that a reader needs side by side in one folder."""
    paths = [get_path(name) for name in names]
    if len({path.parent for path in paths}) == 1:
        return paths
    # Some came from the mirror, some from the cache: gather them in the cache folder.
    gathered = []
    for name, path in zip(names, paths):
        named = _named_cache_path(REGISTRY[name])
        if path != named:
            _copy_atomically(path, named)
        gathered.append(named)
    return gathered


_PHOENIX_BANDS = ("Z", "Y", "H")


def phoenix_path(band: str = "Z") -> Path:
    """PHOENIX 3900 K model sample over one band (two columns: micron, flux).

    Parameters
    ----------
    band : {"Z", "Y", "H"}
        ``Z``: 0.830–0.930 µm, 100,000 samples; ``Y``: 1.000–1.100 µm,
        49,999 samples; ``H``: 1.500–1.750 µm, 83,333 samples.

    Returns
    -------
    pathlib.Path
        Path of the verified ``.dat`` file.
    """
    if band not in _PHOENIX_BANDS:
        raise ValueError(f"PHOENIX band must be one of {_PHOENIX_BANDS}, got {band!r}")
    return get_path(f"phoenix/{band}_band_test_sample_lte03900-PHOENIX-ACES.dat")


_HPF_FILES = (
    "hpf/Goldilocks_20210212T072837_v1.0_0037.spectra.fits",
    "hpf/Goldilocks_20210517T054403_v1.0_0060.spectra.fits",
)


def hpf_path(which: int = 0) -> Path:
    """HPF Goldilocks spectrum of an A0V telluric standard.

    Parameters
    ----------
    which : {0, 1}
        0: HR 3039 (2021-02-12); 1: HR 4829 (2021-05-17).

    Returns
    -------
    pathlib.Path
        Path of the verified file; its name keeps ``Goldilocks`` so that
        ``muler.hpf.HPFSpectrumList.read`` recognises it.
    """
    if isinstance(which, bool) or which not in range(len(_HPF_FILES)):
        raise ValueError(f"HPF file index must be 0 or 1, got {which!r}")
    return get_path(_HPF_FILES[which])


_IGRINS_BANDS = {"H": "SDCH_20201202_0059", "K": "SDCK_20201202_0059"}


def igrins_path(band: str = "H") -> Path:
    """IGRINS spectrum of CPD-57 1131, with its variance file beside it.

    Parameters
    ----------
    band : {"H", "K"}
        IGRINS band.

    Returns
    -------
    pathlib.Path
        Path of the verified ``.spec.fits`` file; the matching
        ``.variance.fits`` lies in the same folder, as
        ``muler.igrins.IGRINSSpectrumList.read`` expects.
    """
    if band not in _IGRINS_BANDS:
        raise ValueError(f"IGRINS band must be one of {tuple(_IGRINS_BANDS)}, got {band!r}")
    stem = _IGRINS_BANDS[band]
    spectrum, _variance = _together([f"igrins/{stem}.spec.fits", f"igrins/{stem}.variance.fits"])
    return spectrum


def wasp69_path() -> Path:
    """WASP 69 observed with HPF: one order, 2048 rows (wavelength Å, flux, uncertainty).

    Returns
    -------
    pathlib.Path
        Path of the verified ``WASP_69_hpf_stack.fits`` (a FITS binary table).
    """
    return get_path("wasp69/WASP_69_hpf_stack.fits")
