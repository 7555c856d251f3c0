"""Example-data registry, mirror and download path (download tested on a loopback server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import shutil
import socket
import threading
from pathlib import Path

import pytest
from astropy.config.paths import get_cache_dir, set_temp_cache
from astropy.utils.data import get_cached_urls, is_url_in_cache

from blase_specutils import datasets

WASP = "wasp69/WASP_69_hpf_stack.fits"
IGRINS_SPEC = "igrins/SDCH_20201202_0059.spec.fits"
IGRINS_VARIANCE = "igrins/SDCH_20201202_0059.variance.fits"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def repo_layout_path(root: Path, name: str) -> Path:
    """Where ``name`` lies under a server root laid out like raw.githubusercontent.com."""
    entry = datasets.REGISTRY[name]
    return root / entry.repo / entry.commit / entry.repo_path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass


@pytest.fixture(scope="module")
def loopback_server(data_dir, tmp_path_factory):
    """A file server on 127.0.0.1 with ``good/`` (real copies) and ``bad/`` (corrupted) trees."""
    root = tmp_path_factory.mktemp("served")
    for name in (WASP, IGRINS_VARIANCE):
        target = repo_layout_path(root / "good", name)
        target.parent.mkdir(parents=True)
        shutil.copyfile(data_dir / name, target)
    corrupted = bytearray((data_dir / WASP).read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF  # one flipped byte in the data section
    bad_target = repo_layout_path(root / "bad", WASP)
    bad_target.parent.mkdir(parents=True)
    bad_target.write_bytes(bytes(corrupted))

    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url():
    """Base URL of a loopback port that nothing listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Point every astropy cache (astropy's and blase_specutils') at a temporary folder."""
    xdg = tmp_path / "xdg-cache"
    (xdg / "blase_specutils").mkdir(parents=True)
    (xdg / "astropy").mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.delenv(datasets.DATA_ENV_VAR, raising=False)
    monkeypatch.delenv(datasets.URL_ENV_VAR, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    astropy_cache = tmp_path / "astropy-cache"
    astropy_cache.mkdir()  # astropy < 7 requires an existing folder
    with set_temp_cache(astropy_cache):
        package_cache = Path(get_cache_dir(rootname="blase_specutils")).resolve()
        # Guard: never let these tests touch the user's real cache.
        assert package_cache.is_relative_to(tmp_path.resolve()), package_cache
        yield package_cache


def test_registry_matches_data_readme_and_real_files(data_dir):
    # The data folder's README lists "<sha256> <folder>/<file>" lines: an independent record.
    if not (data_dir / "README.md").is_file():
        pytest.skip(f"{data_dir} came from the download cache, which holds no README.md")
    readme_text = (data_dir / "README.md").read_text()
    readme = {
        name: digest for digest, name in re.findall(r"^([0-9a-f]{64}) (\S+)$", readme_text, re.M)
    }
    assert len(readme) == 10
    assert datasets.list_files() == sorted(readme)
    for name, entry in datasets.REGISTRY.items():
        assert entry.sha256 == readme[name]
        assert entry.name == name
        assert sha256(data_dir / name) == entry.sha256, name


def test_origin_urls_follow_pinned_commits(monkeypatch):
    monkeypatch.delenv(datasets.URL_ENV_VAR, raising=False)
    assert datasets.url_for(WASP) == (
        "https://raw.githubusercontent.com/gully/blase/"
        "6f6817b0c4095c104a10b2940375fc1e16cb80ca/data/WASP_69_hpf_stack.fits"
    )
    assert datasets.url_for("phoenix/Z_band_test_sample_lte03900-PHOENIX-ACES.dat") == (
        "https://raw.githubusercontent.com/jason-neal/eniric/"
        "fe22c85b9ee521f4a56f901b311885bd647a44f4/data/test_data/"
        "Z_band_test_sample_lte03900-PHOENIX-ACES.dat"
    )
    monkeypatch.setenv(datasets.URL_ENV_VAR, "http://127.0.0.1:9/mirror/")
    assert datasets.url_for(IGRINS_SPEC) == (
        "http://127.0.0.1:9/mirror/OttoStruve/muler_example_data/"
        "3c0445eac43e99d20a3fcc24c2daf255203bda89/IGRINS/01_IGRINS_test_data/"
        "SDCH_20201202_0059.spec.fits"
    )


def test_download_gives_verified_file_under_its_real_name(
    private_cache, loopback_server, closed_port_url, monkeypatch
):
    monkeypatch.setenv(datasets.URL_ENV_VAR, f"{loopback_server}/good")
    url = datasets.url_for(WASP)
    path = datasets.wasp69_path()
    assert path.name == "WASP_69_hpf_stack.fits"
    assert path.resolve().is_relative_to(private_cache)
    assert sha256(path) == datasets.REGISTRY[WASP].sha256
    assert is_url_in_cache(url, pkgname="blase_specutils")

    # A second call needs no network: the verified named copy is reused.
    monkeypatch.setenv(datasets.URL_ENV_VAR, closed_port_url)
    assert datasets.get_path(WASP) == path


def test_corrupted_download_raises_and_leaves_nothing_cached(
    private_cache, loopback_server, monkeypatch
):
    monkeypatch.setenv(datasets.URL_ENV_VAR, f"{loopback_server}/bad")
    url = datasets.url_for(WASP)
    expected = datasets.REGISTRY[WASP].sha256
    with pytest.raises(datasets.ChecksumError, match=re.escape(expected)) as caught:
        datasets.get_path(WASP)
    message = str(caught.value)
    assert WASP in message and url in message
    actual = re.search(r"got ([0-9a-f]{64})", message).group(1)
    assert actual != expected
    assert isinstance(caught.value, ValueError)
    assert not is_url_in_cache(url, pkgname="blase_specutils")
    assert get_cached_urls(pkgname="blase_specutils") == []
    named_copies = private_cache / "files"
    assert not named_copies.exists() or not any(p.is_file() for p in named_copies.rglob("*"))


def test_unreachable_host_names_url_and_mirror_variable(
    private_cache, closed_port_url, monkeypatch
):
    monkeypatch.setenv(datasets.URL_ENV_VAR, closed_port_url)
    url = datasets.url_for(WASP)
    with pytest.raises(datasets.DataUnavailableError, match=re.escape(url)) as caught:
        datasets.get_path(WASP)
    assert isinstance(caught.value, ConnectionError)
    assert datasets.DATA_ENV_VAR in str(caught.value)


def test_missing_remote_file_is_reported(private_cache, loopback_server, monkeypatch):
    monkeypatch.setenv(datasets.URL_ENV_VAR, f"{loopback_server}/good")
    name = "phoenix/Y_band_test_sample_lte03900-PHOENIX-ACES.dat"  # not served
    with pytest.raises(datasets.DataUnavailableError, match="404"):
        datasets.get_path(name)


def test_mirror_is_used_without_network(private_cache, data_dir, closed_port_url, monkeypatch):
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(data_dir))
    monkeypatch.setenv(datasets.URL_ENV_VAR, closed_port_url)
    assert datasets.get_path(WASP) == data_dir / WASP
    y_band = "phoenix/Y_band_test_sample_lte03900-PHOENIX-ACES.dat"
    assert datasets.phoenix_path("Y") == data_dir / y_band
    hpf = [datasets.hpf_path(0), datasets.hpf_path(1)]
    assert all("Goldilocks" in path.name for path in hpf)
    assert hpf[0] != hpf[1]
    spectrum = datasets.igrins_path("K")
    assert spectrum == data_dir / "igrins/SDCK_20201202_0059.spec.fits"
    assert (spectrum.parent / "SDCK_20201202_0059.variance.fits").is_file()


def test_corrupted_mirror_file_raises_and_is_kept(private_cache, data_dir, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "wasp69").mkdir(parents=True)
    damaged = bytearray((data_dir / WASP).read_bytes())
    damaged[-1] ^= 0x01
    (mirror / WASP).write_bytes(bytes(damaged))
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(mirror))
    with pytest.raises(datasets.ChecksumError, match=r"wasp69/WASP_69_hpf_stack\.fits.*mirror"):
        datasets.get_path(WASP)
    assert (mirror / WASP).is_file()  # a user's mirror is never deleted


def test_igrins_spectrum_and_variance_end_up_side_by_side(
    private_cache, data_dir, loopback_server, tmp_path, monkeypatch
):
    # The mirror holds only the spectrum; the variance file has to be downloaded.
    mirror = tmp_path / "partial-mirror"
    (mirror / "igrins").mkdir(parents=True)
    shutil.copyfile(data_dir / IGRINS_SPEC, mirror / IGRINS_SPEC)
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(mirror))
    monkeypatch.setenv(datasets.URL_ENV_VAR, f"{loopback_server}/good")
    spectrum = datasets.igrins_path("H")
    variance = spectrum.parent / "SDCH_20201202_0059.variance.fits"
    assert spectrum.name == "SDCH_20201202_0059.spec.fits"
    assert spectrum.resolve().is_relative_to(private_cache)
    assert sha256(spectrum) == datasets.REGISTRY[IGRINS_SPEC].sha256
    assert sha256(variance) == datasets.REGISTRY[IGRINS_VARIANCE].sha256


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda: datasets.get_path("phoenix/J.dat"), ValueError, "unknown data file.*known files"),
        (lambda: datasets.get_path(3), TypeError, "must be a str"),
        (lambda: datasets.phoenix_path("J"), ValueError, "PHOENIX band"),
        (lambda: datasets.hpf_path(2), ValueError, "HPF file index"),
        (lambda: datasets.hpf_path(True), ValueError, "HPF file index"),
        (lambda: datasets.igrins_path("Z"), ValueError, "IGRINS band"),
    ],
)
def test_bad_requests_are_rejected(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
