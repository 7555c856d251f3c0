"""Bad-input and fault campaign against the public API, files and CLI (issue 16).

Run: ``BLASE_SPECUTILS_DATA=../shared/data MPLBACKEND=Agg python benchmarks/fault_campaign.py``
Options: ``-v`` prints every check; ``-k WORD`` runs only checks whose name has WORD.

Each check is classified as
  CLEAR    a ValueError/TypeError/OSError-family error whose message names the problem
  RIGHT    a right answer (for inputs with a well-defined meaning)
  WARNED   returned a wrong answer with a warning
  SILENT   returned a wrong answer silently
  CRASH    an unhelpful crash (other exception type, or a message not naming the problem)
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import astropy.units as u
import numpy as np
import torch

import blase_specutils as bs
from blase_specutils.testing import observe

VERBOSE = "-v" in sys.argv
ONLY = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else None
GOOD_ERRORS = (ValueError, TypeError, OSError, u.UnitsError)
RESULTS: list[tuple[str, str, str]] = []
TMP = Path(tempfile.mkdtemp(prefix="campaign-"))


def _origin(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    return tb[-1].filename if tb else ""


def check(name, fn, expect="error", words=(), ok=None):
    """Run ``fn``; ``expect`` is "error" (bad input), "ok" (must work) or "either"."""
    if ONLY and ONLY not in name:
        return
    words = (words,) if isinstance(words, str) else tuple(words)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            msg = f"{type(exc).__name__}: {exc}"
            text = re.sub(r"/tmp/campaign-\S+", "<path>", str(exc)).lower()
            named = not words or any(w.lower() in text for w in words)
            ours = "blase_specutils" in _origin(exc) or isinstance(exc, FileNotFoundError)
            if isinstance(exc, GOOD_ERRORS) and named and (ours or words):
                cat = "CLEAR" if expect != "ok" else "CRASH"
            else:
                cat = "CRASH"
            RESULTS.append(
                (cat, name, msg.splitlines()[0][:300] + f"  [{Path(_origin(exc)).name}]")
            )
            return
    notes = "; ".join(
        str(w.message).splitlines()[0][:120]
        for w in caught
        if not issubclass(w.category, DeprecationWarning)
    )
    if expect == "error":
        good = ok is not None and _safe(ok, result)
    else:
        good = ok is None or _safe(ok, result)
    if good:
        cat = "RIGHT"
    else:
        cat = "WARNED" if notes else "SILENT"
    RESULTS.append(
        (
            cat,
            name,
            f"returned {str(result)[:160]!r}" + (f" warnings: {notes[:200]}" if notes else ""),
        )
    )


def _safe(ok, result):
    try:
        return bool(ok(result))
    except Exception as exc:  # noqa: BLE001
        print(f"   (ok() failed: {exc})")
        return False


# ----------------------------------------------------------------------------- data
rng = np.random.default_rng(1)
WL = np.linspace(10000.0, 10050.0, 2000)
FLUX = np.ones_like(WL)
for c in rng.uniform(10002, 10048, 12):
    FLUX *= 1 - 0.5 * rng.uniform(0.2, 1) * np.exp(-0.5 * ((WL - c) / 0.05) ** 2)
RAW = FLUX * (1.0 + 0.001 * (WL - 10000.0))
QUICK = dict(epochs=20, progress=False, refine=0)
CL = bs.clone(WL, RAW, **QUICK)
PIX = np.linspace(10005.0, 10045.0, 600)
OBS = observe(WL, FLUX, PIX, rv=3.0, vsini=5.0, resolving_power=55000, snr=200)
W, F, S = OBS.wavelength, OBS.flux, OBS.uncertainty
FAST = dict(epochs=5, global_epochs=3, progress=False)
BASE = bs.fit(W, F, S, stellar=CL, **FAST)
RV0 = BASE.rv.to_value(u.km / u.s)


def fit(w=W, f=F, s=S, **kw):
    args = {**FAST, "stellar": CL, **kw}
    return bs.fit(w, f, s, **args)


def same_rv(res, tol=0.3):
    return abs(res.rv.to_value(u.km / u.s) - RV0) < tol


def near_rv(res, tol=1.0):
    return abs(res.rv.to_value(u.km / u.s) - 3.0) < tol


def clone(w=WL, f=RAW, **kw):
    return bs.clone(w, f, **{**QUICK, **kw})


def like_clone(res):
    return isinstance(res, bs.CloneResult) and abs(res.n_lines - CL.n_lines) <= 2


# ----------------------------------------------------------------------------- clone
def section_clone():
    bad = RAW.copy()
    bad[100] = np.nan
    check("clone flux NaN", lambda: clone(f=bad), words="nan")
    bad = RAW.copy()
    bad[100] = np.inf
    check("clone flux inf", lambda: clone(f=bad), words=("inf", "nan"))
    w = WL.copy()
    w[5] = np.nan
    check("clone wavelength NaN", lambda: clone(w=w), words="nan")
    perm = rng.permutation(WL.size)
    check("clone unsorted wavelength", lambda: clone(w=WL[perm], f=RAW[perm]), words="sort")
    w = WL.copy()
    w[10] = w[9]
    check("clone duplicated wavelength", lambda: clone(w=w), words="duplic")
    check(
        "clone descending grid",
        lambda: clone(w=WL[::-1], f=RAW[::-1]),
        "either",
        ("sort", "increas", "descend"),
        like_clone,
    )
    hz = (WL * u.AA).to(u.Hz, equivalencies=u.spectral())[::-1]
    check("clone Hz axis increasing", lambda: clone(w=hz, f=RAW[::-1]), "ok", ok=like_clone)
    check("clone nm quantity", lambda: clone(w=WL / 10 * u.nm), "ok", ok=like_clone)
    check("clone km/s axis", lambda: clone(w=WL * u.km / u.s), words=("spectral", "unit"))
    check("clone Jy axis", lambda: clone(w=WL * u.Jy), words=("spectral", "unit"))
    check("clone dimensionless axis", lambda: clone(w=WL * u.one), words=("spectral", "unit"))
    check("clone unitless micron", lambda: clone(w=WL / 1e4), words=("µm", "unit"))
    check("clone flux Jy", lambda: clone(f=RAW * u.Jy), "ok", ok=like_clone)
    check("clone negative flux", lambda: clone(f=RAW - 2), words="negative")
    check(
        "clone flux size mismatch", lambda: clone(f=RAW[:-3]), words=("samples", "size", "length")
    )
    check("clone empty", lambda: clone(w=np.array([]), f=np.array([])), words="empty")
    check("clone 1 pixel", lambda: clone(w=WL[:1], f=RAW[:1]), words=("samples", "pixel"))
    check(
        "clone 2D wavelength",
        lambda: clone(w=np.vstack([WL, WL]), f=np.vstack([RAW, RAW])),
        words="1-d",
    )
    check("clone list of lists flux", lambda: clone(f=[list(RAW)]), words=("1-d", "shape"))
    check(
        "clone integer wavelength",
        lambda: clone(w=np.arange(10000, 12000), f=RAW),
        "either",
        ok=lambda r: isinstance(r, bs.CloneResult),
    )
    check(
        "clone float16 flux",
        lambda: clone(f=RAW.astype(np.float16)),
        "ok",
        ok=lambda r: isinstance(r, bs.CloneResult),
    )
    check("clone complex flux", lambda: clone(f=RAW + 1j * RAW), words=("complex", "real"))
    m = np.ma.masked_array(RAW, mask=np.zeros(RAW.size, bool))
    m[300:320] = np.ma.masked
    m.data[300:320] = 0.0
    check(
        "clone masked-array flux",
        lambda: clone(f=m),
        "either",
        ("mask",),
        ok=lambda r: r.wavelength.size == WL.size - 20,
    )
    check(
        "clone flux all zero", lambda: clone(f=np.zeros_like(RAW)), words=("zero", "flux", "line")
    )
    check("clone flux constant (no lines)", lambda: clone(f=np.ones_like(RAW)), words=("line",))
    for p in (0, 1, -0.1, 2.0, float("nan")):
        check(f"clone prominence={p}", lambda p=p: clone(prominence=p), words="prominence")
    check("clone prominence str", lambda: clone(prominence="0.1"), words="prominence")
    check(
        "clone prominence Quantity",
        lambda: clone(prominence=0.01 * u.one),
        "either",
        "prominence",
        like_clone,
    )
    for e in (-1, 2.5, "10"):
        check(f"clone epochs={e!r}", lambda e=e: clone(epochs=e), words="epochs")
    check(
        "clone epochs=0", lambda: clone(epochs=0), "ok", ok=lambda r: isinstance(r, bs.CloneResult)
    )
    for lr in (0.0, -0.05, float("nan"), float("inf")):
        check(
            f"clone learning_rate={lr}",
            lambda lr=lr: clone(learning_rate=lr),
            words="learning_rate",
        )
    for name, value in [
        ("rtol", -1.0),
        ("rtol", float("nan")),
        ("patience", -1),
        ("patience", 0),
        ("relayout_every", -5),
        ("tolerance", 0.0),
        ("time_limit", -1.0),
        ("time_limit", float("nan")),
        ("max_optical_depth", 0.0),
        ("max_optical_depth", -3.0),
        ("num_threads", 0),
        ("num_threads", -2),
        ("seed", "abc"),
        ("seed", 1.5),
    ]:
        check(f"clone {name}={value!r}", lambda n=name, v=value: clone(**{n: v}), words=name)
    check("clone relayout_every=0 (never)", lambda: clone(relayout_every=0), "ok", ok=like_clone)
    check("clone teff negative", lambda: clone(teff=-3900), words="teff")
    check(
        "clone teff Celsius quantity",
        lambda: clone(teff=3626.85 * u.deg_C),
        "either",
        "teff",
        lambda r: abs(r.meta["teff"] - 3900) < 1,
    )
    check(
        "clone teff in km/s", lambda: clone(teff=3900 * u.km / u.s), words=("teff", "temperature")
    )
    check("clone mode typo", lambda: clone(mode="lin"), words="mode")
    check("clone profile typo", lambda: clone(profile="voight"), words="profile")
    check("clone trainable typo", lambda: clone(trainable=("amplitud",)), words="amplitud")
    check(
        "clone trainable str",
        lambda: clone(trainable="amplitude"),
        "either",
        "trainable",
        lambda r: isinstance(r, bs.CloneResult),
    )
    check("clone optimizer typo", lambda: clone(optimizer="sgd"), words="optimizer")
    check("clone device typo", lambda: clone(device="gpu0"), words="device")
    check("clone dtype float16", lambda: clone(dtype=torch.float16), words="dtype")
    check(
        "clone dtype str",
        lambda: clone(dtype="float64"),
        "either",
        "dtype",
        lambda r: isinstance(r, bs.CloneResult),
    )
    check(
        "clone dtype numpy",
        lambda: clone(dtype=np.float64),
        "either",
        "dtype",
        lambda r: isinstance(r, bs.CloneResult),
    )
    check("clone kwarg typo", lambda: clone(prominance=0.01), words="prominance")
    check("clone refine=-1", lambda: clone(refine=-1), words="refine")
    check("clone flatten='no'", lambda: clone(flatten="no"), words="flatten")
    check(
        "clone narrow 20 px",
        lambda: clone(w=WL[:20], f=RAW[:20]),
        "either",
        ("line", "narrow", "wider", "samples"),
        lambda r: isinstance(r, bs.CloneResult),
    )


# ----------------------------------------------------------------------------- clone files
def section_clone_files():
    out = TMP / "c1.ecsv"
    CL.save(out)
    check("save existing, no overwrite", lambda: CL.save(out), words=("exist", "overwrite"))
    (TMP / "ünï ψ").mkdir()
    check(
        "save unicode path roundtrip",
        lambda: bs.load_clone(CL.save(TMP / "ünï ψ/κλ.ecsv")),
        "ok",
        ok=lambda r: r.n_lines == CL.n_lines,
    )
    ro = TMP / "readonly"
    ro.mkdir()
    os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() != 0:  # root writes anyway
        check(
            "save into read-only dir",
            lambda: CL.save(ro / "x.ecsv"),
            words=("permission", "write", "readonly"),
        )
    (TMP / "afile").write_text("x")
    check(
        "save under a file",
        lambda: CL.save(TMP / "afile" / "x.ecsv"),
        words=("not a folder", "is a file"),
    )
    check(
        "save into missing dir",
        lambda: CL.save(TMP / "nope" / "deeper" / "x.ecsv"),
        "either",
        ("no such", "folder", "director", "exist"),
        lambda p: Path(p).exists(),
    )
    check("save path is a dir", lambda: CL.save(TMP), words=("folder", "director"))
    check(
        "save wrong suffix .fits",
        lambda: CL.save(TMP / "clone.fits"),
        "either",
        ("ecsv", "suffix"),
        lambda p: bs.load_clone(p).n_lines == CL.n_lines,
    )
    check(
        "load_clone missing",
        lambda: bs.load_clone(TMP / "missing.ecsv"),
        words=("no clone", "not found"),
    )
    check("load_clone dir", lambda: bs.load_clone(TMP), words=("folder", "director"))
    png = TMP / "img.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    check("load_clone PNG", lambda: bs.load_clone(png), words=("png", "ecsv", "clone", "image"))
    hpf = next(Path("/work/shared/data/hpf").glob("*.fits"))
    check("load_clone FITS", lambda: bs.load_clone(hpf), words=("fits", "ecsv", "clone"))
    text = out.read_text(encoding="utf-8")
    trunc = TMP / "trunc.ecsv"
    trunc.write_text(text[: len(text) // 2], encoding="utf-8")
    check(
        "load_clone truncated",
        lambda: bs.load_clone(trunc),
        words=("trunc", "checksum", "damaged", "read"),
    )
    empty = TMP / "empty.ecsv"
    empty.write_text("")
    check(
        "load_clone empty file",
        lambda: bs.load_clone(empty),
        words=("empty", "ecsv", "clone", "read"),
    )
    check(
        "load_clone dtype str",
        lambda: bs.load_clone(out, dtype="float64"),
        "either",
        "dtype",
        lambda r: r.forest.dtype == torch.float64 if hasattr(r.forest, "dtype") else True,
    )
    check(
        "load_clone dtype float16", lambda: bs.load_clone(out, dtype=torch.float16), words="dtype"
    )
    check("load_clone device typo", lambda: bs.load_clone(out, device="gpu"), words="device")
    check("load_clone path int", lambda: bs.load_clone(3), words=("path", "int"))
    check("load_clone None", lambda: bs.load_clone(None), words=("path", "none"))
    fitfile = TMP / "fit1.asdf"
    BASE.write(fitfile)
    check(
        "load_clone on a fit file",
        lambda: bs.load_clone(fitfile),
        words=("asdf", "fit", "ecsv", "clone"),
    )


# ----------------------------------------------------------------------------- fit data
def section_fit_data():
    f = F.copy()
    f[50:60] = np.nan
    check("fit flux some NaN", lambda: fit(f=f), "either", ok=same_rv)
    check(
        "fit flux all NaN",
        lambda: fit(f=np.full_like(F, np.nan)),
        words=("nan", "pixel", "masked", "finite"),
    )
    w = W.copy()
    w[3] = np.nan
    check("fit wavelength NaN", lambda: fit(w=w), words="nan")
    perm = rng.permutation(W.size)
    check(
        "fit unsorted wavelength",
        lambda: fit(w=W[perm], f=F[perm], s=S[perm]),
        "either",
        "sort",
        same_rv,
    )
    w = W.copy()
    w[10] = w[9]
    check("fit duplicated wavelength", lambda: fit(w=w), words="duplic")
    check(
        "fit descending wavelength",
        lambda: fit(w=W[::-1], f=F[::-1], s=S[::-1]),
        "either",
        ("sort", "increas", "descend"),
        same_rv,
    )
    hz = (W * u.AA).to(u.Hz, equivalencies=u.spectral())
    check("fit Hz axis", lambda: fit(w=hz), "either", ok=same_rv)
    check("fit km/s axis", lambda: fit(w=W * u.km / u.s), words=("spectral", "unit"))
    check("fit unitless micron", lambda: fit(w=W / 1e4), words=("µm", "unit"))
    check(
        "fit sigma zeros",
        lambda: fit(s=np.zeros_like(S)),
        words=("uncertaint", "σ", "sigma", "masked"),
    )
    check("fit sigma negative", lambda: fit(s=-S), words=("uncertaint", "σ", "sigma", "negative"))
    s = S.copy()
    s[:5] = 0
    check("fit sigma some zero", lambda: fit(s=s), "either", ok=same_rv)
    check(
        "fit sigma tiny 1e-30",
        lambda: fit(s=np.full_like(S, 1e-30)),
        "either",
        ("uncertaint", "sigma", "small", "σ"),
        lambda r: np.isfinite(r.rv.value) and np.isfinite(r.rv_uncertainty.value),
    )
    check(
        "fit sigma all NaN",
        lambda: fit(s=np.full_like(S, np.nan)),
        words=("uncertaint", "nan", "sigma", "σ"),
    )
    s = S.copy()
    s[:5] = np.inf
    check("fit sigma some inf", lambda: fit(s=s), "either", ok=same_rv)
    check(
        "fit sigma shape mismatch",
        lambda: fit(s=S[:-1]),
        words=("uncertaint", "samples", "shape", "length"),
    )
    check(
        "fit flux shape mismatch",
        lambda: fit(f=F[:-1]),
        words=("flux", "samples", "shape", "length"),
    )
    check("fit sigma scalar", lambda: fit(s=0.005), "either", ("uncertaint",), same_rv)
    check("fit mask all False", lambda: fit(mask=np.zeros(W.size, bool)), words=("mask", "pixel"))
    check("fit mask wrong shape", lambda: fit(mask=np.ones(W.size - 4, bool)), words=("mask",))
    check("fit mask int 0/1", lambda: fit(mask=np.ones(W.size, int)), "either", "mask", same_rv)
    check("fit mask index list", lambda: fit(mask=[1, 2, 3, 4]), words="mask")
    check("fit mask float", lambda: fit(mask=np.full(W.size, 0.5)), words="mask")
    m = np.zeros(W.size, bool)
    m[:4] = True
    check("fit mask 4 good px", lambda: fit(mask=m), words=("pixel", "mask", "few"))
    check(
        "fit empty arrays",
        lambda: fit(w=np.array([]), f=np.array([]), s=np.array([])),
        words=("empty", "pixel"),
    )
    check("fit 2 pixels", lambda: fit(w=W[:2], f=F[:2], s=S[:2]), words=("pixel", "samples"))
    check(
        "fit integer flux",
        lambda: fit(f=np.round(F * 1000).astype(int), s=S * 1000),
        "ok",
        ok=same_rv,
    )
    check(
        "fit float16 flux",
        lambda: fit(f=F.astype(np.float16)),
        "either",
        ok=lambda r: same_rv(r, 0.5),
    )
    check("fit complex flux", lambda: fit(f=F + 0j), words=("complex", "real"))
    fm = np.ma.masked_array(F.copy(), mask=np.zeros(F.size, bool))
    fm[100:140] = np.ma.masked
    fm.data[100:140] = 50.0
    check("fit masked-array flux", lambda: fit(f=fm), "either", "mask", same_rv)
    check("fit list-of-floats flux", lambda: fit(w=list(W), f=list(F), s=list(S)), "ok", ok=same_rv)
    check(
        "fit orders count mismatch", lambda: fit(w=[W, W], f=[F], s=[S, S]), words=("order", "flux")
    )
    check(
        "fit 2D flux array",
        lambda: fit(w=np.vstack([W, W]), f=np.vstack([F, F]), s=np.vstack([S, S])),
        "either",
        ("order", "1-d", "shape"),
        same_rv,
    )
    check(
        "fit flux Jy sigma mJy",
        lambda: fit(f=F * u.Jy, s=(S * 1000) * u.mJy),
        "ok",
        ok=lambda r: same_rv(r) and abs(r.rv_uncertainty / BASE.rv_uncertainty - 1) < 0.2,
    )
    check("fit flux Jy sigma km", lambda: fit(f=F * u.Jy, s=S * u.km), words=("unit", "uncertaint"))
    check(
        "fit non-overlapping data",
        lambda: fit(w=W + 500),
        words=("outside", "range", "overlap", "clone"),
    )
    check(
        "fit partial overlap crop",
        lambda: fit(w=np.linspace(10040, 10080, 600), outside="crop"),
        "either",
        ("outside", "range"),
        lambda r: True,
    )
    check("fit flux negative all", lambda: fit(f=-F), words=("negative", "flux"))
    check("fit flux zeros", lambda: fit(f=np.zeros_like(F)), words=("zero", "flux", "pixel"))


# ----------------------------------------------------------------------------- fit settings
def section_fit_settings():
    check("fit rv Quantity km/s", lambda: fit(rv=3 * u.km / u.s), "ok", ok=same_rv)
    check(
        "fit rv Quantity m/s",
        lambda: fit(rv=3000 * u.m / u.s, rv_search=0),
        "either",
        ("rv", "unit"),
        lambda r: near_rv(r),
    )
    check("fit rv Quantity Å", lambda: fit(rv=3 * u.AA), words=("rv", "unit", "velocity"))
    check("fit rv NaN", lambda: fit(rv=float("nan")), words="rv")
    check("fit rv inf", lambda: fit(rv=float("inf")), words="rv")
    check("fit rv > c", lambda: fit(rv=4e5), words=("rv", "light"))
    check("fit rv str", lambda: fit(rv="3"), words="rv")
    for v in (-1.0, float("nan"), 1e6):
        check(f"fit vsini={v}", lambda v=v: fit(vsini=v), words="vsini")
    check("fit vsini Quantity km/s", lambda: fit(vsini=5 * u.km / u.s), "ok", ok=same_rv)
    check(
        "fit vsini Quantity m/s",
        lambda: fit(vsini=5000 * u.m / u.s, free={"rv"}),
        "either",
        ("vsini", "unit"),
        lambda r: abs(r.vsini.to_value(u.km / u.s) - 5) < 0.01,
    )
    for R in (0, -100, float("nan"), float("inf")):
        check(
            f"fit resolving_power={R}",
            lambda R=R: fit(resolving_power=R),
            words=("resolving", "r "),
        )
    check(
        "fit resolving_power=1e12 (user's fixed R)",
        lambda: fit(resolving_power=1e12),
        "either",
        "resolving",
        lambda r: True,
    )
    check(
        "fit resolving_power Quantity",
        lambda: fit(resolving_power=55000 * u.one),
        "either",
        "resolving",
        same_rv,
    )
    for e in (-1, 2.5):
        check(f"fit epochs={e}", lambda e=e: fit(epochs=e), words="epochs")
    check("fit epochs=0", lambda: fit(epochs=0), "ok", ok=same_rv)
    check("fit global_epochs=-3", lambda: fit(global_epochs=-3), words="global_epochs")
    for lr in (0.0, -0.1, float("nan")):
        check(f"fit learning_rate={lr}", lambda lr=lr: fit(learning_rate=lr), words="learning_rate")
    for ld in (1.5, -1.0, float("nan")):
        check(f"fit limb_darkening={ld}", lambda ld=ld: fit(limb_darkening=ld), words="limb")
    check("fit free unknown", lambda: fit(free={"rv", "radial"}), words="radial")
    check("fit free str", lambda: fit(free="rv"), "either", "free", lambda r: True)
    check("fit trainable typo", lambda: fit(trainable=("amplitud",)), words="amplitud")
    for cd in (-1, 100, "foo", 2.5):
        check(
            f"fit continuum_degree={cd!r}",
            lambda cd=cd: fit(continuum_degree=cd),
            words="continuum_degree",
        )
    for cs in (0.0, -1.0, float("nan")):
        check(f"fit clip_sigma={cs}", lambda cs=cs: fit(clip_sigma=cs), words="clip_sigma")
    check("fit outside typo", lambda: fit(outside="cut"), words="outside")
    for st in (0.0, -0.5, float("nan")):
        check(f"fit step_kms={st}", lambda st=st: fit(step_kms=st), words="step_kms")
    check("fit rv_search negative", lambda: fit(rv_search=-10), words="rv_search")
    check("fit rv_search NaN", lambda: fit(rv_search=float("nan")), words="rv_search")
    check("fit vsini_max negative", lambda: fit(vsini_max=-5), words="vsini_max")
    check("fit vsini_max < vsini", lambda: fit(vsini=20, vsini_max=5), words="vsini")
    check("fit vsini_max > c", lambda: fit(vsini_max=4e5), words="vsini_max")
    check("fit progress='no'", lambda: fit(progress="no"), words="progress")
    check("fit seed 1.5", lambda: fit(seed=1.5), words="seed")
    check("fit prior_scale 0", lambda: fit(prior_scale=0), words="prior_scale")
    check("fit prior_weight negative", lambda: fit(prior_weight=-1), words="prior_weight")
    check("fit prior_center negative", lambda: fit(prior_center=-0.1), words="prior_center")
    check(
        "fit prior_center_scaling typo",
        lambda: fit(prior_center_scaling="deep"),
        words="prior_center_scaling",
    )
    check("fit rtol negative", lambda: fit(rtol=-1), words="rtol")
    check("fit dtype float16", lambda: fit(dtype=torch.float16), words="dtype")
    check("fit device typo", lambda: fit(device="tpu"), words="device")
    check("fit kwarg typo", lambda: fit(epoch=3), words="epoch")
    check("fit stellar None", lambda: fit(stellar=None), words="stellar")
    check(
        "fit stellar missing path",
        lambda: fit(stellar=TMP / "none.ecsv"),
        words=("no clone", "not found"),
    )
    png = TMP / "img.png"
    check("fit stellar PNG", lambda: fit(stellar=png), words=("png", "clone", "ecsv", "image"))
    check("fit stellar is a FitResult", lambda: fit(stellar=BASE), words=("stellar", "clone"))
    check("fit telluric=str garbage", lambda: fit(telluric="garbage"), words="garbage")
    check("fit options=dict", lambda: fit(options={"epochs": 3}), words="options")
    check(
        "fit checkpoint under a file",
        lambda: fit(checkpoint=TMP / "afile" / "ck.pt", checkpoint_every=1),
        words=("checkpoint", "folder", "directory"),
    )
    check(
        "fit resume missing",
        lambda: fit(resume=TMP / "nock.pt"),
        words=("nock", "resume", "checkpoint"),
    )
    garbage = TMP / "garbage.pt"
    garbage.write_bytes(os.urandom(300))
    check("fit resume garbage", lambda: fit(resume=garbage), words=("checkpoint",))
    check(
        "fit checkpoint_every 0",
        lambda: fit(checkpoint=TMP / "ck0.pt", checkpoint_every=0),
        words="checkpoint_every",
    )
    check("fit add_lines unitless", lambda: fit(add_lines=[10020.0]), words=("add_lines", "unit"))
    check("fit num_threads 0", lambda: fit(num_threads=0), words="num_threads")


# ----------------------------------------------------------------------------- specutils
def section_specutils():
    from astropy.nddata import InverseVariance, StdDevUncertainty
    from specutils import Spectrum, SpectrumList

    sp = Spectrum(spectral_axis=W * u.AA, flux=F * u.Jy, uncertainty=StdDevUncertainty(S))
    check("accessor fit", lambda: sp.blase.fit(CL, **FAST), "ok", ok=same_rv)
    check(
        "accessor fit kwarg typo", lambda: sp.blase.fit(CL, epoch=3, progress=False), words="epoch"
    )
    spiv = Spectrum(spectral_axis=W * u.AA, flux=F * u.Jy, uncertainty=InverseVariance(1 / S**2))
    check(
        "Spectrum InverseVariance",
        lambda: bs.fit(spiv, stellar=CL, **FAST),
        "ok",
        ok=lambda r: same_rv(r) and abs(r.rv_uncertainty / BASE.rv_uncertainty - 1) < 0.2,
    )
    spm = Spectrum(
        spectral_axis=W * u.AA,
        flux=F * u.Jy,
        uncertainty=StdDevUncertainty(S),
        mask=np.ones(W.size, bool),
    )
    check("Spectrum all masked", lambda: bs.fit(spm, stellar=CL, **FAST), words=("mask", "pixel"))
    sphz = Spectrum(
        spectral_axis=(W * u.AA).to(u.GHz, equivalencies=u.spectral())[::-1],
        flux=F[::-1] * u.Jy,
        uncertainty=StdDevUncertainty(S[::-1]),
    )
    check("Spectrum GHz axis", lambda: bs.fit(sphz, stellar=CL, **FAST), "either", ok=same_rv)
    try:
        spv = Spectrum(spectral_axis=np.linspace(-100, 100, W.size) * u.km / u.s, flux=F * u.Jy)
    except Exception:  # noqa: BLE001
        spv = None
    if spv is not None:
        check(
            "Spectrum velocity axis",
            lambda: bs.fit(spv, stellar=CL, **FAST),
            words=("spectral", "velocity", "unit", "wavelength"),
        )
    check("Spectrum plus separate flux", lambda: bs.fit(sp, F, stellar=CL, **FAST), words="alone")
    check(
        "empty SpectrumList",
        lambda: bs.fit(SpectrumList([]), stellar=CL, **FAST),
        words=("empty", "order", "spectr"),
    )
    sp2 = Spectrum(
        spectral_axis=W * u.AA,
        flux=F * u.Jy,
        uncertainty=StdDevUncertainty(S * 1000 * np.ones_like(S)),
    )
    sp2.uncertainty = StdDevUncertainty(S * 1000 * u.mJy)
    check(
        "Spectrum sigma in mJy",
        lambda: bs.fit(sp2, stellar=CL, **FAST),
        "either",
        ok=lambda r: abs(r.rv_uncertainty / BASE.rv_uncertainty - 1) < 0.2,
    )
    spc = Spectrum(spectral_axis=WL * u.AA, flux=RAW * u.Jy)
    check("accessor clone", lambda: spc.blase.clone(**QUICK), "ok", ok=like_clone)
    check("accessor clone kwarg typo", lambda: spc.blase.clone(epoch=3), words="epoch")
    check(
        "accessor on SpectrumList clone",
        lambda: SpectrumList([spc, spc]).blase.clone(**QUICK),
        words=("one", "order"),
    )


# ----------------------------------------------------------------------------- results
def section_results():
    out = TMP / "fit.asdf"
    BASE.write(out)
    check("write existing no overwrite", lambda: BASE.write(out), words=("exist", "overwrite"))
    check(
        "write under a file",
        lambda: BASE.write(TMP / "afile" / "f.asdf"),
        words=("not a folder", "is a file"),
    )
    check(
        "write into missing dir",
        lambda: BASE.write(TMP / "nope" / "f.asdf"),
        words=("does not exist", "no such"),
    )
    check("write to a dir", lambda: BASE.write(TMP), words=("folder", "director"))
    check(
        "write unicode roundtrip",
        lambda: bs.read_fit(BASE.write(TMP / "ψ fit é.asdf")),
        "ok",
        ok=lambda r: abs(r.rv - BASE.rv) < 1e-9 * u.km / u.s,
    )
    check(
        "write .fits suffix",
        lambda: bs.read_fit(BASE.write(TMP / "f.fits")),
        "either",
        ("asdf", "suffix"),
        lambda r: abs(r.rv - BASE.rv) < 1e-9 * u.km / u.s,
    )
    check(
        "read_fit missing",
        lambda: bs.read_fit(TMP / "nofit.asdf"),
        words=("no fit file", "not found"),
    )
    check("read_fit dir", lambda: bs.read_fit(TMP), words=("folder", "director"))
    check("read_fit PNG", lambda: bs.read_fit(TMP / "img.png"), words=("asdf", "fit", "png"))
    check(
        "read_fit clone ecsv",
        lambda: bs.read_fit(TMP / "c1.ecsv"),
        words=("asdf", "fit", "ecsv", "clone"),
    )
    raw = out.read_bytes()
    t = TMP / "trunc.asdf"
    t.write_bytes(raw[: len(raw) // 2])
    check(
        "read_fit truncated", lambda: bs.read_fit(t), words=("trunc", "damaged", "checksum", "read")
    )
    e = TMP / "empty.asdf"
    e.write_bytes(b"")
    check("read_fit empty", lambda: bs.read_fit(e), words=("empty", "asdf", "fit"))
    check("read_fit None", lambda: bs.read_fit(None), words=("path", "none"))
    check("plot order=99", lambda: BASE.plot(order=99), words="order")
    check("plot order=-1", lambda: BASE.plot(order=-1), "either", "order", lambda ax: True)
    check("plot order='a'", lambda: BASE.plot(order="a"), words="order")
    check(
        "plot region outside",
        lambda: BASE.plot(region=(20000, 20010)),
        words=("region", "outside", "overlap"),
    )
    check(
        "plot region reversed",
        lambda: BASE.plot(region=(10030, 10010)),
        "either",
        "region",
        lambda ax: True,
    )
    check(
        "plot region Quantity nm",
        lambda: BASE.plot(region=(1001.0, 1003.0) * u.nm),
        "ok",
        ok=lambda ax: True,
    )
    check("plot kwarg typo", lambda: BASE.plot(regoin=(10010, 10020)), words="regoin")
    check("line_table ok", lambda: BASE.line_table, "ok", ok=lambda t: len(t) == CL.n_lines)
    loaded = bs.read_fit(out)
    check("loaded fit plot", lambda: loaded.plot(), "ok", ok=lambda ax: True)
    check(
        "loaded fit write roundtrip",
        lambda: bs.read_fit(loaded.write(TMP / "again.asdf")),
        "ok",
        ok=lambda r: abs(r.rv - BASE.rv) < 1e-9 * u.km / u.s,
    )
    check(
        "clone plot region outside",
        lambda: CL.plot(region=(20000, 20010)),
        words=("region", "outside", "overlap"),
    )
    check("clone evaluate NaN", lambda: CL.evaluate(np.array([10010.0, np.nan])), words="nan")
    check(
        "clone evaluate velocity Quantity",
        lambda: CL.evaluate(WL[:50], velocity_kms=3 * u.km / u.s),
        "either",
        ("velocity",),
        lambda r: r.shape == (50,),
    )
    check(
        "clone evaluate velocity m/s",
        lambda: CL.evaluate(WL[:50], velocity_kms=3000 * u.m / u.s),
        "either",
        ("velocity", "unit"),
        lambda r: np.allclose(r, CL.evaluate(WL[:50], velocity_kms=3.0)),
    )
    check(
        "clone to_spectrum NaN",
        lambda: CL.to_spectrum(np.array([10010.0, np.nan]) * u.AA),
        words="nan",
    )


# ---------------------------------------------------------- models / tellurics / templates
def section_models():
    from blase_specutils.astro.models import ExtrinsicModel, LineForestModel

    check(
        "LineForestModel Hz x",
        lambda: LineForestModel(CL)((WL[:20] * u.AA).to(u.Hz, equivalencies=u.spectral())),
        "either",
        ok=lambda r: np.allclose(
            np.asarray(getattr(r, "value", r)),
            np.asarray(
                getattr(
                    LineForestModel(CL)(WL[:20] * u.AA),
                    "value",
                    LineForestModel(CL)(WL[:20] * u.AA),
                )
            ),
            rtol=1e-6,
        ),
    )
    check(
        "LineForestModel NaN x",
        lambda: LineForestModel(CL)(np.array([10010.0, np.nan])),
        words="nan",
    )
    check(
        "LineForestModel km/s x",
        lambda: LineForestModel(CL)(WL[:10] * u.km / u.s),
        words=("spectral", "unit"),
    )
    check(
        "LineForestModel bad source",
        lambda: LineForestModel("nothing"),
        words=("nothing", "clone", "forest"),
    )
    check(
        "ExtrinsicModel R negative",
        lambda: ExtrinsicModel(CL, resolving_power=-5),
        words="resolving",
    )
    check("ExtrinsicModel vsini NaN", lambda: ExtrinsicModel(CL, vsini=float("nan")), words="vsini")
    check(
        "ExtrinsicModel rv m/s",
        lambda: ExtrinsicModel(CL, rv=3000 * u.m / u.s).rv,
        "either",
        ("rv", "unit"),
        lambda p: (
            abs(p.quantity.to_value(u.km / u.s) - 3) < 1e-9
            if p.unit is not None
            else abs(p.value - 3) < 1e-9
        ),
    )
    check("ExtrinsicModel kwarg typo", lambda: ExtrinsicModel(CL, vsin=3), words="vsin")


def section_tellurics():
    from specutils import Spectrum

    sp = Spectrum(spectral_axis=W * u.AA, flux=F * u.Jy)
    check(
        "correct_tellurics no telluric", lambda: bs.correct_tellurics(sp, BASE), words=("telluric",)
    )
    check(
        "correct_tellurics array science",
        lambda: bs.correct_tellurics(F, BASE),
        words=("spectrum", "science"),
    )
    check(
        "correct_tellurics fit=None",
        lambda: bs.correct_tellurics(sp, None),
        words=("telluric_fit", "fit"),
    )


def section_templates():
    from blase_specutils.astro import templates as T

    check("read_template missing", lambda: T.read_template(TMP / "no.dat"), words=("not found",))
    check("read_template dir", lambda: T.read_template(TMP), words=("folder", "director"))
    check("read_template PNG", lambda: T.read_template(TMP / "img.png"), words=("png", "image"))
    e = TMP / "e.txt"
    e.write_text("")
    check(
        "read_template empty",
        lambda: T.read_template(e),
        words=("empty", "no data", "rows", "number"),
    )
    one = TMP / "one.txt"
    one.write_text("\n".join(str(x) for x in WL[:100]))
    check("read_template one column", lambda: T.read_template(one), words=("column",))
    nan = TMP / "nan.txt"
    nan.write_text("\n".join(f"{a} {b}" for a, b in zip(WL[:100], [np.nan] * 100)))
    check("read_template NaN flux", lambda: T.read_template(nan), words=("nan", "finite"))
    desc = TMP / "desc.txt"
    desc.write_text("\n".join(f"{a} {b}" for a, b in zip(WL[::-1], RAW[::-1])))
    check(
        "read_template descending",
        lambda: T.read_template(desc),
        "either",
        ("sort", "increas", "descend"),
        lambda t: np.all(np.diff(t.wavelength.value) > 0),
    )
    mix = TMP / "mix.txt"
    mix.write_text("\n".join(f"{a} {b}" for a, b in zip(WL[:100], RAW[:100])) + "\nfoo bar\n")
    check("read_template garbage row", lambda: T.read_template(mix), words=("row", "line", "foo"))
    check(
        "read_template wavelength_unit bad",
        lambda: T.read_template(desc, wavelength_unit="furlong"),
        words=("furlong", "unit"),
    )
    check(
        "read_template wavelength_unit Jy",
        lambda: T.read_template(desc, wavelength_unit="Jy"),
        words=("jy", "unit", "spectral"),
    )
    check(
        "read_template format typo",
        lambda: T.read_template(desc, format="twocolumn"),
        words=("format", "twocolumn"),
    )
    check(
        "read_template range outside",
        lambda: T.read_template(desc, wavelength_range=(20000, 20010), sort=True),
        words=("range", "outside", "within"),
    )
    check(
        "read_template range reversed",
        lambda: T.read_template(desc, wavelength_range=(10040, 10010), sort=True),
        "either",
        "range",
        lambda t: t.wavelength.size > 0,
    )
    check("read_psg on text", lambda: T.read_psg(desc), words=("psg",))
    check("read_sonora on text", lambda: T.read_sonora(desc), words=("sonora", "model"))
    check(
        "read_template kind typo",
        lambda: T.read_template(desc, kind="star", sort=True),
        words=("kind",),
    )
    check("bs.read_template exists", lambda: bs.read_template, "ok", ok=callable)


# ----------------------------------------------------------------------------- CLI
def cli(*args, expect_rc=2, words=()):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run(
        [sys.executable, "-m", "blase_specutils", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    err = p.stderr.strip()
    if p.returncode == 0:
        return "returned 0: " + (p.stdout.strip().splitlines() or [""])[-1][:200]
    if "Traceback" in err or p.returncode != expect_rc:
        raise RuntimeError(
            f"rc={p.returncode}: {err.splitlines()[-1][:300] if err else ''} "
            f"(traceback={'Traceback' in err})"
        )
    last = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
    msg = last[-1] if last else ""
    if words and not any(w.lower() in msg.lower() for w in words):
        raise RuntimeError(f"rc={p.returncode}: message does not name it: {msg[:300]}")
    raise ValueError(msg[:300])


def section_cli():
    tpl = TMP / "tpl.txt"
    tpl.write_text("\n".join(f"{a} {b}" for a, b in zip(WL, RAW)))
    good = TMP / "cli.ecsv"
    CL.save(good)
    hpf = next(Path("/work/shared/data/hpf").glob("*.fits"))
    check(
        "cli clone missing template",
        lambda: cli("clone", TMP / "nope.dat", "-q"),
        words=("not found", "no data file", "no clone", "no mask file"),
    )
    check(
        "cli clone PNG template",
        lambda: cli("clone", TMP / "img.png", "-q"),
        words=("png", "image"),
    )
    check("cli clone dir template", lambda: cli("clone", TMP, "-q"), words=("folder", "director"))
    check(
        "cli clone bad prominence",
        lambda: cli("clone", tpl, "--prominence", "2", "-q", "-o", TMP / "x.ecsv"),
        words=("prominence",),
    )
    check(
        "cli clone prominence str",
        lambda: cli("clone", tpl, "--prominence", "abc", "-q"),
        words=("prominence",),
    )
    check(
        "cli clone negative epochs",
        lambda: cli("clone", tpl, "--epochs", "-3", "-q", "-o", TMP / "x2.ecsv"),
        words=("epochs",),
    )
    check(
        "cli clone range outside",
        lambda: cli("clone", tpl, "--range", "20000", "20100", "-q", "-o", TMP / "x3.ecsv"),
        words=("range", "outside", "within"),
    )
    check(
        "cli clone range reversed",
        lambda: cli(
            "clone", tpl, "--range", "10040", "10010", "-q", "-o", TMP / "x4.ecsv", "--epochs", "5"
        ),
        "either",
        ("range",),
        lambda r: r.startswith("returned 0"),
    )
    check(
        "cli clone output under a file",
        lambda: cli("clone", tpl, "-q", "--epochs", "5", "-o", TMP / "afile" / "x.ecsv"),
        words=("folder", "directory", "write"),
    )
    check(
        "cli clone output missing dir",
        lambda: cli("clone", tpl, "-q", "--epochs", "5", "-o", TMP / "nodir" / "x.ecsv"),
        "either",
        ("folder", "directory", "exist"),
        lambda r: r.startswith("returned 0"),
    )
    check(
        "cli clone output is a dir",
        lambda: cli("clone", tpl, "-q", "--epochs", "5", "-o", TMP),
        words=("folder", "directory"),
    )
    check(
        "cli clone output exists (CLI overwrites)",
        lambda: cli("clone", tpl, "-q", "--epochs", "5", "-o", TMP / "cli2.ecsv"),
        "ok",
        ok=lambda r: r.startswith("returned 0"),
    )
    check(
        "cli clone teff negative",
        lambda: cli("clone", tpl, "--teff", "-5", "-q", "-o", TMP / "x5.ecsv"),
        words=("teff",),
    )
    check(
        "cli unknown option",
        lambda: cli("clone", tpl, "--prominance", "0.1"),
        words=("prominance",),
    )
    check(
        "cli fit missing data",
        lambda: cli("fit", TMP / "nodata.fits", "--stellar", good, "-q"),
        words=("not found", "no data file", "no clone", "no mask file"),
    )
    check(
        "cli fit PNG data",
        lambda: cli("fit", TMP / "img.png", "--stellar", good, "-q"),
        words=("png", "fits", "image"),
    )
    check(
        "cli fit text data", lambda: cli("fit", tpl, "--stellar", good, "-q"), words=("fits", "tpl")
    )
    check(
        "cli fit dir data",
        lambda: cli("fit", TMP, "--stellar", good, "-q"),
        words=("folder", "director"),
    )
    check(
        "cli fit PNG stellar",
        lambda: cli("fit", hpf, "--stellar", TMP / "img.png", "-q"),
        words=("png", "clone", "ecsv", "image"),
    )
    check(
        "cli fit stellar missing",
        lambda: cli("fit", hpf, "--stellar", TMP / "nost.ecsv", "-q"),
        words=("not found", "no data file", "no clone", "no mask file"),
    )
    far = TMP / "far.ecsv"
    bs.clone(WL + 20000, RAW, **QUICK).save(far)
    check(
        "cli fit non-overlapping",
        lambda: cli("fit", hpf, "--stellar", far, "-q", "--epochs", "2", "-o", TMP / "out"),
        words=("outside", "range", "overlap", "clone"),
    )
    check(
        "cli fit output under a file",
        lambda: cli(
            "fit", hpf, "--stellar", good, "-q", "--epochs", "2", "-o", TMP / "afile" / "out"
        ),
        words=("folder", "directory", "file"),
    )
    check(
        "cli fit bad rv",
        lambda: cli("fit", hpf, "--stellar", good, "--rv", "nan", "-q"),
        words=("rv",),
    )
    check(
        "cli fit bad R",
        lambda: cli("fit", hpf, "--stellar", good, "--resolving-power", "-5", "-q"),
        words=("resolving",),
    )
    check(
        "cli fit trainable typo",
        lambda: cli("fit", hpf, "--stellar", good, "--trainable", "amplitud", "-q"),
        words=("amplitud",),
    )
    check(
        "cli fit resume garbage",
        lambda: cli("fit", hpf, "--stellar", good, "--resume", TMP / "garbage.pt", "-q"),
        words=("checkpoint", "garbage", "outside", "range"),
    )
    check(
        "cli fit mask file missing",
        lambda: cli("fit", hpf, "--stellar", good, "--mask", TMP / "nomask.txt", "-q"),
        words=("not found", "no data file", "no clone", "no mask file"),
    )
    check(
        "cli batch no inputs",
        lambda: cli("batch", "fit"),
        words=("stellar", "input", "required", "argument"),
    )
    check("cli no subcommand", lambda: cli(), words=("usage", "command", "choose", "required"))


def main():
    t0 = time.time()
    for section in (
        section_clone,
        section_clone_files,
        section_fit_data,
        section_fit_settings,
        section_specutils,
        section_results,
        section_models,
        section_tellurics,
        section_templates,
        section_cli,
    ):
        n = len(RESULTS)
        section()
        if VERBOSE:
            for cat, name, msg in RESULTS[n:]:
                print(f"{cat:7s} {name}: {msg}")
    counts = Counter(cat for cat, _, _ in RESULTS)
    print("\n== problems ==")
    for cat, name, msg in RESULTS:
        if cat in ("SILENT", "WARNED", "CRASH"):
            print(f"{cat:7s} {name}: {msg}")
    print(
        f"\n{len(RESULTS)} checks in {time.time() - t0:.0f} s: "
        + ", ".join(
            f"{k} {counts.get(k, 0)}" for k in ("CLEAR", "RIGHT", "WARNED", "SILENT", "CRASH")
        )
    )
    os.chmod(TMP / "readonly", stat.S_IRWXU)


if __name__ == "__main__":
    main()
