"""Cost of the exact Voigt against the pseudo-Voigt inside the engine.

Times one training epoch (forward + backward) of a LineForest on the real PHOENIX Z
band lines with ``profile="pseudo_voigt"`` and ``profile="voigt"`` (both fused kernels
over the same sparse windows), on the same layout, once with the default trainable set
(amplitude, σ, γ) and once with the line centres trained too (as ``clone`` does).

    python benchmarks/bench_voigt.py [--device cpu|cuda] [--threads 1] [--clones]

On CUDA it times both kernel choices (``torch``, and ``auto``: the Triton kernels there),
eager and with the epoch captured as a CUDA graph (as ``clone`` and ``fit`` run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import blase_specutils as bs
from blase_specutils import datasets
from blase_specutils.astro.templates import read_phoenix_dat
from blase_specutils.core import sparse
from blase_specutils.core.lineforest import LineForest


def _epoch(forest, layout, target, device):
    forest.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = torch.mean((forest(layout) - target) ** 2)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _graphed_epoch_time(forest, layout, target, repeats):
    """Median time of one forward + backward captured as a CUDA graph and replayed."""

    def step():
        return torch.mean((forest(layout) - target) ** 2).backward()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forest.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    forest.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    times = []
    for _ in range(repeats + 2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def _interleaved_epoch_times(cases, target, repeats, device):
    """Median epoch times of two (forest, layout) cases and the median of their ratios.

    The cases take turns, and the ratio is formed per round (second case over first,
    epochs run back to back), so slow drifts of a shared machine's load cancel in it. The
    first round is a warm-up and is discarded.
    """
    times = [[] for _ in cases]
    for _ in range(repeats + 1):
        for k, (forest, layout) in enumerate(cases):
            times[k].append(_epoch(forest, layout, target, device))
    ratios = [b / a for a, b in zip(times[0][1:], times[1][1:])]
    return (
        statistics.median(times[0][1:]),
        statistics.median(times[1][1:]),
        statistics.median(ratios),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--clones",
        action="store_true",
        help="also run full default clones of the Z and Y bands with both profiles (~1 min)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wl, fl = read_phoenix_dat(datasets.phoenix_path("Z"))
    seed = bs.clone(wl, fl, teff=3900, epochs=0, progress=False)
    props = seed.forest.line_properties()
    target = torch.as_tensor(seed.target_flux, dtype=torch.float32, device=device)
    rows = []
    trainable_sets = {
        "a, σ, γ": ("amplitude", "sigma", "gamma"),
        "a, σ, γ, λc": ("amplitude", "sigma", "gamma", "center"),
    }
    default_kernel = sparse.PSEUDO_VOIGT_KERNEL
    for kernel in ("torch", default_kernel) if device.type == "cuda" else (default_kernel,):
        sparse.PSEUDO_VOIGT_KERNEL = kernel
        name = "triton" if sparse.use_triton(device) else "torch"
        for label, trainable in trainable_sets.items():
            cases = []
            for profile in ("pseudo_voigt", "voigt"):
                forest = LineForest(
                    props["center"],
                    props["amplitude"],
                    props["sigma"],
                    props["gamma"],
                    profile=profile,
                    trainable=trainable,
                    device=device,
                )
                cases.append((forest, forest.make_layout(wl)))
            base, voigt, ratio = _interleaved_epoch_times(cases, target, args.repeats, device)
            for profile, (_, layout), t, r in zip(
                ("pseudo_voigt", "voigt"), cases, (base, voigt), (1.0, ratio)
            ):
                rows.append((name, "eager", label, profile, layout.n_pairs, t, r))
            if device.type == "cuda":
                graphed = [_graphed_epoch_time(*case, target, args.repeats) for case in cases]
                for profile, (_, layout), t in zip(("pseudo_voigt", "voigt"), cases, graphed):
                    ratio = t / graphed[0]
                    rows.append((name, "CUDA graph", label, profile, layout.n_pairs, t, ratio))
    sparse.PSEUDO_VOIGT_KERNEL = default_kernel
    print(
        f"{args.device}, {args.threads} thread(s), {len(props['center'])} lines, {wl.size} px; "
        "× pseudo-Voigt: median over rounds of the paired epoch-time ratio (eager), ratio of "
        "the medians (CUDA graph)\n"
    )
    print(
        "| kernel | mode | trained | profile | line-pixel pairs | median epoch (ms) "
        "| × pseudo-Voigt |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, mode, label, profile, pairs, t, ratio in rows:
        print(
            f"| {name} | {mode} | {label} | {profile} | {pairs:,} | {t * 1e3:.2f} | {ratio:.2f} |"
        )
    if args.clones:
        _full_clones(device)


def _full_clones(device):
    """Default clones (600 epochs, centres trained) of the Z and Y bands, both profiles."""
    print("\nFull clones, `bs.clone(wl, flux, teff=3900, profile=...)`:\n")
    print("| band | profile | lines | wall time (s) | RMS (target − model) |")
    print("|---|---|---|---|---|")
    for band in ("Z", "Y"):
        wl, fl = read_phoenix_dat(datasets.phoenix_path(band))
        for profile in ("pseudo_voigt", "voigt"):
            start = time.perf_counter()
            result = bs.clone(wl, fl, teff=3900, profile=profile, device=device, progress=False)
            wall = time.perf_counter() - start
            rms = float((result.residual**2).mean() ** 0.5)
            print(f"| {band} | {profile} | {result.n_lines:,} | {wall:.1f} | {100 * rms:.3f} % |")


if __name__ == "__main__":
    main()
