"""The fit pipeline's newer stages on the CPU and on a CUDA device: same answers, and times.

Each check runs the same public call on both devices (the CPU first, as the baseline in
the same run) and prints one table row: the quantity compared, its value on each
device, their difference in units of the CPU's uncertainty where there is one, and the
wall times. Checks:

* ``wasp69``: the default fit of the WASP 69 HPF order (joint RV × v sin i search,
  line stage, uncertainties, line-by-line RV) with a 3900 K PHOENIX clone;
* ``telluric``: an injection (a two-line star × a five-line telluric, the package's
  independent generator ``testing.observe``), fitted with both clones, then
  ``correct_tellurics`` on a second spectrum and a write/read round trip of the CUDA fit;
* ``add_lines``: the injection with a line the clone lacks, added by ``add_lines``.

The two injections search RV only ±30 km/s around the truth: their two-line star is
a toy whose 8 Å line spacing aliases at 280 km/s.

Run where a CUDA device is present::

    python benchmarks/check_cuda.py

Without one it runs the CPU column alone (useful to check the script itself).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits

import blase_specutils as bs
from blase_specutils import datasets
from blase_specutils.astro.templates import read_phoenix_dat
from blase_specutils.testing import observe

C_KMS = 299792.458


def timed(call):
    start = time.perf_counter()
    value = call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def row(check, name, cpu, cuda, sigma=None, t_cpu=None, t_cuda=None, tolerance=3.0):
    """One table row; ``ok`` when |Δ| ≤ tolerance σ (or relative 1e-3 without σ)."""
    if cuda is None:
        diff, ok = "", "cpu only"
    else:
        delta = abs(float(cuda) - float(cpu))
        if sigma is not None and np.isfinite(sigma) and sigma > 0:
            diff = f"{delta / sigma:.2f} σ"
            ok = "ok" if delta <= tolerance * sigma else "DIFFERS"
        else:
            scale = max(abs(float(cpu)), 1e-12)
            diff = f"{delta / scale:.1e} rel"
            ok = "ok" if delta <= 1e-3 * scale else "DIFFERS"
    times = "" if t_cpu is None else f"{t_cpu:.2f}"
    times += "" if t_cuda is None else f" / {t_cuda:.2f}"
    cuda_text = "" if cuda is None else f"{float(cuda):.6g}"
    print(f"| {check} | {name} | {float(cpu):.6g} | {cuda_text} | {diff} | {times} | {ok} |",
          flush=True)


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def check_wasp69() -> None:
    wl, fl = read_phoenix_dat(datasets.phoenix_path("Z"))
    sel = (wl > 8620) & (wl < 8800)
    table = fits.getdata(datasets.wasp69_path())
    w, f, s = (np.asarray(table[k], dtype=float) for k in ("wavelength", "flux", "uncertainty"))
    template = bs.clone(wl[sel], fl[sel], teff=3900, progress=False, epochs=300)
    results, times = {}, {}
    for device in devices():
        results[device], times[device] = timed(
            lambda d=device: bs.fit(w, f, s, stellar=template, progress=False, device=d)
        )
    cpu, cuda = results["cpu"], results.get("cuda")
    t_cpu, t_cuda = times["cpu"], times.get("cuda")

    def value(result, name):
        return None if result is None else getattr(result, name).value

    row("wasp69", "RV km/s", cpu.rv.value, value(cuda, "rv"), cpu.rv_uncertainty.value,
        t_cpu, t_cuda)
    row("wasp69", "v sin i km/s", cpu.vsini.value, value(cuda, "vsini"),
        cpu.vsini_uncertainty.value)
    row("wasp69", "line-by-line RV", cpu.line_by_line_rv.value,
        value(cuda, "line_by_line_rv"), cpu.line_by_line_rv_uncertainty.value)
    row("wasp69", "χ²_red", cpu.chi2_reduced, None if cuda is None else cuda.chi2_reduced,
        0.02 * cpu.chi2_reduced, tolerance=1.0)
    row("wasp69", "flags (count)", len(cpu.flags), None if cuda is None else len(cuda.flags),
        0.5, tolerance=1.0)


TELLURIC_LINES = (8512.3, 8519.0, 8531.7, 8538.2, 8547.9)
TELLURIC_DEPTHS = (0.9, 0.5, 0.95, 0.3, 0.7)


def _injection(extra_line=None):
    wl = np.arange(8495.0, 8560.0, 0.01)
    star = (1 - 0.2 * np.exp(-0.5 * ((wl - 8525.0) / 0.6) ** 2)) * (
        1 - 0.15 * np.exp(-0.5 * ((wl - 8541.0) / 0.5) ** 2)
    )
    tell = np.ones_like(wl)
    for c, d in zip(TELLURIC_LINES, TELLURIC_DEPTHS):
        tell *= 1 - d * np.exp(-0.5 * ((wl - c) / 0.1) ** 2)
    truth = star.copy()
    if extra_line is not None:
        truth *= 1 - 0.3 * np.exp(-0.5 * ((wl - extra_line) / 0.5) ** 2)
    return wl, star, tell, truth


def check_telluric() -> None:
    wl, star, tell, truth = _injection()
    stellar = bs.clone(wl, star, flatten=False, prominence=0.02, epochs=200, progress=False)
    telluric = bs.clone(wl, tell, flatten=False, prominence=0.05, epochs=200, progress=False)
    pixels = np.linspace(8505.0, 8550.0, 1200)
    data = observe(wl, truth * tell, pixels, rv=5.0, vsini=3.0, resolving_power=60000.0,
                   snr=300.0, seed=1)
    science = observe(wl, tell ** 1.2, pixels[50:-50], rv=0.0, vsini=0.01,
                      resolving_power=60000.0, snr=300.0, seed=2)
    results, times, corrected = {}, {}, {}
    for device in devices():
        results[device], times[device] = timed(
            lambda d=device: bs.fit(
                pixels, data.flux, data.uncertainty, stellar=stellar, telluric=telluric,
                progress=False, device=d, epochs=100, rv=5.0, rv_search=30.0,
            )
        )
        out = bs.correct_tellurics(_spectrum(science), results[device], airmass_ratio=1.2)
        corrected[device] = np.nanstd(np.asarray(out.flux.value)[20:-20])
    cpu, cuda = results["cpu"], results.get("cuda")
    row("telluric", "RV km/s", cpu.rv.value, None if cuda is None else cuda.rv.value,
        cpu.rv_uncertainty.value, times["cpu"], times.get("cuda"))
    scale = cpu.parameters["telluric_scale"][0]
    row("telluric", "telluric scale", scale,
        None if cuda is None else cuda.parameters["telluric_scale"][0],
        cpu.uncertainties.get("telluric_scale", np.nan))
    row("telluric", "corrected scatter", corrected["cpu"], corrected.get("cuda"),
        0.1 * corrected["cpu"], tolerance=1.0)
    if cuda is not None:
        with tempfile.TemporaryDirectory() as folder:
            loaded = bs.read_fit(cuda.write(Path(folder) / "cuda.asdf"))
        row("telluric", "read_fit RV (cuda fit)", cuda.rv.value, loaded.rv.value, None)


def _spectrum(observation):
    import astropy.units as u
    from astropy.nddata import StdDevUncertainty
    from specutils import Spectrum

    return Spectrum(
        spectral_axis=observation.wavelength * u.AA,
        flux=observation.flux * u.dimensionless_unscaled,
        uncertainty=StdDevUncertainty(observation.uncertainty),
    )


def check_add_lines() -> None:
    import astropy.units as u

    wl, star, _, truth = _injection(extra_line=8533.0)
    stellar = bs.clone(wl, star, flatten=False, prominence=0.02, epochs=200, progress=False)
    pixels = np.linspace(8505.0, 8550.0, 1200)
    data = observe(wl, truth, pixels, rv=5.0, vsini=3.0, resolving_power=60000.0, snr=300.0,
                   seed=3)
    ews, times, errors = {}, {}, {}
    for device in devices():
        result, times[device] = timed(
            lambda d=device: bs.fit(
                pixels, data.flux, data.uncertainty, stellar=stellar, progress=False,
                device=d, epochs=100, add_lines=[8533.0] * u.AA, rv=5.0, rv_search=30.0,
            )
        )
        lines = result.line_table
        added = np.asarray(lines["added"])
        ews[device] = float(lines["equivalent_width"][added][0].to_value(u.mAA))
        errors[device] = float(lines["equivalent_width_uncertainty"][added][0].to_value(u.mAA))
    expected = 0.3 * 0.5 * np.sqrt(2 * np.pi) * 1e3
    row("add_lines", f"added EW mÅ (truth {expected:.1f})", ews["cpu"], ews.get("cuda"),
        errors["cpu"], times["cpu"], times.get("cuda"))


CHECKS = {"wasp69": check_wasp69, "telluric": check_telluric, "add_lines": check_add_lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"# torch {torch.__version__}, {name}")
    print("| check | quantity | cpu | cuda | difference | seconds cpu / cuda | |")
    print("|---|---|---|---|---|---|---|")
    for check in args.only or CHECKS:
        try:
            CHECKS[check]()
        except Exception as err:  # noqa: BLE001 - report and go on to the next check
            print(f"| {check} | FAILED | {type(err).__name__}: {err} | | | | FAILED |", flush=True)


if __name__ == "__main__":
    main()
