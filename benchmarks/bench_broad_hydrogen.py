"""Cloning the broad hydrogen lines of an A0V star: before and after, in one run.

PHOENIX 10,000 K (muler's ``PHOENIX_10kK_hpf_template.csv``, vacuum, 0.01 Å) over two HPF
orders of HR 3039 (``datasets.hpf_path(0)``) ± 30 Å: order 5 (Paschen 12 and 13, and
the red wing of 14) and order 14 (Paschen δ at 10,052 Å). Each is cloned with the public
``clone(..., teff=10000)`` three ways:

baseline
    ``broad_lines=False``: the behaviour before (the robust continuum, 50 Å windows).
default
    ``broad_lines=None``: broad lines found, so the envelope continuum and windows up to
    the cloned range.
wings
    the default plus ``wing_correction=True`` (the Appendix C.4 factor G trained).

RMS (per cent of the continuum, against the clone's own flattened target) over the whole
range and within ± 30 Å of every Paschen line inside it, the largest residual, the number
of lines (and of broad ones) and the wall time. PHOENIX 3900 K slices of the Y
(10,400–10,600 Å) and Z (8,620–8,800 Å) bands check that a cool star is unchanged (no
broad line is found there, so ``broad_lines=None`` must be the baseline bit for bit, in
about the same time).

Run: ``python benchmarks/bench_broad_hydrogen.py`` (about a minute on one CPU thread).
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
os.environ.setdefault("BLASE_SPECUTILS_DATA", str(HERE.parents[1] / "shared" / "data"))

import blase_specutils as bs  # noqa: E402
from blase_specutils.astro.templates import read_muler_template, read_template  # noqa: E402
from blase_specutils.datasets import hpf_path, phoenix_path  # noqa: E402

#: Rydberg constant of hydrogen (reduced mass), cm⁻¹: vacuum wavenumbers.
RYDBERG_H = 109677.58
HALF_WINDOW = 30.0  # Å around each line
PADDING = 30.0  # Å beyond the order on each side


def paschen(n: int) -> float:
    """Vacuum wavelength of Paschen n → 3, Å."""
    return 1e8 / (RYDBERG_H * (1.0 / 9.0 - 1.0 / n**2))


def hpf_order_ranges(orders) -> dict[int, tuple[float, float]]:
    """Wavelength range of HPF orders in the HR 3039 file (muler), Å."""
    import muler.hpf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spectra = muler.hpf.HPFSpectrumList.read(str(hpf_path(0)))
    out = {}
    for k in orders:
        w = spectra[k].wavelength.to_value("AA")
        out[k] = (float(np.nanmin(w)), float(np.nanmax(w)))
    return out


def rms(values) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def run(wavelength, flux, teff, **kwargs):
    torch.manual_seed(0)
    t0 = time.perf_counter()
    result = bs.clone(wavelength, flux, teff=teff, progress=False, **kwargs)
    return result, time.perf_counter() - t0


def main() -> None:
    torch.set_num_threads(1)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads 1, load {os.getloadavg()[0]:.2f}\n"
    )
    settings = {
        "baseline": {"broad_lines": False},
        "default": {},
        "wings": {"wing_correction": True},
    }
    print("| order | range (Å) | setting | lines | broad | wall (s) | RMS (%) | max (%) | "
          "RMS ± 30 Å per Paschen line (%) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for order, (lo, hi) in hpf_order_ranges((5, 14)).items():
        lo, hi = lo - PADDING, hi + PADDING
        wl, fl = read_muler_template("PHOENIX_10kK_hpf_template.csv", wavelength_range=(lo, hi))
        lines = [(n, paschen(n)) for n in range(5, 25) if lo < paschen(n) < hi]
        for name, kwargs in settings.items():
            result, wall = run(wl, fl, 10000.0, **kwargs)
            res = result.residual
            near = ", ".join(
                f"P{n} {100 * rms(res[np.abs(wl - c) < HALF_WINDOW]):.2f}" for n, c in lines
            )
            print(
                f"| {order} | {lo:.0f}–{hi:.0f} | {name} | {result.n_lines} | "
                f"{result.meta['n_broad_lines']} | {wall:.1f} | {100 * result.rms:.3f} | "
                f"{100 * np.max(np.abs(res)):.2f} | {near} |"
            )
    print()
    print("| PHOENIX 3900 K | setting | lines | broad | wall (s) | RMS (%) |")
    print("|---|---|---|---|---|---|")
    same = {}
    for band, (lo, hi) in (("Y", (10400.0, 10600.0)), ("Z", (8620.0, 8800.0))):
        template = read_template(phoenix_path(band))
        w = np.asarray(template.wavelength)
        f = np.asarray(getattr(template.flux, "value", template.flux))
        keep = (w >= lo) & (w <= hi)
        results = {}
        for name, kwargs in (("baseline", {"broad_lines": False}), ("default", {})):
            result, wall = run(w[keep], f[keep], 3900.0, **kwargs)
            results[name] = result
            print(
                f"| {band} {lo:.0f}–{hi:.0f} | {name} | {result.n_lines} | "
                f"{result.meta['n_broad_lines']} | {wall:.1f} | {100 * result.rms:.3f} |"
            )
        same[band] = np.array_equal(
            results["baseline"].model_flux, results["default"].model_flux
        )
    print(f"\n3900 K default identical to the baseline: {same}")


if __name__ == "__main__":
    main()
