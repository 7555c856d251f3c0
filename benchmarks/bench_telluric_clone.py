"""Cloning saturated telluric bands: muler's PSG transmission, before and after.

muler ships NASA PSG's telluric transmittance at R = 100,000 over 1.4–2.5 µm with a
column per molecule (``muler/templates/psg_trn_r100000_1.4_2.5_um.txt``, read here with
:func:`blase_specutils.astro.templates.read_psg`). Over 17,500–18,200 Å the water band
saturates: 45 % of the ``Total`` pixels are below 1 % transmission and everything beyond
~18,000 Å is opaque.

before
    ``clone(template, optical_depth=False)``: what ``clone(template)`` did before the
    optical-depth search (lines found by prominence on the transmission, linear mode
    ∏(1 − aV)).
after
    ``clone(template)``: the default, which for a saturated transmission finds lines on
    the optical depth τ = −ln max(T, e⁻²⁰) and trains the log-flux forest exp(−Σ aV).

Both use the default settings otherwise (prominence 0.01, 300 epochs + one refinement
pass, float32, CPU, one thread). Columns: lines in the clone, wall time of the clone call,
RMS of target − clone at native resolution (transmission units), largest |residual|, and
whether the model has any NaN/inf. Run ``python benchmarks/bench_telluric_clone.py``
(~30 s on two busy cores); ``--bands`` takes other ranges (``lo-hi`` in Å, comma-separated)
and ``--columns`` other PSG columns.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

import blase_specutils as bs
from blase_specutils.astro.templates import read_template


def run(column: str, band: tuple[float, float], optical_depth: bool | None) -> dict:
    template = read_template("psg", column=column, wavelength_range=band)
    started = time.perf_counter()
    result = bs.clone(template, progress=False, optical_depth=optical_depth, device="cpu")
    wall = time.perf_counter() - started
    residual = result.residual
    return {
        "lines": result.n_lines,
        "wall": wall,
        "rms": result.rms,
        "max": float(np.max(np.abs(residual))),
        "finite": bool(np.all(np.isfinite(result.model_flux))),
        "mode": result.forest.mode,
        "saturated": float(np.mean(template.flux < 0.01)),
        "pixels": len(template),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", default="17500-18200", help="lo-hi in Å, comma-separated")
    parser.add_argument("--columns", default="Total,H2O", help="PSG columns, comma-separated")
    args = parser.parse_args(argv)
    bands = [tuple(float(x) for x in band.split("-")) for band in args.bands.split(",")]
    columns = args.columns.split(",")
    print(
        f"# blase_specutils {bs.__version__}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, CPU, 1 thread"
    )
    header = (
        f"{'band (Å)':<13} {'column':<6} {'px':>5} {'T<1%':>5} {'call':<6} {'mode':<6} "
        f"{'lines':>5} {'wall (s)':>8} {'RMS':>7} {'max |res|':>9} {'finite':>6}"
    )
    print(header)
    print("-" * len(header))
    for band in bands:
        for column in columns:
            for label, optical_depth in (("before", False), ("after", None)):
                row = run(column, band, optical_depth)
                print(
                    f"{band[0]:.0f}–{band[1]:.0f}   {column:<6} {row['pixels']:>5} "
                    f"{row['saturated']:>5.0%} {label:<6} {row['mode']:<6} {row['lines']:>5} "
                    f"{row['wall']:>8.1f} {row['rms']:>7.2%} {row['max']:>9.3f} "
                    f"{'yes' if row['finite'] else 'NO':>6}"
                )


if __name__ == "__main__":
    main()
