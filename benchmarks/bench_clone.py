"""Clone speed: the paper's sparse-COO layout against blase_specutils' bucketed windows.

The *reference* implemented here (and only here) follows §2.6 of the blasé method
paper: every line gets the same fixed window of 6000 pixels centred on its
nearest pixel; each forward pass builds a ``torch.sparse_coo_tensor`` of shape
``(N_lines, N_pixels)`` from (line, pixel, ln(1 − a·V)) triples, ``.coalesce()``s it,
sums it over lines with ``torch.sparse.sum(dim=0)`` and exponentiates. The profile
is the same Thompson–Cox–Hastings pseudo-Voigt; the optimiser is the same Adam.

*Ours* is :class:`blase_specutils.core.lineforest.LineForest` with
:meth:`~blase_specutils.core.lineforest.LineForest.make_layout` (per-line windows
sized from each line's width, power-of-two buckets) and the fused kernel.

Cases
-----
synthetic
    300,000 px on a 0.01 Å grid with 6,000 random lines (``--quick``: 30,000 px,
    600 lines). The target is the truth forest; both models start from the same
    perturbed amplitudes and widths.
z_band
    The real PHOENIX Z band sample (100,000 px), lines and initial guesses from
    ``blase_specutils.clone(..., epochs=0)``; the target is the flattened spectrum.
full clones
    ``blase_specutils.clone`` with default settings (teff = 3900 K) on the real Z and Y
    band samples: lines found, wall time, RMS.

Every (case, engine) pair runs in its own subprocess so its peak memory is its own.
Per-epoch time = forward + backward + Adam step (+ clamp for ours), median over the
epochs after the first. Run ``python benchmarks/bench_clone.py --help`` for options.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("BLASE_SPECUTILS_DATA", HERE.parents[1] / "shared" / "data"))
PHOENIX = {
    "Z": "phoenix/Z_band_test_sample_lte03900-PHOENIX-ACES.dat",
    "Y": "phoenix/Y_band_test_sample_lte03900-PHOENIX-ACES.dat",
}
#: Paper §2.6: every line's window, pixels.
PAPER_WINDOW_PIXELS = 6000
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# ---------------------------------------------------------------------------
# The paper's reference layout (benchmark only)
# ---------------------------------------------------------------------------
class PaperSparseCOOForest(torch.nn.Module):
    """Fixed 6000-px windows, a sparse COO matrix built and coalesced every forward.

    Parameters
    ----------
    wavelength : numpy.ndarray
        Native grid, Å.
    center, amplitude, sigma, gamma : numpy.ndarray
        Line centres (Å, fixed), amplitudes (Å), Gaussian σ and Lorentzian HWHM γ (Å).
    window_pixels : int
        Pixels per line (the paper's N_cut).
    dtype : torch.dtype
        Working dtype (the paper uses float64).
    device : str
        Torch device.
    """

    def __init__(
        self,
        wavelength,
        center,
        amplitude,
        sigma,
        gamma,
        *,
        window_pixels=PAPER_WINDOW_PIXELS,
        dtype=torch.float64,
        device="cpu",
    ):
        super().__init__()
        n_pixels = wavelength.size
        nearest = np.searchsorted(wavelength, center)
        offsets = np.arange(window_pixels) - window_pixels // 2
        line = np.repeat(np.arange(center.size), window_pixels)
        pixel = (nearest[:, None] + offsets[None, :]).ravel()
        keep = (pixel >= 0) & (pixel < n_pixels)  # windows hanging over the grid ends are cut
        line, pixel = line[keep], pixel[keep]
        self.shape = (center.size, n_pixels)
        self.register_buffer("indices", torch.as_tensor(np.stack([line, pixel]), device=device))
        # (λ − λc)² per triple, formed in float64 once (the centres are not trained here)
        offset = wavelength[pixel] - center[line]
        self.register_buffer(
            "offset_squared", torch.as_tensor(offset * offset, dtype=dtype, device=device)
        )
        del offset
        self.register_buffer("line", torch.as_tensor(line, device=device))
        for name, value in (("amplitude", amplitude), ("sigma", sigma), ("gamma", gamma)):
            log_value = torch.as_tensor(np.log(value), dtype=dtype, device=device)
            setattr(self, "ln_" + name, torch.nn.Parameter(log_value))

    @property
    def n_pairs(self) -> int:
        return int(self.offset_squared.numel())

    def forward(self) -> torch.Tensor:
        # per-line TCH widths and mixing, then one gather of four coefficients per triple:
        # a·V = A / (x² + h²) + B·exp(C·x²)
        amplitude, sigma, gamma = (
            torch.exp(self.ln_amplitude),
            torch.exp(self.ln_sigma),
            torch.exp(self.ln_gamma),
        )
        fg, fl = _FWHM_PER_SIGMA * sigma, 2.0 * gamma
        fwhm = (
            fg**5
            + 2.69269 * fg**4 * fl
            + 2.42843 * fg**3 * fl**2
            + 4.47163 * fg**2 * fl**3
            + 0.07842 * fg * fl**4
            + fl**5
        ) ** 0.2
        r = fl / fwhm
        eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
        hwhm = 0.5 * fwhm
        s = fwhm / _FWHM_PER_SIGMA
        lor_a = (amplitude * eta * hwhm / math.pi)[self.line]
        lor_h2 = (hwhm * hwhm)[self.line]
        gau_b = (amplitude * (1.0 - eta) / (s * math.sqrt(2.0 * math.pi)))[self.line]
        gau_c = (-0.5 / (s * s))[self.line]
        av = lor_a / (self.offset_squared + lor_h2) + gau_b * torch.exp(gau_c * self.offset_squared)
        ln_flux_pairs = torch.log1p(-av.clamp(max=1 - 1e-6))
        matrix = torch.sparse_coo_tensor(
            self.indices, ln_flux_pairs, self.shape, check_invariants=False
        ).coalesce()
        return torch.exp(torch.sparse.sum(matrix, dim=0).to_dense())

    def line_properties(self) -> dict:
        with torch.no_grad():
            return {
                k: torch.exp(getattr(self, "ln_" + k)).double().cpu().numpy()
                for k in ("amplitude", "sigma", "gamma")
            }


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
def synthetic_case(n_pixels: int, n_lines: int, seed: int = 42):
    """A random forest on a 0.01 Å grid: truth, target flux, and a perturbed start."""
    from blase_specutils.core.lineforest import LineForest

    rng = np.random.default_rng(seed)
    wavelength = 8000.0 + 0.01 * np.arange(n_pixels)
    center = np.sort(rng.uniform(wavelength[0], wavelength[-1], n_lines))
    sigma = rng.lognormal(math.log(0.02), 0.4, n_lines)
    gamma = rng.lognormal(math.log(0.012), 0.6, n_lines)
    depth = rng.uniform(0.01, 0.6, n_lines)
    amplitude = depth * 1.5 * (sigma + gamma)
    truth = LineForest(center, amplitude, sigma, gamma, dtype=torch.float64)
    with torch.no_grad():
        target = truth(truth.make_layout(wavelength, tolerance=1e-7)).numpy()
    start = (
        center,
        amplitude * rng.uniform(0.7, 1.3, n_lines),
        sigma * rng.uniform(0.8, 1.2, n_lines),
        gamma * rng.uniform(0.8, 1.2, n_lines),
    )
    return wavelength, target, start


def read_phoenix(data_dir: Path, band: str):
    data = np.loadtxt(data_dir / PHOENIX[band])
    return data[:, 0] * 1e4, data[:, 1]  # µm → Å (vacuum), flux


def z_band_case(data_dir: Path, quick: bool):
    """Real Z band: flattened target and initial lines from clone(epochs=0)."""
    import blase_specutils

    wavelength, flux = read_phoenix(data_dir, "Z")
    if quick:
        keep = (wavelength >= 8600) & (wavelength < 8700)
        wavelength, flux = wavelength[keep], flux[keep]
    initial = blase_specutils.clone(
        wavelength, flux, teff=3900, epochs=0, progress=False, device="cpu"
    )
    p = initial.forest.line_properties()
    return wavelength, initial.target_flux, (p["center"], p["amplitude"], p["sigma"], p["gamma"])


# ---------------------------------------------------------------------------
# Worker: one engine on one case, in its own process
# ---------------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak RSS since the last :func:`_reset_peak_rss` (VmHWM), else since the process start."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so set-up peaks are not counted."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_worker(spec: dict) -> dict:
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    data_dir = Path(spec["data_dir"])

    if spec["case"] == "synthetic":
        wavelength, target, start = synthetic_case(spec["n_pixels"], spec["n_lines"])
    elif spec["case"] == "z_band":
        wavelength, target, start = z_band_case(data_dir, spec["quick"])
    elif spec["case"].startswith("clone_"):
        return run_full_clone(spec, data_dir, device)
    else:
        raise ValueError(spec["case"])

    _reset_peak_rss()
    rss_before = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    target_t = torch.as_tensor(target, dtype=dtype, device=device)
    t_setup = time.perf_counter()
    if spec["engine"] == "reference":
        model = PaperSparseCOOForest(wavelength, *start, dtype=dtype, device=device)
        n_pairs = model.n_pairs
        forward = model.forward
        after = None
    else:
        from blase_specutils.core.lineforest import LineForest

        model = LineForest(*start, dtype=dtype, device=device)  # trains amplitude, sigma, gamma
        layout = model.make_layout(wavelength)
        n_pairs = layout.n_pairs
        forward = lambda: model(layout)  # noqa: E731
        after = model.clamp_
    setup_s = _sync(device, time.perf_counter() - t_setup)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=spec["learning_rate"]
    )

    epoch_times = []
    for _ in range(spec["epochs"]):
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.mean((forward() - target_t) ** 2)
        loss.backward()
        optimizer.step()
        if after is not None:
            after()
        _sync(device)
        epoch_times.append(time.perf_counter() - t0)
    with torch.no_grad():
        residual = forward() - target_t
        rms = float(torch.sqrt(torch.mean(residual.double() ** 2)))
    result = {
        "case": spec["case"],
        "engine": spec["engine"],
        "n_pixels": int(wavelength.size),
        "n_lines": int(start[0].size),
        "n_pairs": int(n_pairs),
        "setup_s": setup_s,
        "epoch_s": float(np.median(epoch_times[1:] if len(epoch_times) > 1 else epoch_times)),
        "first_epoch_s": epoch_times[0],
        "epochs": spec["epochs"],
        "rms": rms,
        "peak_rss_mb": _peak_rss_mb(),
        "training_mem_mb": _peak_rss_mb() - rss_before,
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def run_full_clone(spec: dict, data_dir: Path, device: torch.device) -> dict:
    import blase_specutils

    band = spec["case"].split("_", 1)[1]
    wavelength, flux = read_phoenix(data_dir, band)
    _reset_peak_rss()
    rss_before = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = blase_specutils.clone(wavelength, flux, teff=3900, progress=False, device=device)
    wall = _sync(device, time.perf_counter() - t0)
    out = {
        "case": spec["case"],
        "engine": "ours (clone defaults)",
        "n_pixels": int(wavelength.size),
        "n_lines": int(result.n_lines),
        "wall_s": wall,
        "epochs": int(result.history.epochs),
        "stop_reason": result.history.stop_reason,
        "rms": float(result.rms),
        "peak_rss_mb": _peak_rss_mb(),
        "training_mem_mb": _peak_rss_mb() - rss_before,
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _sync(device, value=None):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def spawn(spec: dict) -> dict:
    """Run one worker in a fresh interpreter; returns its JSON result (or the error)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(HERE.parent))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {
            "case": spec["case"],
            "engine": spec.get("engine", "?"),
            "error": " | ".join(tail),
            "wall_s": time.perf_counter() - t0,
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cross_check(n_pixels: int = 2000, n_lines: int = 40) -> tuple[float, float]:
    """Both engines on a small grid their windows cover: max |Δ flux|, max relative |Δ grad|."""
    from blase_specutils.core.lineforest import LineForest

    wavelength, target, start = synthetic_case(n_pixels, n_lines)
    reference = PaperSparseCOOForest(wavelength, *start)
    ours = LineForest(*start, dtype=torch.float64)
    layout = ours.make_layout(
        wavelength, tolerance=1e-30, max_half_width=1e4, min_pixels=2 * n_pixels
    )
    target_t = torch.as_tensor(target)
    flux_ref, flux_ours = reference(), ours(layout)
    torch.mean((flux_ref - target_t) ** 2).backward()
    torch.mean((flux_ours - target_t) ** 2).backward()
    grad_err = max(
        float(
            (getattr(reference, n).grad - getattr(ours, n).grad).abs().max()
            / getattr(ours, n).grad.abs().max()
        )
        for n in ("ln_amplitude", "ln_sigma", "ln_gamma")
    )
    return float((flux_ref - flux_ours).detach().abs().max()), grad_err


def _fmt(value, spec=".3g"):
    return "—" if value is None else format(value, spec)


def markdown(results: list[dict], args) -> str:
    lines = []
    mem_key = "cuda_peak_mb" if args.device == "cuda" else "training_mem_mb"
    mem_label = "peak CUDA MB" if args.device == "cuda" else "Δ peak RSS MB"
    lines.append(
        f"| case | engine | pixels | lines | line–pixel pairs | s / epoch | speed-up | "
        f"{mem_label} | RMS after {args.epochs} epochs |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    by_case: dict[str, dict] = {}
    for r in results:
        if r["case"].startswith("clone_"):
            continue
        by_case.setdefault(r["case"], {})[r["engine"]] = r
    for case, engines in by_case.items():
        ref = engines.get("reference")
        for name in ("reference", "ours"):
            r = engines.get(name)
            if r is None:
                continue
            label = (
                "paper §2.6 sparse COO, 6000 px (baseline)"
                if name == "reference"
                else "blase_specutils buckets, fused"
            )
            if "error" in r:
                lines.append(f"| {case} | {label} | | | | failed: {r['error'][:80]} | | | |")
                continue
            speedup = (ref["epoch_s"] / r["epoch_s"]) if ref and "error" not in ref else None
            lines.append(
                f"| {case} | {label} | {r['n_pixels']:,} | {r['n_lines']:,} | {r['n_pairs']:,} | "
                f"{r['epoch_s']:.3g} | {_fmt(speedup, '.1f')}× | {_fmt(r.get(mem_key), '.0f')} | "
                f"{r['rms']:.2e} |"
            )
    clones = [r for r in results if r["case"].startswith("clone_")]
    if clones:
        lines.append("")
        lines.append(
            "| full clone (defaults, teff 3900 K) | pixels | lines found | epochs | stop | wall s "
            "| RMS |"
        )
        lines.append("|---|---:|---:|---:|---|---:|---:|")
        for r in clones:
            if "error" in r:
                lines.append(f"| {r['case']} | failed: {r['error'][:100]} | | | | | |")
                continue
            lines.append(
                f"| {r['case'].replace('clone_', '')} band | {r['n_pixels']:,} | "
                f"{r['n_lines']:,} | {r['epochs']} | "
                f"{r['stop_reason']} | {r['wall_s']:.1f} | {r['rms']:.2e} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default cpu)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=5,
        help="epochs per timing run, the same for both engines (default 5; "
        "time per epoch is the median after the first)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small inputs: 30,000 px × 600 synthetic lines, 100 Å of the Z band, no full clones",
    )
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="working dtype of both engines (the paper uses float64)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch default)"
    )
    parser.add_argument(
        "--learning-rate", type=float, default=0.05, help="Adam step size for both engines"
    )
    parser.add_argument("--skip-reference", action="store_true", help="time only our engine")
    parser.add_argument(
        "--skip-clones", action="store_true", help="skip the full Z and Y band clones"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA, help="folder laid out like shared/data"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")

    n_pixels, n_lines = (30_000, 600) if args.quick else (300_000, 6_000)
    base = {
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "data_dir": str(args.data_dir),
        "quick": args.quick,
        "n_pixels": n_pixels,
        "n_lines": n_lines,
    }
    engines = ("ours",) if args.skip_reference else ("reference", "ours")
    specs = [
        dict(base, case=case, engine=engine)
        for case in ("synthetic", "z_band")
        for engine in engines
    ]
    if not (args.quick or args.skip_clones):
        specs += [dict(base, case=f"clone_{band}") for band in ("Z", "Y")]

    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"# bench_clone: torch {torch.__version__}, device {args.device} ({device_name}), "
        f"{os.cpu_count()} CPUs, threads {args.threads or torch.get_num_threads()}, "
        f"dtype {args.dtype}, "
        f"epochs {args.epochs}{', quick' if args.quick else ''}",
        flush=True,
    )
    flux_err, grad_err = cross_check()
    print(
        "# cross-check on 2,000 px x 40 lines (windows cover the grid): "
        "max |flux_ref - flux_ours| = "
        f"{flux_err:.1e}, max relative gradient difference = {grad_err:.1e}",
        flush=True,
    )
    results = []
    for spec in specs:
        t0 = time.perf_counter()
        result = spawn(spec)
        results.append(result)
        print(
            f"#   {spec['case']:>9} {spec.get('engine', ''):>9}: {time.perf_counter() - t0:6.1f} s "
            f"{json.dumps(result)}",
            flush=True,
        )
    print()
    print(markdown(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
