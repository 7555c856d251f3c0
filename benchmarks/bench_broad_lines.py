"""HPF A0V single orders with the PHOENIX 10 kK clone: ``broad_lines="keep"`` vs ``"mask"``.

Usage: ``python benchmarks/bench_broad_lines.py WHICH ORDERS`` (WHICH: 0 HR 3039, 1 HR
4829; ORDERS e.g. ``14,19,11``: Paschen δ, γ, ε). Clones of 300 epochs over each order
± 30 Å; prints the clone's line-width percentiles and each fit's RV, v sin i and flags.
"""

import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import blase_specutils as bs
from blase_specutils.astro.templates import read_muler_template

sys.path.insert(0, str(Path(__file__).parent))
from bench_robustness import PHOENIX_10K, TELFIT, hpf_orders  # noqa: E402

which = int(sys.argv[1])
picks = [int(k) for k in sys.argv[2].split(",")]
orders = hpf_orders(which)
for k in picks:
    o = orders[k]
    lo, hi = math.floor(o.wavelength[0]) - 30, math.ceil(o.wavelength[-1]) + 30
    t0 = time.time()
    w, f = read_muler_template(PHOENIX_10K, wavelength_range=(lo, hi))
    star = bs.clone(w, f, teff=10000, progress=False, epochs=300)
    w, f = read_muler_template(TELFIT, wavelength_range=(lo, hi))
    tell = bs.clone(w, f, flatten=False, prominence=0.01, progress=False, epochs=300)
    p = star.forest.line_properties()
    v = 299792.458 * p["fwhm"] / p["center"]
    print(
        f"order {k} {o.wavelength[0]:.0f}-{o.wavelength[-1]:.0f} Å: {star.forest.n_lines} "
        f"lines, FWHM km/s median {np.median(v):.1f}, 90% {np.percentile(v, 90):.1f}, max "
        f"{v.max():.0f}; > 200: {np.sort(v[v > 200]).round(0).tolist()} "
        f"(clones {time.time() - t0:.0f} s)",
        flush=True,
    )
    for h in ("keep", "mask"):
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = bs.fit(
                [o.wavelength], [o.flux], [o.uncertainty], mask=[o.good], stellar=star,
                telluric=tell, progress=False, broad_lines=h,
            )  # fmt: skip
        bl = r.meta.get("broad_lines", {})
        print(
            f"  {h}: RV {r.rv.value:.2f} ± {r.rv_uncertainty.value:.2f}  v sin i "
            f"{r.vsini.value:.1f} ± {r.vsini_uncertainty.value:.1f}  χ²_red "
            f"{r.chi2_reduced:.2f}  flags {sorted(r.flags)}  masked px "
            f"{bl.get('n_masked_pixels')}  narrow lines {bl.get('n_narrow_lines')} "
            f"({time.time() - t0:.0f} s)",
            flush=True,
        )
