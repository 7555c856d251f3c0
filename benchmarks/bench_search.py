"""Speed of the joint RV × v sin i search: pixel averaging of every rolled window.

The search (:func:`blase_specutils.core.search.rv_vsini_search`) broadens the rest-frame
spectrum once per v sin i and rolls it over every RV of the grid (±1000 km/s by
default); each rolled window is averaged into the data pixels. Two forms of that average
are timed in the same run on the same data, with their χ² surfaces compared:

gather (baseline)
    every pixel's fine-grid taps gathered and weighted (``OrderSurface.average`` without
    prefix sums, the form before this benchmark was written);
prefix sums
    two edge taps plus a difference of prefix sums of ``λ · flux`` (four gathers a pixel
    whatever its width in model steps).

Data: the real WASP 69 HPF order (``../shared/data/wasp69``) as the pixel grid and data,
and the PHOENIX 3900 K Z-band spectrum (``../shared/data/phoenix``), divided by a running
maximum as a rough continuum, as the rest-frame model (the model's quality does not
matter for timing; both forms see the same one). The order is repeated ``--orders``
times to mimic an échelle spectrum. Run::

    python benchmarks/bench_search.py [--orders 8] [--repeats 3]

Prints a markdown table: wall time of the whole search per form (minimum of repeats),
the ratio, and the largest relative difference of the two χ² surfaces.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scipy.ndimage import maximum_filter1d

from blase_specutils import datasets
from blase_specutils.astro.adapters import read_table_spectrum
from blase_specutils.astro.templates import read_phoenix_dat
from blase_specutils.core.forward import chebyshev_design
from blase_specutils.core.search import OrderSurface, SearchOrder, rv_vsini_search


def search_order(wavelength, flux, sigma, degree=3):
    mid = 0.5 * (wavelength[1:] + wavelength[:-1])
    edges = np.stack(
        [np.r_[2 * wavelength[0] - mid[0], mid], np.r_[mid, 2 * wavelength[-1] - mid[-1]]], 1
    )
    x = torch.linspace(-1, 1, len(wavelength), dtype=torch.float64)
    weight = np.where(np.isfinite(flux) & np.isfinite(sigma) & (sigma > 0), sigma**-2.0, 0.0)
    return SearchOrder(
        edges, torch.as_tensor(np.nan_to_num(flux)), torch.as_tensor(weight),
        chebyshev_design(x, degree),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=8, help="copies of the order")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    spectrum = read_table_spectrum(datasets.wasp69_path())
    wl = spectrum.spectral_axis.to_value("AA")
    flux = spectrum.flux.value
    sigma = spectrum.uncertainty.array
    scale = np.nanmedian(flux)
    order = search_order(wl, flux / scale, sigma / scale)
    model_wl, model_flux = read_phoenix_dat(datasets.phoenix_path("Z"))
    flat = model_flux / maximum_filter1d(model_flux, 2001)

    def rest_flux(grid: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.interp(grid.numpy(), model_wl, flat))

    kwargs = dict(step_kms=0.5, resolving_power=55000.0, rv_half_width=1000.0)
    forms = {}
    original = OrderSurface.prefix_sums
    for name, patch in (("gather (baseline)", lambda self, b: None), ("prefix sums", original)):
        OrderSurface.prefix_sums = patch
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = rv_vsini_search([order] * args.orders, rest_flux, **kwargs)
            times.append(time.perf_counter() - start)
        forms[name] = (min(times), result)
    OrderSurface.prefix_sums = original

    base_time, base = forms["gather (baseline)"]
    print(f"\n{args.orders} × WASP 69 order ({len(wl)} px), RV ±1000 km/s, "
          f"{len(base.vsini)} v sin i, load {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| form | search s | speed-up | max rel. Δχ² | best RV km/s | best v sin i |")
    print("|---|---|---|---|---|---|")
    for name, (seconds, result) in forms.items():
        diff = np.max(np.abs(result.chi2 - base.chi2) / np.abs(base.chi2))
        print(
            f"| {name} | {seconds:.2f} | {base_time / seconds:.2f}× | {diff:.1e} | "
            f"{result.best_rv:.3f} | {result.best_vsini:.2f} |"
        )


if __name__ == "__main__":
    main()
