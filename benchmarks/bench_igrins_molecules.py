"""IGRINS H (CPD-57 1131) at the red end of the PHOENIX H sample: no telluric model, PSG's
combined ``Total`` transmission as one clone (one optical-depth scale), and PSG by molecule
(``cloning.clone_molecules``: one scale per molecule).

Usage: ``python benchmarks/bench_igrins_molecules.py [--orders 3] [--epochs 300]``. The
orders whose pixels lie most inside 16,700–17,480 Å (the PHOENIX H sample stops at 17,500 Å;
``outside="crop"`` keeps the rest) are fitted one by one with the PHOENIX 3900 K clone and
the fit's defaults; each row is one order, the three settings measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import blase_specutils as bs
from blase_specutils.cloning import clone_molecules

sys.path.insert(0, str(Path(__file__).parent))
from bench_robustness import igrins_orders, phoenix  # noqa: E402

RED = (16700.0, 17480.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()

    orders = igrins_orders()

    def inside(o):
        w = o.wavelength[o.good]
        return np.mean((w > RED[0]) & (w < RED[1])) if w.size else 0.0

    picked = sorted(orders, key=inside, reverse=True)[: args.orders]
    lo = min(float(o.wavelength[0]) for o in picked) - 30.0
    hi = max(float(o.wavelength[-1]) for o in picked) + 30.0
    t0 = time.perf_counter()
    wl, fl = phoenix("H", max(lo, 15000.0), 17500.0)
    star = bs.clone(wl, fl, teff=3900, progress=False)
    t_star = time.perf_counter() - t0
    t0 = time.perf_counter()
    total = bs.clone(
        *_psg_column("Total", lo, hi), flatten=False, progress=False
    )
    molecules = clone_molecules("psg", wavelength_range=(lo, hi), progress=False)
    t_tell = time.perf_counter() - t0
    print(
        f"Star clone {star.n_lines} lines ({t_star:.0f} s); PSG Total {total.n_lines} lines, "
        f"by molecule {', '.join(f'{k} {v.n_lines}' for k, v in molecules.items())} "
        f"({t_tell:.0f} s); {lo:.0f}–{hi:.0f} Å\n"
    )
    print("| order (Å) | good px | χ²_red, no telluric | χ²_red, PSG Total | "
          "χ²_red, PSG by molecule | scales by molecule | wall (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for o in picked:
        row, walls = [], []
        scales = ""
        for telluric in (None, total, molecules):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = bs.fit(
                    [o.wavelength], [o.flux], [o.uncertainty], mask=[o.good], stellar=star,
                    telluric=telluric, outside="crop", epochs=args.epochs, progress=False,
                )  # fmt: skip
            walls.append(time.perf_counter() - t0)
            row.append(f"{r.chi2_reduced:.2f}")
            if isinstance(telluric, dict):
                scales = ", ".join(
                    f"{k} {v.value:.2f}" for k, v in (r.telluric_scales or {}).items()
                )
        w = o.wavelength[o.good]
        print(
            f"| {w.min():.0f}–{w.max():.0f} | {int(o.good.sum())} | {row[0]} | {row[1]} | "
            f"{row[2]} | {scales} | {' / '.join(f'{x:.0f}' for x in walls)} |",
            flush=True,
        )


def _psg_column(name: str, lo: float, hi: float):
    from blase_specutils.astro.templates import read_psg

    wavelength, columns = read_psg("psg", molecules=[name], wavelength_range=(lo, hi))
    return wavelength, columns[name]


if __name__ == "__main__":
    main()
