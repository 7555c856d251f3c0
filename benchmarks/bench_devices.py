"""The same clone and fit on every device and kernel: same answers, and their times.

Clones PHOENIX 3900 K over 8620–8800 Å with each profile and fits the WASP 69 HPF order
with it (default settings), on the CPU (the baseline, in the same run) and, where a CUDA
device is present, with the Triton kernels (the default there) and the PyTorch kernels.

    python benchmarks/bench_devices.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from astropy.io import fits

import blase_specutils as bs
from blase_specutils import datasets
from blase_specutils.astro.templates import read_phoenix_dat
from blase_specutils.core import sparse


def main() -> None:
    wl, fl = read_phoenix_dat(datasets.phoenix_path("Z"))
    sel = (wl > 8620) & (wl < 8800)
    table = fits.getdata(datasets.wasp69_path())
    w, f, s = (np.asarray(table[k], dtype=float) for k in ("wavelength", "flux", "uncertainty"))
    runs = [("cpu", sparse.PSEUDO_VOIGT_KERNEL)]
    if torch.cuda.is_available():
        runs += [("cuda", sparse.PSEUDO_VOIGT_KERNEL), ("cuda", "torch")]
    default = sparse.PSEUDO_VOIGT_KERNEL
    print(
        "| profile | device | kernel | clone s | lines | clone RMS | fit s | RV (km/s) "
        "| v sin i | χ²_red |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for profile in ("pseudo_voigt", "voigt"):
        for device, kernel in runs:
            sparse.PSEUDO_VOIGT_KERNEL = kernel
            used = "triton" if sparse.use_triton(torch.device(device)) else "torch"
            start = time.perf_counter()
            template = bs.clone(
                wl[sel], fl[sel], teff=3900, profile=profile, progress=False, device=device
            )
            cloned = time.perf_counter()
            result = bs.fit(w, f, s, stellar=template, progress=False, device=device)
            fitted = time.perf_counter()
            print(
                f"| {profile} | {device} | {used} | {cloned - start:.2f} | {template.n_lines} | "
                f"{100 * template.rms:.3f} % | {fitted - cloned:.2f} | "
                f"{result.rv.value:.4f} ± {result.rv_uncertainty.value:.4f} | "
                f"{result.vsini.value:.3f} | "
                f"{result.chi2_reduced:.2f} |",
                flush=True,
            )
    sparse.PSEUDO_VOIGT_KERNEL = default


if __name__ == "__main__":
    main()
