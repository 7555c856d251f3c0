"""Robustness of ``blase_specutils.fit`` with its defaults: the numbers of issue 12.

Every fit is the plain public call ``bs.fit(..., progress=False)`` (resolving power fixed
at the truth where there is one); nothing is tuned per star. Sections (``--section``),
each printing markdown tables with the 1-minute load average (``os.getloadavg``) and the
wall time of its fits:

injection
    The package's own independent generator :func:`blase_specutils.testing.observe` on a
    clone of the PHOENIX 3900 K H band (15500–15900 Å), the truth being the clone's
    flattened PHOENIX spectrum with its line depths perturbed by a smooth 15 % sinusoid
    (:func:`blase_specutils.testing.perturb_line_depths`); pixels 15600–15800 Å at 3 px
    per resolution element, R 45,000. Grid v sin i {2, 10, 40, 100} × S/N {50, 200} ×
    RV {−30, +80} km/s, ``--seeds`` noise seeds a cell. Per cell: mean ΔRV ± standard
    error, RV pull s.d. ((RV − truth)/σ_RV), mean Δv sin i, v sin i pull s.d., χ²_red,
    fraction converged, flags; and a plain cross-correlation (the clone's template at
    the instrument's resolution, Pearson correlation on a velocity grid, Gaussian peak)
    for comparison. Issue targets: pull s.d. 0.8–1.25, |mean bias| < 3 standard errors,
    χ²_red 0.95–1.05.
mismatch
    Template mismatch: the data are made from a perturbed copy of the clone's line table
    (depths × 1.3^±, widths × 1.2^±: smooth in wavelength, line to line at random, and
    both), observed with the independent generator at v sin i 2, 10, 40, 100 km/s, and
    fitted with the unperturbed clone. Target: |ΔRV| < 1 km/s (right basin).
igrins
    CPD-57 1131, IGRINS H (real data), against a clone of the whole PHOENIX H sample
    (15000–17500 Å, cached as ECSV under ``--cache-dir``): every order inside the clone
    alone, all of them jointly, χ²/dof of the single-order RVs about the joint RV, and
    v sin i from 3 random subsets of 3+ orders against the all-order value. Targets:
    χ²/dof ≤ 2; subsets within 2σ.
a0v
    Both HPF A0V standards (HR 3039, HR 4829), muler's PHOENIX 10,000 K and TelFit
    templates cloned (cached), single orders against the joint 28-order fit with
    tellurics: single-order RVs within 3σ of the joint RV? Wall time of the 28-order fit
    (target ≤ 30 s on the 2-core CPU).
wasp69
    WASP 69, one HPF order, with a clone of the PHOENIX Z band over the data ± 30 Å, the
    default fit: χ²_red (target ≤ 27), RV (target within 30 m/s of −9.428 km/s),
    v sin i, flags, wall time.

Run ``python benchmarks/bench_robustness.py --help``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import curve_fit

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("BLASE_SPECUTILS_DATA", HERE.parents[1] / "shared" / "data"))
C_KMS = 299792.458
TELFIT = "telfit_HPFtemplate_temp286_hum050.csv"
PHOENIX_10K = "PHOENIX_10kK_hpf_template.csv"
WASP69_RV = -9.428  # km/s, the value this project's fit gave before the rebuild (issue 12)

bs = None  # blase_specutils, imported in main() once BLASE_SPECUTILS_DATA is set


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def load() -> float:
    """1-minute load average of the machine."""
    return os.getloadavg()[0]


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def fmt(value, digits: int = 2) -> str:
    """Fixed-point number, or "nan"."""
    if value is None:
        return "nan"
    value = float(value)
    return "nan" if not np.isfinite(value) else f"{value:.{digits}f}"


def pm(mean: float, error: float, digits: int = 2) -> str:
    return f"{fmt(mean, digits)} ± {fmt(error, digits)}"


def flag_codes(result) -> str:
    return ", ".join(sorted(result.flags)) if result.flags else "—"


def timed_fit(*args, **kwargs):
    """``bs.fit`` with its wall time (s), the load before it and the warnings it gave."""
    before = load()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = bs.fit(*args, progress=False, **kwargs)
    wall = time.perf_counter() - t0
    return result, wall, before, [f"{w.category.__name__}: {w.message}" for w in caught]


def mean_se(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    se = a.std(ddof=1) / math.sqrt(a.size) if a.size > 1 else float("nan")
    return float(a.mean()), float(se)


def sd(values) -> float:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.std(ddof=1)) if a.size > 1 else float("nan")


def global_value(result, name: str) -> float:
    value = result.meta.get(name, float("nan"))
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def chi2_per_pixel(result) -> float:
    """Σ((data − model)/σ)² over the good pixels / their number (χ²_red before the
    effective line degrees of freedom were counted)."""
    res, sig, good = result.residual, result.uncertainty, result.good
    if isinstance(res, list):
        res, sig, good = np.concatenate(res), np.concatenate(sig), np.concatenate(good)
    return float(np.sum((res[good] / sig[good]) ** 2) / max(int(good.sum()), 1))


def cached_clone(args, key: str, build):
    """A clone from ``--cache-dir`` (ECSV, :func:`bs.load_clone`), built and saved if absent."""
    path = args.cache_dir / f"bench_robustness_{key}.ecsv"
    if path.exists() and not args.rebuild_clones:
        t0 = time.perf_counter()
        clone = bs.load_clone(path)
        return clone, f"loaded from {path} in {time.perf_counter() - t0:.1f} s"
    t0 = time.perf_counter()
    clone = build()
    wall = time.perf_counter() - t0
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    clone.save(path, overwrite=True)
    return clone, f"built in {wall:.1f} s (load {load():.2f}), cached to {path}"


def phoenix(band: str, lo: float, hi: float):
    from blase_specutils.astro.templates import read_phoenix_dat
    from blase_specutils.datasets import phoenix_path

    return read_phoenix_dat(phoenix_path(band), wavelength_range=(lo, hi))


def log_pixels(lo: float, hi: float, resolving_power: float, per_element: float = 3.0):
    return np.exp(np.arange(np.log(lo), np.log(hi), 1.0 / (per_element * resolving_power)))


# ---------------------------------------------------------------------------
# cross-correlation (our own, independent of the package's fit)
# ---------------------------------------------------------------------------
class CrossCorrelator:
    """RV by cross-correlation with a fixed template at the instrument's resolution.

    The template (native wavelength, flux) is resampled onto a log-uniform grid of
    ``step_kms`` and convolved with the instrumental Gaussian (FWHM c/R). For each trial
    velocity the template is shifted and interpolated onto the data pixels, and the
    weighted Pearson correlation with the data (divided by a quadratic fit, i.e. the
    continuum) is computed: first on a coarse grid, then on a fine grid over the peak's
    half width, where a Gaussian plus a constant is fitted to give the RV.
    """

    def __init__(self, wavelength, flux, resolving_power: float, step_kms: float = 0.5):
        n = int(np.log(wavelength[-1] / wavelength[0]) / (step_kms / C_KMS))
        self.grid = wavelength[0] * np.exp(np.arange(n) * step_kms / C_KMS)
        fine = np.interp(self.grid, wavelength, flux)
        sigma = C_KMS / resolving_power / (2.0 * np.sqrt(2.0 * np.log(2.0))) / step_kms
        self.template = gaussian_filter1d(fine, sigma, mode="nearest", truncate=5.0)

    def correlation(self, pixels, data, weight, velocities) -> np.ndarray:
        d = data - np.sum(weight * data) / np.sum(weight)
        out = np.empty(len(velocities))
        for k, v in enumerate(velocities):
            m = np.interp(pixels / (1.0 + v / C_KMS), self.grid, self.template)
            m = m - np.sum(weight * m) / np.sum(weight)
            out[k] = np.sum(weight * d * m) / np.sqrt(np.sum(weight * d**2) * np.sum(weight * m**2))
        return out

    @staticmethod
    def continuum(pixels, flux, degree: int) -> np.ndarray:
        """Polynomial through the upper part of the spectrum (lines clipped iteratively)."""
        x = (pixels - pixels.mean()) / np.ptp(pixels)
        keep = np.ones(x.size, bool)
        for _ in range(5):
            fit = np.polyval(np.polyfit(x[keep], flux[keep], degree), x)
            resid = flux - fit
            keep = resid > -1.0 * np.std(resid[keep])
        return fit

    def rv(
        self, pixels, flux, sigma, v_range=(-400.0, 400.0), coarse_step=2.0, degree: int = 2
    ) -> float:
        continuum = self.continuum(pixels, flux, degree)
        data = flux / continuum
        weight = (continuum / sigma) ** 2
        v = np.arange(v_range[0], v_range[1] + coarse_step, coarse_step)
        c = self.correlation(pixels, data, weight, v)
        k = int(np.argmax(c))
        base = float(np.median(c))
        half = 0.5 * (c[k] + base)
        lo, hi = k, k
        while lo > 0 and c[lo - 1] > half:
            lo -= 1
        while hi < len(c) - 1 and c[hi + 1] > half:
            hi += 1
        hwhm = max(0.5 * (v[hi] - v[lo]) + coarse_step, 3.0)
        vf = np.linspace(v[k] - hwhm, v[k] + hwhm, 61)
        cf = self.correlation(pixels, data, weight, vf)
        p0 = (cf.max() - cf.min(), vf[int(np.argmax(cf))], hwhm / 1.2, cf.min())
        try:
            popt, _ = curve_fit(
                lambda u, a, mu, s, b: a * np.exp(-0.5 * ((u - mu) / s) ** 2) + b,
                vf, cf, p0=p0, maxfev=5000,
            )  # fmt: skip
            if not (vf[0] <= popt[1] <= vf[-1]):
                raise RuntimeError("peak outside the fine grid")
            return float(popt[1])
        except (RuntimeError, ValueError):
            j = int(np.clip(np.argmax(cf), 1, len(cf) - 2))  # parabola through 3 points
            a, b, _ = np.polyfit(vf[j - 1 : j + 2], cf[j - 1 : j + 2], 2)
            return float(-b / (2 * a))


# ---------------------------------------------------------------------------
# 1. injection–recovery grid
# ---------------------------------------------------------------------------
INJ_R = 45000.0
INJ_VSINI = (2.0, 10.0, 40.0, 100.0)
INJ_SNR = (50.0, 200.0)
INJ_RV = (-30.0, 80.0)


def h_slice_clone(args):
    wl, fl = phoenix("H", 15500.0, 15900.0)
    return cached_clone(args, "H_15500_15900", lambda: bs.clone(wl, fl, teff=3900, progress=False))


def section_injection(args) -> None:
    from blase_specutils.testing import observe, perturb_line_depths

    clone, how = h_slice_clone(args)
    truth_flux = perturb_line_depths(clone.wavelength, clone.target_flux)
    pixels = log_pixels(15600.0, 15800.0, INJ_R)
    ccf = CrossCorrelator(clone.wavelength, clone.model_flux, INJ_R)
    n_seeds = args.seeds
    print(
        f"Clone: PHOENIX 3900 K H band 15500–15900 Å, {clone.n_lines} lines, native RMS "
        f"{100 * clone.rms:.2f} %, {how}. Truth: the flattened PHOENIX spectrum with depths "
        f"perturbed (perturb_line_depths: 15 %, period 37 Å), observed by "
        f"blase_specutils.testing.observe on {pixels.size} px (15600–15800 Å, 3 px per "
        f"resolution element), R {INJ_R:,.0f} (fixed in the fit), {n_seeds} seeds a cell. "
        "CCF: the clone's model at R 45,000, Pearson correlation, Gaussian peak.\n"
    )
    rows, verdicts = [], []
    cells = [(v, s, rv) for v in INJ_VSINI for s in INJ_SNR for rv in INJ_RV]
    for cell, (vsini, snr, rv) in enumerate(cells):
        d_rv, p_rv, s_rv, d_v, p_v, chi2, conv, d_ccf = [], [], [], [], [], [], [], []
        codes: dict[str, int] = {}
        walls, loads = 0.0, []
        for seed in range(n_seeds):
            obs = observe(
                clone.wavelength, truth_flux, pixels, rv=rv, vsini=vsini,
                resolving_power=INJ_R, snr=snr, seed=10_000 * cell + seed,
            )  # fmt: skip
            r, wall, before, _ = timed_fit(
                obs.wavelength, obs.flux, obs.uncertainty, stellar=clone,
                resolving_power=INJ_R,
            )  # fmt: skip
            walls += wall
            loads.append(before)
            d_rv.append(r.rv.value - rv)
            s_rv.append(r.rv_uncertainty.value)
            p_rv.append((r.rv.value - rv) / r.rv_uncertainty.value)
            d_v.append(r.vsini.value - vsini)
            p_v.append((r.vsini.value - vsini) / r.vsini_uncertainty.value)
            chi2.append(r.chi2_reduced)
            conv.append(r.converged)
            for code in r.flags:
                codes[code] = codes.get(code, 0) + 1
            d_ccf.append(ccf.rv(obs.wavelength, obs.flux, obs.uncertainty) - rv)
        m_rv, se_rv = mean_se(d_rv)
        m_v, se_v = mean_se(d_v)
        m_c, se_c = mean_se(d_ccf)
        sd_prv, sd_pv = sd(p_rv), sd(p_v)
        scat, scat_ccf = sd(d_rv), sd(d_ccf)
        rows.append(
            [
                fmt(vsini, 0), fmt(snr, 0), f"{rv:+.0f}",
                pm(1e3 * m_rv, 1e3 * se_rv, 0), fmt(1e3 * scat, 0),
                fmt(1e3 * np.nanmean(s_rv), 0), fmt(sd_prv, 2),
                pm(m_v, se_v, 2), fmt(sd_pv, 2), fmt(np.mean(chi2), 3),
                f"{np.mean(conv):.2f}",
                pm(1e3 * m_c, 1e3 * se_c, 0), fmt(1e3 * scat_ccf, 0),
                fmt(scat_ccf / scat, 2) if scat > 0 else "nan",
                ", ".join(f"{k}×{n}" for k, n in sorted(codes.items())) or "—",
                fmt(walls, 1), fmt(max(loads), 2),
            ]
        )  # fmt: skip
        verdicts.append(
            (
                0.8 <= sd_prv <= 1.25,
                0.8 <= sd_pv <= 1.25,
                abs(m_rv) < 3 * se_rv,
                abs(m_v) < 3 * se_v,
                0.95 <= np.mean(chi2) <= 1.05,
            )
        )
        print(f"<!-- cell done: v sin i {vsini}, S/N {snr}, RV {rv} -->", flush=True)
    headers = [
        "v sin i", "S/N", "RV", "ΔRV (m/s) mean ± s.e.", "RV scatter (m/s)",
        "mean σ_RV (m/s)", "RV pull s.d.", "Δv sin i (km/s) mean ± s.e.",
        "v sin i pull s.d.", "χ²_red", "converged", "CCF ΔRV (m/s) mean ± s.e.",
        "CCF scatter (m/s)", "CCF / fit scatter", "flags (count)", "wall (s)", "max load",
    ]  # fmt: skip
    print(table(headers, rows))
    v = np.array(verdicts)
    names = [
        "RV pull s.d. in 0.8–1.25",
        "v sin i pull s.d. in 0.8–1.25",
        "|mean ΔRV| < 3 s.e.",
        "|mean Δv sin i| < 3 s.e.",
        "mean χ²_red in 0.95–1.05",
    ]
    print(
        f"\nCells meeting the issue's targets (of {len(v)}): "
        + "; ".join(f"{n}: {int(v[:, k].sum())}" for k, n in enumerate(names))
        + f". (With {n_seeds} seeds a pull s.d. is itself uncertain by ≈ "
        f"{100 / math.sqrt(2 * max(n_seeds - 1, 1)):.0f} %.)"
    )


# ---------------------------------------------------------------------------
# 2. template mismatch
# ---------------------------------------------------------------------------
MISMATCH = {"depth": 0.30, "width": 0.20, "period": 23.0}


def perturbed_forest(forest, variant: str, seed: int = 0):
    """A copy of ``forest`` with depths changed by 30 % and widths by 20 %.

    ``smooth``: depth × (1 + 0.3 sin(2πλ/23 Å)), width × (1 + 0.2 sin(2πλ/23 Å + 1.7));
    ``lines``: depth × 1.3^ξ, width × 1.2^η, ξ, η independent standard normals per line
    (clipped to ±2); ``both``: the product. The amplitude (a line's area) is scaled by
    depth × width so that the depth changes by the stated factor.
    """
    out = copy.deepcopy(forest)
    center = forest.line_properties()["center"]
    rng = np.random.default_rng(seed)
    ln_depth = np.zeros(center.size)
    ln_width = np.zeros(center.size)
    if variant in ("smooth", "both"):
        phase = 2.0 * np.pi * center / MISMATCH["period"]
        ln_depth += np.log1p(MISMATCH["depth"] * np.sin(phase))
        ln_width += np.log1p(MISMATCH["width"] * np.sin(phase + 1.7))
    if variant in ("lines", "both"):
        ln_depth += np.log1p(MISMATCH["depth"]) * np.clip(rng.standard_normal(center.size), -2, 2)
        ln_width += np.log1p(MISMATCH["width"]) * np.clip(rng.standard_normal(center.size), -2, 2)
    with torch.no_grad():
        dt, dev = out.ln_amplitude.dtype, out.ln_amplitude.device
        out.ln_amplitude += torch.as_tensor(ln_depth + ln_width, dtype=dt, device=dev)
        out.ln_sigma += torch.as_tensor(ln_width, dtype=dt, device=dev)
        out.ln_gamma += torch.as_tensor(ln_width, dtype=dt, device=dev)
    return out, float(np.std(np.expm1(ln_depth))), float(np.std(np.expm1(ln_width)))


def section_mismatch(args) -> None:
    from blase_specutils.testing import observe

    if args.mismatch_band == "H":
        clone, how = h_slice_clone(args)
        pixels = log_pixels(15600.0, 15800.0, INJ_R)
        r_power, span = INJ_R, "H band 15500–15900 Å (pixels 15600–15800 Å, R 45,000)"
    else:
        wl, fl = phoenix("Z", 8620.0, 8800.0)
        clone, how = cached_clone(
            args, "Z_8620_8800", lambda: bs.clone(wl, fl, teff=3900, progress=False)
        )
        r_power = 55000.0
        pixels = 8656.0 * np.exp(np.arange(2048) * 1.9 / C_KMS)
        span = "Z band 8620–8800 Å (HPF-like 2048 px of 1.9 km/s from 8656 Å, R 55,000)"
    truth_rv, snr = 25.0, 200.0
    print(
        f"Clone: PHOENIX 3900 K {span}, {clone.n_lines} lines, {how}. Data: a perturbed copy of "
        f"the clone's line table evaluated on the clone's grid, observed at RV {truth_rv:+g} "
        f"km/s, S/N {snr:g} (blase_specutils.testing.observe); fitted with the unperturbed "
        "clone, defaults, R fixed. CCF: the unperturbed clone's model at the instrument's R "
        "(the cross-correlation of section 1).\n"
    )
    ccf = CrossCorrelator(clone.wavelength, clone.model_flux, r_power)
    variants = ("smooth", "lines", "both")
    n_seeds = 1 if args.quick else min(args.seeds, 3)
    rows, ok = [], []
    for variant in variants:
        forest, rms_depth, rms_width = perturbed_forest(clone.forest, variant)
        with torch.no_grad():
            flux = forest(forest.make_layout(clone.wavelength)).double().cpu().numpy()
        for vsini in INJ_VSINI:
            for seed in range(n_seeds):
                obs = observe(
                    clone.wavelength, flux, pixels, rv=truth_rv, vsini=vsini,
                    resolving_power=r_power, snr=snr, seed=seed,
                )  # fmt: skip
                r, wall, before, _ = timed_fit(
                    obs.wavelength, obs.flux, obs.uncertainty, stellar=clone,
                    resolving_power=r_power,
                )  # fmt: skip
                d_rv = r.rv.value - truth_rv
                d_ccf = ccf.rv(obs.wavelength, obs.flux, obs.uncertainty) - truth_rv
                ok.append(abs(d_rv) < 1.0)
                rows.append(
                    [
                        f"{variant} (depth rms {100 * rms_depth:.0f} %, width rms "
                        f"{100 * rms_width:.0f} %)",
                        fmt(vsini, 0), seed, pm(d_rv, r.rv_uncertainty.value, 3),
                        "yes" if abs(d_rv) < 1.0 else "**NO**", fmt(d_ccf, 3),
                        pm(r.vsini.value - vsini, r.vsini_uncertainty.value, 2),
                        pm(global_value(r, "line_strength"),
                           r.uncertainties.get("line_strength", float("nan")), 3),
                        pm(global_value(r, "veiling"),
                           r.uncertainties.get("veiling", float("nan")), 3),
                        fmt(r.chi2_reduced, 3), "yes" if r.converged else "no", flag_codes(r),
                        fmt(wall, 1), fmt(before, 2),
                    ]
                )  # fmt: skip
    headers = [
        "perturbation", "v sin i", "seed", "ΔRV ± σ (km/s)", "|ΔRV| < 1 km/s", "CCF ΔRV (km/s)",
        "Δv sin i ± σ (km/s)", "line strength", "veiling", "χ²_red", "converged", "flags",
        "wall (s)", "load",
    ]  # fmt: skip
    print(table(headers, rows))
    print(f"\n|ΔRV| < 1 km/s in {sum(ok)} of {len(ok)} fits.")


# ---------------------------------------------------------------------------
# 3. IGRINS CPD-57 1131
# ---------------------------------------------------------------------------
IGRINS_R = 45000.0


def igrins_orders():
    import muler.igrins

    from blase_specutils.astro.adapters import spectra_to_arrays
    from blase_specutils.datasets import igrins_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spectra = muler.igrins.IGRINSSpectrumList.read(str(igrins_path("H")))
    return spectra_to_arrays(spectra)


def fit_orders(orders, **kwargs):
    return timed_fit(
        [o.wavelength for o in orders],
        [o.flux for o in orders],
        [o.uncertainty for o in orders],
        mask=[o.good for o in orders],
        **kwargs,
    )


def section_igrins(args) -> None:
    lo, hi = 15000.0, 17500.0
    wl, fl = phoenix("H", lo, hi)
    clone, how = cached_clone(
        args, "H_15000_17500", lambda: bs.clone(wl, fl, teff=3900, progress=False)
    )
    orders_all = igrins_orders()
    margin = 5.0  # Å, room for the star's RV (±100 km/s) inside the clone
    inside = [
        o for o in orders_all
        if o.wavelength[o.good][0] > lo + margin and o.wavelength[o.good][-1] < hi - margin
    ]  # fmt: skip
    inside_ids = {o.meta["index"] for o in inside}
    partial = [
        o for o in orders_all
        if o.meta["index"] not in inside_ids
        and o.wavelength[o.good][-1] > lo and o.wavelength[o.good][0] < hi
    ]  # fmt: skip
    singles = inside[::2] if args.quick else inside
    # plain arrays carry no instrument: IGRINS's R is given (the fit's default is 55,000)
    kw = {"stellar": clone, "outside": "crop", "resolving_power": IGRINS_R}
    ccf = CrossCorrelator(clone.wavelength, clone.model_flux, IGRINS_R)
    print(
        f"Clone: PHOENIX 3900 K H band {lo:.0f}–{hi:.0f} Å, {clone.n_lines} lines, "
        f"native RMS {100 * clone.rms:.2f} %, {how}. Data: IGRINS H, CPD-57 1131, "
        f"{len(orders_all)} orders; {len(inside)} inside the clone (± {margin:g} Å): "
        f"indices {[o.meta['index'] for o in inside]}; partly inside (not fitted): "
        f"{[o.meta['index'] for o in partial]}. Single-order fits: "
        f"{'every other order (--quick)' if args.quick else 'all of them'}. Defaults, "
        f"R {IGRINS_R:,.0f} (IGRINS, fixed), `outside='crop'`. CCF: the clone's model at R "
        "45,000 against the good pixels over ±400 km/s, continuum a degree-6 polynomial through "
        "the upper envelope (section 1's cross-correlation).\n"
    )
    rows, single = [], {}
    for o in singles:
        r, wall, before, _ = fit_orders([o], **kw)
        single[o.meta["index"]] = r
        g = o.good
        v_ccf = ccf.rv(o.wavelength[g], o.flux[g], o.uncertainty[g], degree=6)
        rows.append(
            [
                o.meta["index"], f"{o.wavelength[o.good][0]:.0f}–{o.wavelength[o.good][-1]:.0f}",
                pm(r.rv.value, r.rv_uncertainty.value, 3), fmt(v_ccf, 2), pm(r.vsini.value,
                r.vsini_uncertainty.value, 2),
                pm(global_value(r, "line_strength"),
                   r.uncertainties.get("line_strength", float("nan")), 3),
                pm(global_value(r, "veiling"), r.uncertainties.get("veiling", float("nan")), 3),
                fmt(r.chi2_reduced, 2), flag_codes(r), fmt(wall, 1), fmt(before, 2),
            ]
        )  # fmt: skip
        print(f"<!-- order {o.meta['index']} done -->", flush=True)
    joint, wall, before, _ = fit_orders(inside, **kw)
    rows.append(
        [
            f"**joint ({len(inside)} orders)**", "",
            pm(joint.rv.value, joint.rv_uncertainty.value, 3), "",
            pm(joint.vsini.value, joint.vsini_uncertainty.value, 2),
            pm(global_value(joint, "line_strength"),
               joint.uncertainties.get("line_strength", float("nan")), 3),
            pm(global_value(joint, "veiling"),
               joint.uncertainties.get("veiling", float("nan")), 3),
            fmt(joint.chi2_reduced, 2), flag_codes(joint), fmt(wall, 1), fmt(before, 2),
        ]
    )  # fmt: skip
    headers = ["order", "Å", "RV ± σ (km/s)", "CCF RV (km/s)", "v sin i ± σ (km/s)",
               "line strength",
               "veiling", "χ²_red", "flags", "wall (s)", "load"]  # fmt: skip
    print(table(headers, rows))
    rv = np.array([single[k].rv.value for k in single])
    err = np.array([single[k].rv_uncertainty.value for k in single])
    ok = np.isfinite(err) & (err > 0)
    chi2 = float(np.sum(((rv[ok] - joint.rv.value) / err[ok]) ** 2))
    dof = int(ok.sum()) - 1
    print(
        f"\nSingle-order RVs about the joint RV {joint.rv.value:.3f} km/s: χ² = {chi2:.1f} for "
        f"{dof} dof, χ²/dof = {chi2 / max(dof, 1):.1f} (target ≤ 2); single-order RV spread "
        f"{np.ptp(rv):.2f} km/s (s.d. {sd(rv):.2f}). The joint fit's own per-order rows "
        f"(`result.orders`, one Gauss–Newton step from the joint solution): χ² = "
        f"{joint.meta.get('order_rv_chi2', float('nan')):.1f} for "
        f"{joint.meta.get('order_rv_dof', 0)} dof.\n"
    )
    ot = joint.orders
    cols = [c for c in ("rv", "rv_uncertainty", "vsini", "vsini_uncertainty", "chi2_reduced")
            if c in ot.colnames]  # fmt: skip
    jrows = []
    for k, o in enumerate(inside):
        jrows.append([o.meta["index"]] + [fmt(getattr(ot[c][k], "value", ot[c][k]), 3)
                                          for c in cols])  # fmt: skip
    print("Joint fit, `result.orders`:\n")
    print(table(["order"] + cols, jrows))
    rng = np.random.default_rng(12)
    srows = []
    for trial in range(3):
        size = int(rng.integers(3, min(6, len(inside)) + 1))
        pick = sorted(rng.choice(len(inside), size=size, replace=False))
        subset = [inside[k] for k in pick]
        r, wall, before, _ = fit_orders(subset, **kw)
        diff = r.vsini.value - joint.vsini.value
        srows.append(
            [
                trial, [o.meta["index"] for o in subset], pm(r.vsini.value,
                r.vsini_uncertainty.value, 2),
                fmt(diff, 2), fmt(diff / r.vsini_uncertainty.value, 1),
                "yes" if abs(diff) <= 2 * r.vsini_uncertainty.value else "**NO**",
                pm(r.rv.value, r.rv_uncertainty.value, 3), fmt(r.chi2_reduced, 2), flag_codes(r),
                fmt(wall, 1), fmt(before, 2),
            ]
        )  # fmt: skip
    all_orders = pm(joint.vsini.value, joint.vsini_uncertainty.value)
    print(f"\nv sin i from random subsets against the all-order {all_orders} km/s:\n")
    print(
        table(
            ["subset", "orders", "v sin i ± σ", "Δ (km/s)", "Δ/σ_subset", "within 2σ",
             "RV ± σ", "χ²_red", "flags", "wall (s)", "load"],
            srows,
        )
    )  # fmt: skip


# ---------------------------------------------------------------------------
# 4. HPF A0V standards
# ---------------------------------------------------------------------------
def hpf_orders(which: int):
    import muler.hpf

    from blase_specutils.astro.adapters import spectra_to_arrays
    from blase_specutils.datasets import hpf_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spectra = muler.hpf.HPFSpectrumList.read(str(hpf_path(which))).deblaze()
        return spectra_to_arrays(spectra)


def a0v_clones(args, lo: float, hi: float):
    from blase_specutils.astro.templates import read_muler_template

    def telluric():
        w, f = read_muler_template(TELFIT, wavelength_range=(lo, hi))
        return bs.clone(w, f, flatten=False, prominence=0.01, progress=False, epochs=600)

    def stellar():
        w, f = read_muler_template(PHOENIX_10K, wavelength_range=(lo, hi))
        return bs.clone(w, f, teff=10000, progress=False, epochs=600)

    key = f"{lo:.0f}_{hi:.0f}"
    tell, how_t = cached_clone(args, f"telfit_{key}", telluric)
    star, how_s = cached_clone(args, f"phoenix10k_{key}", stellar)
    print(
        f"Telluric clone (TelFit HPF template, flatten=False, prominence 0.01, 600 epochs): "
        f"{tell.n_lines} lines, {how_t}. Stellar clone (PHOENIX 10,000 K, teff=10000, 600 "
        f"epochs): {star.n_lines} lines, {how_s}.\n"
    )
    return tell, star


def section_a0v(args) -> None:
    stars = {0: "HR 3039", 1: "HR 4829"}
    orders = {k: hpf_orders(k) for k in stars}
    lo = min(o.wavelength[0] for v in orders.values() for o in v) - 30.0
    hi = max(o.wavelength[-1] for v in orders.values() for o in v) + 30.0
    tell, star = a0v_clones(args, math.floor(lo), math.ceil(hi))
    kw = {"stellar": star, "telluric": tell}
    if args.a0v_vsini is not None:
        kw["vsini"] = args.a0v_vsini
    picks = list(range(0, 28, 4)) if args.quick else list(range(28))
    print(
        f"Single orders fitted: {picks}{' (--quick)' if args.quick else ''}; "
        f"fit: defaults{'' if args.a0v_vsini is None else f', vsini={args.a0v_vsini:g}'}, "
        "R 55,000 (the fit's default, HPF's nominal value), muler-deblazed orders.\n"
    )
    summary = []
    for which, name in stars.items():
        joint, wall_j, before_j, _ = fit_orders(orders[which], **kw)
        rows = []
        n_in = 0
        for k in picks:
            r, wall, before, _ = fit_orders([orders[which][k]], **kw)
            o = orders[which][k]
            pull = (r.rv.value - joint.rv.value) / math.hypot(r.rv_uncertainty.value,
            joint.rv_uncertainty.value)
            inside = bool(np.isfinite(pull) and abs(pull) <= 3.0)
            n_in += inside
            rows.append(
                [
                    k, f"{o.wavelength[0]:.0f}–{o.wavelength[-1]:.0f}",
                    pm(r.rv.value, r.rv_uncertainty.value, 2), fmt(pull, 1),
                    "yes" if inside else "**NO**",
                    pm(r.vsini.value, r.vsini_uncertainty.value, 1), fmt(r.chi2_reduced, 2),
                    flag_codes(r),
                    fmt(wall, 1), fmt(before, 2),
                ]
            )  # fmt: skip
        rows.append(
            [
                f"**joint ({len(orders[which])} orders)**", "",
                pm(joint.rv.value, joint.rv_uncertainty.value, 2), "", "",
                pm(joint.vsini.value, joint.vsini_uncertainty.value, 1), fmt(joint.chi2_reduced, 2),
                flag_codes(joint), fmt(wall_j, 1), fmt(before_j, 2),
            ]
        )  # fmt: skip
        print(f"### {name} ({'Goldilocks file ' + str(which)})\n")
        print(
            table(
                ["order", "Å", "RV ± σ (km/s)", "(RV − joint)/σ", "within 3σ",
                 "v sin i ± σ (km/s)", "χ²_red", "flags", "wall (s)", "load"],
                rows,
            )
        )  # fmt: skip
        print(
            f"\nWithin 3σ of the joint RV: {n_in} of {len(picks)}. Joint fit's own "
            f"per-order χ² about the joint RV: {joint.meta.get('order_rv_chi2', float('nan')):.1f}"
            f" for {joint.meta.get('order_rv_dof', 0)} dof.\n"
        )
        summary.append([name, len(orders[which]), fmt(wall_j, 1),
                        "yes" if wall_j <= 30.0 else "**NO**", fmt(before_j, 2)])  # fmt: skip
    print("Wall time of the 28-order fit with tellurics (target ≤ 30 s on this CPU):\n")
    print(table(["star", "orders", "wall (s)", "≤ 30 s", "load before"], summary))


# ---------------------------------------------------------------------------
# 5. WASP 69
# ---------------------------------------------------------------------------
def section_wasp69(args) -> None:
    from blase_specutils.astro.adapters import read_table_spectrum, spectra_to_arrays
    from blase_specutils.datasets import wasp69_path

    order = spectra_to_arrays(read_table_spectrum(wasp69_path()))[0]
    lo, hi = order.wavelength[0] - 30.0, order.wavelength[-1] + 30.0
    wl, fl = phoenix("Z", lo, hi)
    clone, how = cached_clone(
        args, f"Z_{lo:.0f}_{hi:.0f}", lambda: bs.clone(wl, fl, teff=3900, progress=False)
    )
    print(
        f"Data: WASP 69, one HPF order, {order.n_good} good px. Clone: PHOENIX 3900 K Z band "
        f"{lo:.0f}–{hi:.0f} Å, {clone.n_lines} lines, {how}. Fit: defaults.\n"
    )
    r, wall, before, caught = fit_orders([order], stellar=clone)
    d = 1e3 * (r.rv.value - WASP69_RV)
    rows = [
        [
            pm(r.rv.value, r.rv_uncertainty.value, 3), fmt(d, 0),
            "yes" if abs(d) <= 30 else "**NO**",
            pm(r.vsini.value, r.vsini_uncertainty.value, 2),
            pm(global_value(r, "line_strength"),
               r.uncertainties.get("line_strength", float("nan")), 3),
            pm(global_value(r, "veiling"), r.uncertainties.get("veiling", float("nan")), 3),
            fmt(r.resolving_power.value, 0), fmt(r.initial_chi2_reduced, 2), fmt(r.chi2_reduced, 2),
            "yes" if r.chi2_reduced <= 27 else "**NO**", fmt(chi2_per_pixel(r), 2),
            f"{r.meta.get('n_dof', float('nan'))} ({fmt(r.meta.get('n_line_dof'), 0)})",
            flag_codes(r), fmt(wall, 1), fmt(before, 2),
        ]
    ]  # fmt: skip
    print(
        table(
            ["RV ± σ (km/s)", "RV − (−9.428) (m/s)", "within 30 m/s", "v sin i ± σ (km/s)",
             "line strength", "veiling", "R", "χ²_red initial", "χ²_red", "≤ 27",
             "χ² / good px", "dof (line dof)", "flags",
             "wall (s)", "load"],
            rows,
        )
    )  # fmt: skip
    if caught:
        print("\nWarnings: " + " | ".join(c[:300] for c in caught))


SECTIONS = {
    "injection": ("1. Injection grid (independent generator, H band)", section_injection),
    "mismatch": ("2. Template mismatch (depths 30 %, widths 20 %)", section_mismatch),
    "igrins": ("3. IGRINS H, CPD-57 1131: single orders and joint", section_igrins),
    "a0v": ("4. HPF A0V standards: single orders and joint, with tellurics", section_a0v),
    "wasp69": ("5. WASP 69, defaults", section_wasp69),
}


def run_section(name: str, function, args) -> None:
    """Run one section; on failure print the traceback and carry on."""
    print(f"\n## {name}\n", flush=True)
    t0, l0 = time.perf_counter(), load()
    try:
        function(args)
    except Exception:  # noqa: BLE001 - a benchmark reports failures instead of dying
        print("**FAILED**\n\n```\n" + traceback.format_exc() + "```")
    print(
        f"\n_section wall time {time.perf_counter() - t0:.1f} s, load {l0:.2f} at the start, "
        f"{load():.2f} at the end_",
        flush=True,
    )


def main(argv=None) -> int:
    global bs
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--section", choices=("all",) + tuple(SECTIONS), default="all")
    parser.add_argument(
        "--seeds", type=int, default=None, help="noise seeds per injection cell (10; quick 3)"
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="3 seeds a cell, 1 mismatch seed, every other IGRINS order alone, every 4th "
        "HPF order alone",
    )  # fmt: skip
    parser.add_argument("--mismatch-band", choices=("H", "Z"), default="H")
    parser.add_argument(
        "--a0v-vsini", type=float, default=None,
        help="initial v sin i of the A0V fits (default: none, the fit's own search)",
    )  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("/tmp"), help="where clones are cached (ECSV)"
    )
    parser.add_argument("--rebuild-clones", action="store_true", help="ignore cached clones")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    # line-buffered, so messages that libraries write to stderr land next to their fit in a log
    sys.stdout.reconfigure(line_buffering=True)
    if args.seeds is None:
        args.seeds = 3 if args.quick else 10
    # the package's data module reads the shared folder through this variable
    os.environ.setdefault("BLASE_SPECUTILS_DATA", str(args.data_dir))
    import blase_specutils

    bs = blase_specutils
    torch.set_num_threads(args.threads)
    print(f"# blase_specutils robustness benchmark{' (--quick)' if args.quick else ''}\n")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, load {load():.2f}, blase_specutils from "
        f"{Path(bs.__file__).parent}, command: "
        f"`python {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}`"
    )
    t0 = time.perf_counter()
    names = list(SECTIONS) if args.section == "all" else [args.section]
    for name in names:
        title, function = SECTIONS[name]
        run_section(title, function, args)
    print(f"\n_total wall time {time.perf_counter() - t0:.1f} s_")
    return 0


if __name__ == "__main__":
    sys.exit(main())
