"""Per-epoch cost of the clone engine in the paper's setting, and of a one-order fit.

Section ``paper``: ~7,700 lines over 335,000 pixels (the HPF-band setting of the method
paper, §2.1/§2.4), synthetic lines with realistic widths on a 0.0142 Å grid (injected
truth: the point is timing, not science). Times forward + backward + Adam step of
:class:`~blase_specutils.core.lineforest.LineForest` (fused pseudo-Voigt kernel) for
several dtypes and bucket ratios. Baseline row: the same forest evaluated with the
plain-autograd path (``fused=False``) in the same run. On a CUDA device with triton it
also times the fused Triton kernels (:mod:`blase_specutils.core.triton_kernels`, one
kernel per bucket forward and backward), eager and captured as a CUDA graph.

Section ``check``: CPU and the chosen device agree (flux and gradients) on a small forest.

Section ``fit``: epochs per second of the joint stage of :func:`blase_specutils.fit` on the
real WASP 69 HPF order against a PHOENIX Z-band clone.

    python benchmarks/bench_epoch.py --device cpu|cuda [--section all|paper|check|fit]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from blase_specutils.core import sparse, train, triton_kernels
from blase_specutils.core.lineforest import LineForest

DEFAULT_KERNEL = sparse.PSEUDO_VOIGT_KERNEL  # restored after each section that picks one


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_forest(n_lines, n_pixels, device, dtype, seed=0):
    rng = np.random.default_rng(seed)
    wl = 8079.0 * np.exp(np.arange(n_pixels) * (0.0142 / 10000.0))
    centers = np.sort(rng.uniform(wl[0] + 2, wl[-1] - 2, n_lines))
    depth = rng.uniform(0.01, 0.6, n_lines) ** 1.5
    sigma = rng.uniform(0.02, 0.08, n_lines)
    gamma = rng.uniform(0.005, 0.06, n_lines)
    forest = LineForest(centers, depth * 0.1, sigma, gamma, dtype=dtype, device=device)
    return forest, wl


def time_epochs(forest, layout, target, epochs, device, fused=True):
    opt = train.adam([p for p in forest.parameters() if p.requires_grad], 0.01)
    times = []
    for _ in range(epochs + 2):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        flux = torch.exp(forest.log_transmission(layout, fused=fused))
        loss = torch.mean((flux - target) ** 2)
        loss.backward()
        opt.step()
        float(loss.detach())
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def _row(label, dtype, ratio, layout, seconds, digits=2):
    print(
        f"| {label} | {str(dtype)[6:]} | {ratio} | {len(layout.buckets)} | "
        f"{layout.n_pairs:,} | {seconds * 1e3:.{digits}f} |"
    )


def _failed(label, dtype, ratio, err):
    print(
        f"| {label} | {str(dtype)[6:]} | {ratio} | failed: {type(err).__name__}: "
        f"{str(err)[:100]} | | |"
    )


def section_paper(device, epochs):
    print("\n## Paper setting: 7,700 lines over 335,000 px (forward + backward + Adam)\n")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}\n"
    )
    print("| engine | dtype | bucket ratio | buckets | line-pixel pairs | ms / epoch |")
    print("|---|---|---|---|---|---|")
    kernels = ["torch"]
    if device.type == "cuda" and triton_kernels.available(device):
        kernels.append("triton")  # the fused Triton kernels (a few launches per epoch)
    for dtype in (torch.float32, torch.float64):
        forest, wl = synthetic_forest(7700, 335_000, device, dtype)
        with torch.no_grad():
            target = forest(forest.make_layout(wl)) * 0.999
        for kernel in kernels:
            sparse.PSEUDO_VOIGT_KERNEL = kernel
            label = "fused" if kernel == "torch" else "fused Triton"
            for ratio in (2, 4, 8):
                layout = forest.make_layout(wl, bucket_ratio=ratio)
                try:
                    _row(
                        label,
                        dtype,
                        ratio,
                        layout,
                        time_epochs(forest, layout, target, epochs, device),
                    )
                except Exception as err:  # noqa: BLE001 - report and carry on
                    _failed(label, dtype, ratio, err)
            if device.type == "cuda":
                for ratio in (2, 8):
                    layout = forest.make_layout(wl, bucket_ratio=ratio)
                    try:
                        t = time_epochs_graphed(forest, layout, target, epochs)
                        _row(f"{label}, CUDA graph", dtype, ratio, layout, t, 3)
                    except Exception as err:  # noqa: BLE001 - report and carry on
                        _failed(f"{label}, CUDA graph", dtype, ratio, err)
                # Where the time goes (ratio 2, graphed): forward alone, forward + backward,
                # and the whole step with torch's default (foreach) Adam instead of fused.
                layout = forest.make_layout(wl, bucket_ratio=2)
                for phase in ("forward", "forward+backward", "foreach Adam"):
                    try:
                        t = time_epochs_graphed(forest, layout, target, epochs, phase=phase)
                        _row(f"{label}, CUDA graph, {phase}", dtype, 2, layout, t, 3)
                    except Exception as err:  # noqa: BLE001 - report and carry on
                        _failed(f"{label}, CUDA graph, {phase}", dtype, 2, err)
        sparse.PSEUDO_VOIGT_KERNEL = "torch"
        layout = forest.make_layout(wl, bucket_ratio=2)
        t = time_epochs(forest, layout, target, max(3, epochs // 4), device, fused=False)
        _row("autograd (baseline)", dtype, 2, layout, t)
        sparse.PSEUDO_VOIGT_KERNEL = DEFAULT_KERNEL


def time_epochs_graphed(forest, layout, target, epochs, phase="step"):
    """One training step (or a ``phase`` of it) captured as a CUDA graph and replayed.

    ``phase``: "step" (forward, backward, fused Adam as the library trains), "forward",
    "forward+backward", or "foreach Adam" (the whole step with torch's default Adam).
    """
    params = [p for p in forest.parameters() if p.requires_grad]
    if phase == "foreach Adam":
        opt = torch.optim.Adam(params, lr=0.01, capturable=True, foreach=True)
    else:
        opt = train.adam(params, 0.01, capturable=True)

    def step():
        if phase == "forward":
            with torch.no_grad():
                return forest.log_transmission(layout).sum()
        flux = torch.exp(forest.log_transmission(layout))
        loss = torch.mean((flux - target) ** 2)
        loss.backward()
        if phase != "forward+backward":
            opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = step()
    times = []
    for _ in range(epochs + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        graph.replay()
        float(static_loss.detach())
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def section_check(device):
    print("\n## CPU vs device agreement (float64, 200 lines)\n")
    results = {}
    for dev in (torch.device("cpu"), device):
        forest, wl = synthetic_forest(200, 20_000, dev, torch.float64, seed=4)
        forest.set_trainable(("center", "amplitude", "sigma", "gamma"))
        layout = forest.make_layout(wl, bucket_ratio=2)
        flux = forest(layout, 7.5)
        flux.sum().backward()
        results[dev.type] = (
            flux.detach().cpu(),
            [p.grad.detach().cpu() for p in forest.parameters()],
        )
    a, b = results["cpu"], results[device.type]
    print(f"max |Δflux| = {float((a[0] - b[0]).abs().max()):.2e}")
    for name, ga, gb in zip(("center", "ln_a", "ln_sigma", "ln_gamma"), a[1], b[1]):
        rel = float((ga - gb).abs().max() / ga.abs().max().clamp(min=1e-300))
        print(f"max relative Δgrad[{name}] = {rel:.2e}")
    if device.type == "cuda" and triton_kernels.available(device):
        for dtype in (torch.float64, torch.float32):
            try:
                problem = triton_kernels.self_check(device, dtype)
            except Exception as err:  # noqa: BLE001 - a compile error is a finding too
                problem = f"raised {type(err).__name__}: {str(err)[:300]}"
            print(f"Triton self-check ({str(dtype)[6:]}): {problem or 'agrees'}")
        print("\nTriton kernel against the PyTorch kernel on the device (float64):")
        outputs = {}
        for kernel in ("torch", "triton"):
            sparse.PSEUDO_VOIGT_KERNEL = kernel
            forest, wl = synthetic_forest(200, 20_000, device, torch.float64, seed=4)
            forest.set_trainable(("center", "amplitude", "sigma", "gamma"))
            try:
                flux = forest(forest.make_layout(wl, bucket_ratio=2), 7.5)
                flux.sum().backward()
            except Exception as err:  # noqa: BLE001 - report and carry on
                print(f"{kernel} kernel raised {type(err).__name__}: {str(err)[:300]}")
                sparse.PSEUDO_VOIGT_KERNEL = DEFAULT_KERNEL
                return
            outputs[kernel] = (flux.detach(), [p.grad.detach() for p in forest.parameters()])
        sparse.PSEUDO_VOIGT_KERNEL = DEFAULT_KERNEL
        a, b = outputs["torch"], outputs["triton"]
        print(f"max |Δflux| = {float((a[0] - b[0]).abs().max()):.2e}")
        for name, ga, gb in zip(("center", "ln_a", "ln_sigma", "ln_gamma"), a[1], b[1]):
            rel = float((ga - gb).abs().max() / ga.abs().max().clamp(min=1e-300))
            print(f"max relative Δgrad[{name}] = {rel:.2e}")


def section_fit(device, epochs):
    from astropy.io import fits

    import blase_specutils as bs
    from blase_specutils import datasets
    from blase_specutils.astro.templates import read_phoenix_dat

    print("\n## One HPF order (WASP 69), joint stage epochs per second\n")
    wl, fl = read_phoenix_dat(datasets.phoenix_path("Z"))
    sel = (wl > 8620) & (wl < 8800)
    clone = bs.clone(wl[sel], fl[sel], teff=3900, progress=False, epochs=200, device=device)
    table = fits.getdata(datasets.wasp69_path())
    w, f, s = (np.asarray(table[k], dtype=float) for k in ("wavelength", "flux", "uncertainty"))
    chosen = "triton" if sparse.use_triton(device) else "torch"
    print(f"kernel setting {sparse.PSEUDO_VOIGT_KERNEL!r} runs the {chosen} kernel here\n")
    print("| device | threads | epochs | joint-stage s | epochs / s |")
    print("|---|---|---|---|---|")
    for threads in (1, 2) if device.type == "cpu" else (1,):
        t0 = time.perf_counter()
        r = bs.fit(
            w,
            f,
            s,
            stellar=clone,
            progress=False,
            epochs=epochs,
            rtol=0,
            rv=-9.4,
            rv_search=0,
            global_epochs=0,
            device=device,
            num_threads=threads,
        )
        dt = time.perf_counter() - t0
        print(
            f"| {device} | {threads} | {len(r.history.loss)} | {dt:.2f} | "
            f"{len(r.history.loss) / dt:.0f} |"
        )


def section_graphs(device):
    """Full Z-band clone and a WASP 69 fit with and without CUDA graphs."""
    from astropy.io import fits

    import blase_specutils as bs
    from blase_specutils import datasets
    from blase_specutils.astro.templates import read_phoenix_dat

    print("\n## CUDA graphs in the library: Z-band clone (300 epochs) and WASP 69 fit\n")
    print("| workflow | cuda_graph | wall s | result |")
    print("|---|---|---|---|")
    wl, fl = read_phoenix_dat(datasets.phoenix_path("Z"))
    kernels = ["torch"] + (["triton"] if triton_kernels.available(device) else [])
    for kernel in kernels:
        sparse.PSEUDO_VOIGT_KERNEL = kernel
        for graph in (False, True):
            t0 = time.perf_counter()
            try:
                c = bs.clone(
                    wl, fl, teff=3900, device=device, epochs=300, rtol=0, progress=False,
                    cuda_graph=graph,
                )  # fmt: skip
            except Exception as err:  # noqa: BLE001 - report and carry on
                print(f"| clone Z, {kernel} kernel | {graph} | failed | {str(err)[:100]} |")
                continue
            _sync(device)
            print(
                f"| clone Z ({c.n_lines} lines), {kernel} kernel | {graph} | "
                f"{time.perf_counter() - t0:.2f} | RMS {c.rms:.5f} |"
            )
    sparse.PSEUDO_VOIGT_KERNEL = DEFAULT_KERNEL
    sel = (wl > 8620) & (wl < 8800)
    clone = bs.clone(wl[sel], fl[sel], teff=3900, progress=False, epochs=200, device=device)
    table = fits.getdata(datasets.wasp69_path())
    w, f, s = (np.asarray(table[k], dtype=float) for k in ("wavelength", "flux", "uncertainty"))
    for kernel in kernels:
        sparse.PSEUDO_VOIGT_KERNEL = kernel
        for graph in (False, True):
            t0 = time.perf_counter()
            r = bs.fit(
                w,
                f,
                s,
                stellar=clone,
                progress=False,
                epochs=300,
                rtol=0,
                device=device,
                cuda_graph=graph,
            )
            print(
                f"| fit WASP 69, {kernel} kernel | {graph} | {time.perf_counter() - t0:.2f} | "
                f"RV {r.rv.value:.4f}, v sin i {r.vsini.value:.3f}, chi2 {r.chi2_reduced:.2f} |"
            )
    sparse.PSEUDO_VOIGT_KERNEL = DEFAULT_KERNEL


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--section", default="all", choices=("all", "paper", "check", "fit", "graphs")
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.section in ("all", "check") and device.type != "cpu":
        section_check(device)  # first: a kernel that disagrees makes its timings moot
    if args.section in ("all", "paper"):
        section_paper(device, args.epochs)
    if args.section in ("all", "graphs") and device.type == "cuda":
        section_graphs(device)
    if args.section in ("all", "fit"):
        section_fit(device, max(args.epochs, 200))


if __name__ == "__main__":
    main()
