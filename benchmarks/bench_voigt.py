"""Cost of the exact Voigt against the pseudo-Voigt inside the engine.

Times one training epoch (forward + backward) of a LineForest on the real PHOENIX Z
band lines with ``profile="pseudo_voigt"`` (fused kernel) and ``profile="voigt"``
(Faddeeva, plain autograd over the same sparse windows), on the same layout.

    python benchmarks/bench_voigt.py [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import blase_specutils as bs
from blase_specutils import datasets
from blase_specutils.astro.templates import read_phoenix_dat
from blase_specutils.core.lineforest import LineForest


def _epoch_time(forest, layout, target, repeats, device):
    times = []
    for _ in range(repeats + 1):
        forest.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = torch.mean((forest(layout) - target) ** 2)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wl, fl = read_phoenix_dat(datasets.phoenix_path("Z"))
    seed = bs.clone(wl, fl, teff=3900, epochs=0, progress=False)
    props = seed.forest.line_properties()
    target = torch.as_tensor(seed.target_flux, dtype=torch.float32, device=device)
    rows = []
    for profile in ("pseudo_voigt", "voigt"):
        forest = LineForest(
            props["center"],
            props["amplitude"],
            props["sigma"],
            props["gamma"],
            profile=profile,
            device=device,
        )
        layout = forest.make_layout(wl)
        rows.append(
            (profile, layout.n_pairs, _epoch_time(forest, layout, target, args.repeats, device))
        )
    base = rows[0][2]
    print(
        f"{args.device}, {args.threads} thread(s), {len(props['center'])} lines, {wl.size} px\n"
    )
    print("| profile | line-pixel pairs | epoch (ms) | × pseudo-Voigt |")
    print("|---|---|---|---|")
    for profile, pairs, t in rows:
        print(f"| {profile} | {pairs:,} | {t * 1e3:.1f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
