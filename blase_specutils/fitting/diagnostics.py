"""After the fit: uncertainties (lines held, and with the trained lines marginalised),
per-order estimates, the effective degrees of freedom and the flags."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..core.forward import ForwardModel
from ..core.lineforest import SPEED_OF_LIGHT_KMS, LineForest
from .global_stage import MAX_R_FLOOR_LOWERINGS
from .orders import REST_FRAME_COVERAGE_WARN
from .result import FitQualityWarning

C_KMS = SPEED_OF_LIGHT_KMS


def warn_at_bounds(model: ForwardModel, uncertainties: dict, fit_vsini: bool, fit_r: bool) -> dict:
    """Warn (and drop the curvature error) when a global parameter ended on its bound.

    Returns ``{name: reason}`` for every uncertainty dropped.
    """
    notes = {}
    if fit_vsini:
        vsini = float(model.rotation.effective_vsini().detach())
        if vsini >= 0.99 * model.rotation.vsini_max:
            uncertainties["vsini"] = float("nan")
            notes["vsini"] = (
                f"v sin i ended at its ceiling vsini_max = {model.rotation.vsini_max:.4g} km/s"
            )
            warnings.warn(
                f"{notes['vsini']}; refit with a larger vsini or vsini_max",
                UserWarning,
                stacklevel=4,
            )
    if fit_r:
        r = float(model.instrument.resolving_power.detach())
        r_min = model.instrument.resolving_power_min
        if r_min is not None and r <= 1.01 * r_min:
            uncertainties["resolving_power"] = float("nan")
            notes["resolving_power"] = (
                f"R ended at {r:.0f}, at the smallest R its kernel holds ({r_min:.0f}), after "
                f"{MAX_R_FLOOR_LOWERINGS} lowerings of that floor in a stage"
            )
            warnings.warn(
                f"the resolving power ended at {r:.0f}, at or below the smallest R its kernel "
                f"holds ({r_min:.0f}); the instrumental kernel is truncated: refit starting "
                "from a lower resolving_power",
                UserWarning,
                stacklevel=4,
            )
    return notes


#: Global parameters with curvature uncertainties: (name, parameter getter, step of the
#: central difference, whether the parameter is stored as a logarithm).
UNCERTAINTY_SPECS = (
    ("rv", lambda m: m.rv, 0.01, False),
    ("vsini", lambda m: m.rotation.vsini, 0.02, False),
    ("limb_darkening", lambda m: m.rotation.limb_darkening, 0.01, False),
    ("resolving_power", lambda m: m.instrument.log_resolving_power, 1e-3, True),
    ("line_strength", lambda m: m.ln_line_strength, 1e-3, True),
    ("veiling", lambda m: m.veiling, 1e-3, False),
)


@dataclass
class Jacobian:
    """Weighted model derivatives at the solution, for the errors and per-order steps."""

    names: list
    columns: torch.Tensor  # [n, p]: ∂model/∂θ · w
    nuisance: list  # per order [n_k, q]: the continuum columns of that order's pixels
    residual: torch.Tensor  # [n]: (data − model) · w
    rows: list  # per order: boolean pixel selection
    log_scale: dict  # name → factor turning a log-parameter σ into the parameter's


@torch.no_grad()
def global_jacobian(model: ForwardModel, data, inv_sigma, good) -> Jacobian:
    """Central-difference Jacobian of the free globals (one-sided at a bound of 0)."""
    w = (inv_sigma * good).double()
    base = model().double()
    names, cols, log_scale = [], [], {}
    for name, getter, h, is_log in UNCERTAINTY_SPECS:
        p = getter(model)
        if not p.requires_grad:
            continue
        if name == "veiling":  # the model uses max(r, 0): difference from there
            p.clamp_(min=0.0)
        orig = p.detach().clone()
        one_sided = name == "veiling" and float(orig) - h < 0
        p.copy_(orig + h)
        m_plus = model().double()
        if one_sided:
            column = (m_plus - base) / h * w
        else:
            p.copy_(orig - h)
            column = (m_plus - model().double()) / (2 * h) * w
        p.copy_(orig)
        if torch.any(column != 0):
            # else the model does not change with it here (e.g. v sin i below half the
            # fine grid's step, where the rotation kernel is exactly a delta): no
            # curvature, no error bar (NaN, explained by the caller), not a zero variance
            names.append(name)
            cols.append(column)
            if is_log:
                log_scale[name] = float(torch.exp(orig))
    n = base.numel()
    columns = torch.stack(cols, dim=1) if cols else torch.zeros(n, 0, dtype=torch.float64)
    basis = model.continuum_basis.double()
    continuum = model.continuum().double()
    shape = torch.where(continuum != 0, base / continuum, torch.zeros_like(base))
    rows, nuisance = [], []
    for k in range(model.n_orders):
        sel = model.order_index == k
        rows.append(sel)
        nuisance.append(basis[sel] * (shape[sel] * w[sel])[:, None])
    residual = (data.double() - base) * w
    return Jacobian(names, columns, nuisance, residual, rows, log_scale)


def global_uncertainties(jac: Jacobian) -> dict:
    """Gauss–Newton 1-σ errors of the free globals, the continuum marginalised."""
    from ..core.uncertainty import covariance

    out = {name: float("nan") for name, *_ in UNCERTAINTY_SPECS}
    if not jac.names:
        return out
    cov = covariance(jac.columns, dense_nuisance(jac))
    if cov is None:
        return out
    for i, name in enumerate(jac.names):
        variance = float(cov[i, i])
        if variance > 0 and math.isfinite(variance):  # never a zero error bar
            out[name] = math.sqrt(variance) * jac.log_scale.get(name, 1.0)
    return out


def dense_nuisance(jac: Jacobian) -> torch.Tensor:
    """Every order's continuum columns in one ``[n, q]`` matrix (zero off its pixels)."""
    n = jac.columns.shape[0]
    q = sum(b.shape[1] for b in jac.nuisance)
    nuisance = torch.zeros(n, q, dtype=torch.float64)
    start = 0
    for sel, block in zip(jac.rows, jac.nuisance):
        nuisance[sel, start : start + block.shape[1]] = block
        start += block.shape[1]
    return nuisance


@torch.no_grad()
def telluric_scale_uncertainties(
    model: ForwardModel, jac: Jacobian, inv_sigma, good, step: float = 1e-3
) -> list[float]:
    """Gauss–Newton 1-σ errors of the telluric optical-depth scale(s) ``s_m`` (one per
    molecule of a telluric model by molecule), the free globals of ``jac`` and the
    continua marginalised, lines held; NaN where undefined or not fitted. Unscaled (the
    caller applies the Birge ratio)."""
    from ..core.uncertainty import covariance

    p = model.ln_telluric_scale
    n_scales = p.numel()
    if model.telluric is None or not p.requires_grad:
        return [float("nan")] * n_scales
    w = (inv_sigma * good).double()
    flat = p.view(-1)
    original = p.detach().clone()
    cols = []
    for m in range(n_scales):
        flat[m] = original.view(-1)[m] + step
        plus = model().double()
        flat[m] = original.view(-1)[m] - step
        minus = model().double()
        p.copy_(original)
        cols.append((plus - minus) / (2 * step) * w)
    columns = torch.cat([jac.columns, torch.stack(cols, dim=1)], dim=1)
    cov = covariance(columns, dense_nuisance(jac))
    out = [float("nan")] * n_scales
    if cov is None:
        return out
    first = jac.columns.shape[1]
    scales = torch.exp(original.double()).view(-1)
    for m in range(n_scales):
        variance = float(cov[first + m, first + m])
        if variance > 0 and math.isfinite(variance):  # never a zero error bar
            out[m] = math.sqrt(variance) * float(scales[m])
    return out


def line_values(forest: LineForest) -> dict:
    return {
        name: getattr(forest, name).detach().clone()
        for name in ("ln_amplitude", "ln_sigma", "ln_gamma", "center_shift")
    }


TRAINABLE_PARAMETER = {
    "amplitude": "ln_amplitude",
    "sigma": "ln_sigma",
    "gamma": "ln_gamma",
    "center": "center_shift",
}


def effective_line_parameters(forest: LineForest, start: dict, trainable, learning_rate):
    """Trained line parameters that left their starting value by more than an Adam step
    (the L1 prior's kink holds the others: the lasso's degrees of freedom)."""
    count = 0
    for name in trainable:
        parameter = TRAINABLE_PARAMETER.get(name)
        if parameter is None:
            continue
        threshold = learning_rate * (0.05 if parameter == "center_shift" else 1.0)
        delta = (getattr(forest, parameter).detach() - start[parameter]).abs()
        count += int((delta > threshold).sum())
    return count


def active_lines(forest: LineForest, start: dict, trainable, learning_rate) -> np.ndarray:
    """Indices of the lines whose amplitude left the L1 prior's kink (the lasso's active
    set: the lines the data, not the prior, placed)."""
    if "amplitude" not in trainable:
        return np.zeros(0, dtype=np.int64)
    delta = (forest.ln_amplitude.detach() - start["ln_amplitude"]).abs()
    return np.flatnonzero((delta > learning_rate).cpu().numpy())


def observed_windows(model: ForwardModel, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed centres (Å, at the fitted RV) and half-widths (Å) of the footprints of
    ``lines`` in the data: three intrinsic FWHM plus v sin i and three instrumental FWHM."""
    forest = model.stellar
    with torch.no_grad():
        centre = (forest.center_ref + forest.shift(model.rv)).double().cpu().numpy()[lines]
        sigma = torch.exp(forest.ln_sigma).double().cpu().numpy()[lines]
        gamma = torch.exp(forest.ln_gamma).double().cpu().numpy()[lines]
        vsini = float(model.rotation.effective_vsini())
        resolution = C_KMS / float(model.instrument.resolving_power)
    fwhm = np.sqrt((2.3548 * sigma) ** 2 + (2 * gamma) ** 2)
    return centre, 3.0 * fwhm + centre * (vsini + 3.0 * resolution) / C_KMS


def colour_lines(centre: np.ndarray, half: np.ndarray) -> list[list[int]]:
    """Groups of lines (positions into ``centre``) whose footprints do not overlap, so
    each group's derivatives come from one pair of model evaluations."""
    order = np.argsort(centre)
    groups: list[list[int]] = []
    reach: list[float] = []  # right edge of each group's last footprint
    for i in order:
        left = centre[i] - half[i]
        for g, edge in enumerate(reach):
            if left > edge:
                groups[g].append(int(i))
                reach[g] = centre[i] + half[i]
                break
        else:
            groups.append([int(i)])
            reach.append(centre[i] + half[i])
    return groups


@torch.no_grad()
def line_blocks(model, jac: Jacobian, lines: np.ndarray, inv_sigma, good, step: float = 0.02):
    """Per order: its pixels and the weighted derivative columns of the model with respect
    to the ln-amplitudes of ``lines`` there, then its continuum columns (for
    :func:`blase_specutils.core.uncertainty.marginal_covariance`), and which line each
    of the first columns belongs to."""
    forest = model.stellar
    w = (inv_sigma * good).double()
    pixel_wl = torch.as_tensor(model._all_edges.mean(1))
    centre, half = observed_windows(model, lines)
    columns = {}  # line position → (pixel indices, values)
    parameter = forest.ln_amplitude
    original = parameter.detach().clone()
    for group in colour_lines(centre, half):
        index = torch.as_tensor(lines[group], device=parameter.device)
        parameter[index] += step
        plus = model().double()
        parameter[index] -= 2 * step
        minus = model().double()
        parameter.copy_(original)
        change = (plus - minus).cpu() / (2 * step) * w.cpu()
        for i in group:
            inside = torch.nonzero(torch.abs(pixel_wl - centre[i]) <= half[i]).flatten()
            if inside.numel():
                columns[i] = (inside, change[inside])
    blocks, owners = [], []
    for k, rows in enumerate(jac.rows):
        rows_cpu = rows.cpu()
        position = torch.cumsum(rows_cpu.long(), 0) - 1  # pixel → row within the order
        n_k = int(rows_cpu.sum())
        mine = [i for i, (pix, _) in columns.items() if bool(rows_cpu[pix].any())]
        dense = torch.zeros(n_k, len(mine), dtype=torch.float64)
        for c, i in enumerate(mine):
            pix, values = columns[i]
            keep = rows_cpu[pix]
            dense[position[pix[keep]], c] = values[keep]
        blocks.append((rows_cpu, torch.cat([dense, jac.nuisance[k].cpu()], dim=1)))
        owners.append(mine)
    return blocks, owners


def marginal_uncertainties(model, jac: Jacobian, lines: np.ndarray, inv_sigma, good):
    """Errors of the globals with the trained amplitudes of ``lines`` and the continua
    marginalised, and each of those lines' σ(ln a) (NaN for the others)."""
    from ..core.uncertainty import marginal_covariance

    out = {name: float("nan") for name, *_ in UNCERTAINTY_SPECS}
    line_sigma = np.full(model.stellar.n_lines, np.nan)
    if not jac.names:
        return out, line_sigma
    blocks, owners = line_blocks(model, jac, lines, inv_sigma, good)
    cov, variances = marginal_covariance(jac.columns.cpu(), blocks)
    if cov is not None:
        for i, name in enumerate(jac.names):
            variance = float(cov[i, i])
            if variance > 0 and math.isfinite(variance):
                out[name] = math.sqrt(variance) * jac.log_scale.get(name, 1.0)
    for mine, variance in zip(owners, variances):
        if variance is None:
            continue
        for c, i in enumerate(mine):
            v = float(variance[c])
            if v > 0 and math.isfinite(v):
                line_sigma[lines[i]] = math.sqrt(v)
    return out, line_sigma


@torch.no_grad()
def line_velocities(
    model: ForwardModel, data, inv_sigma, good, rel_step: float = 0.02, min_depth: float = 0.01,
    scale_by_local_chi2: bool = True,
):  # fmt: skip
    """Each stellar line's own velocity (paper §8.1), by line-by-line template matching.

    With everything else at the fit, the data's residual is projected on the derivative
    of the model with respect to one line's centre (a central difference of the whole
    model; lines whose footprints do not overlap are moved together): one Gauss–Newton
    step ``δλ = Σ w²J r / Σ w²J²`` with ``σ = 1/√Σ w²J²``, scaled by the window's own
    √max(1, χ²_red) (not when ``scale_by_local_chi2`` is False: then ``1/σ²`` is the
    line's velocity information). The line's velocity is the fit's RV plus its trained
    centre shift plus that step, in km/s.

    Returns
    -------
    velocity, velocity_uncertainty : numpy.ndarray
        Per line of the stellar clone, km/s (NaN for lines with no good pixel, or that the
        data do not constrain).
    """
    forest = model.stellar
    n = forest.n_lines
    velocity = np.full(n, np.nan)
    sigma_v = np.full(n, np.nan)
    w = (inv_sigma * good).double().cpu()
    residual = (data.double().cpu() - model().double().cpu()) * w
    pixel_wl = torch.as_tensor(model._all_edges.mean(1))
    good_wl = pixel_wl[good.cpu().bool()]
    if good_wl.numel() == 0:
        return velocity, sigma_v
    # Lines shallower than ``min_depth`` (their peak depth a/(√(2π)σ + πγ)·…, before
    # broadening) carry almost no velocity information and would only add evaluations.
    amplitude = torch.exp(forest.ln_amplitude.detach()).double().cpu().numpy()
    width = (
        math.sqrt(2 * math.pi) * torch.exp(forest.ln_sigma.detach()).double().cpu().numpy()
        + math.pi * torch.exp(forest.ln_gamma.detach()).double().cpu().numpy()
    )
    lines = np.flatnonzero(amplitude / width >= min_depth)
    centre, half = observed_windows(model, lines)
    sorted_wl = good_wl.sort().values.numpy()
    lo = np.searchsorted(sorted_wl, centre - half)
    hi = np.searchsorted(sorted_wl, centre + half)
    inside_data = hi > lo
    lines = lines[inside_data]
    if lines.size == 0:
        return velocity, sigma_v
    centre, half = centre[inside_data], half[inside_data]
    resolution = float(C_KMS / float(model.instrument.resolving_power.detach()))
    parameter = forest.center_shift
    original = parameter.detach().clone()
    step = torch.as_tensor(rel_step * centre * resolution / C_KMS, dtype=parameter.dtype)
    rv = float(model.rv.detach())
    trained_shift = original.double().cpu().numpy()
    reference = forest.center_ref.double().cpu().numpy()
    for group in colour_lines(centre, half):
        group = np.asarray(group)
        index = torch.as_tensor(lines[group], device=parameter.device)
        delta = step[group].to(parameter.device)
        parameter[index] += delta
        plus = model().double().cpu()
        parameter.copy_(original)
        parameter[index] -= delta
        minus = model().double().cpu()
        parameter.copy_(original)
        # d model / d(observed centre): the parameter is a rest-frame shift, stretched
        # by the Doppler factor on its way to the data
        doppler = 1.0 + rv / C_KMS
        for g in group:
            pix = torch.nonzero(torch.abs(pixel_wl - centre[g]) <= half[g]).flatten()
            if pix.numel() == 0:
                continue
            jac = (plus[pix] - minus[pix]) / (2 * float(step[g]) * doppler) * w[pix]
            info = float((jac * jac).sum())
            if not info > 0:
                continue
            r = residual[pix]
            n_pix = int((w[pix] > 0).sum())
            local = float((r * r).sum()) / max(n_pix - 1, 1)
            line = lines[g]
            d_lambda = float((jac * r).sum()) / info
            own = C_KMS * trained_shift[line] / reference[line]
            velocity[line] = rv + own + C_KMS * d_lambda / centre[g]
            scale = math.sqrt(max(1.0, local)) if scale_by_local_chi2 else 1.0
            sigma_v[line] = C_KMS / centre[g] / math.sqrt(info) * scale
    return velocity, sigma_v


def line_by_line_rv(velocity, uncertainty, clip: float = 5.0, iterations: int = 10) -> dict:
    """A robust weighted mean of per-line velocities: the line-by-line RV.

    Lines further than ``clip`` of their (χ²-scaled) errors from the mean are rejected,
    iteratively; the error is that of the weighted mean, scaled by √max(1, χ²_red) of
    the kept lines about it (so line-to-line scatter beyond the errors widens it).
    """
    v = np.asarray(velocity, dtype=float)
    s = np.asarray(uncertainty, dtype=float)
    ok = np.isfinite(v) & np.isfinite(s) & (s > 0)
    out = {"rv": float("nan"), "rv_uncertainty": float("nan"), "n_lines": 0,
           "n_rejected": 0, "chi2_reduced": float("nan")}  # fmt: skip
    if ok.sum() < 2:
        return out
    keep = ok.copy()
    mean, scale = 0.0, 1.0
    for _ in range(iterations):
        weight = 1.0 / s[keep] ** 2
        mean = float(np.sum(weight * v[keep]) / np.sum(weight))
        chi2 = float(np.sum(weight * (v[keep] - mean) ** 2)) / max(int(keep.sum()) - 1, 1)
        scale = math.sqrt(max(1.0, chi2))
        new = ok & (np.abs(v - mean) <= clip * scale * s)
        if np.array_equal(new, keep) or new.sum() < 2:
            break
        keep = new
    weight = 1.0 / s[keep] ** 2
    mean = float(np.sum(weight * v[keep]) / np.sum(weight))
    dof = max(int(keep.sum()) - 1, 1)
    chi2 = float(np.sum(weight * (v[keep] - mean) ** 2)) / dof
    out.update(
        rv=mean,
        rv_uncertainty=math.sqrt(max(1.0, chi2) / float(np.sum(weight))),
        n_lines=int(keep.sum()),
        n_rejected=int(ok.sum() - keep.sum()),
        chi2_reduced=chi2,
    )
    return out


def order_diagnostics(model: ForwardModel, jac: Jacobian, values: dict, order_indices):
    """Per order: its RV and v sin i one Gauss–Newton step from the joint solution (the
    lines and the other orders held), their errors (Birge-scaled by the order's own
    χ²_red) and χ²_red. Returns a dict of columns."""
    from ..core.uncertainty import gauss_newton_step

    columns = {
        "order": [],
        "wavelength_min": [],
        "wavelength_max": [],
        "n_good_pixels": [],
        "chi2_reduced": [],
        "rv": [],
        "rv_uncertainty": [],
        "vsini": [],
        "vsini_uncertainty": [],
    }
    edges = model._all_edges
    for k, sel in enumerate(jac.rows):
        r = jac.residual[sel]
        used = r != 0
        n_good = int(used.sum())
        block = jac.nuisance[k]
        p = jac.columns.shape[1]
        n_dof = n_good - block.shape[1] - p
        chi2_k = float(torch.sum(r * r))
        chi2_red = chi2_k / n_dof if n_dof > 0 else float("nan")
        found = None
        if n_dof > 0 and p:
            found = gauss_newton_step(jac.columns[sel], block, r)
        birge = math.sqrt(max(1.0, chi2_red)) if math.isfinite(chi2_red) else float("nan")
        sel_np = sel.cpu().numpy()
        columns["order"].append(int(order_indices[k]))
        columns["wavelength_min"].append(float(edges[sel_np, 0].min()))
        columns["wavelength_max"].append(float(edges[sel_np, 1].max()))
        columns["n_good_pixels"].append(n_good)
        columns["chi2_reduced"].append(chi2_red)
        for name in ("rv", "vsini"):
            value, error = float("nan"), float("nan")
            if found is not None and name in jac.names:
                i = jac.names.index(name)
                step, cov = found
                value = values[name] + float(step[i])
                variance = float(cov[i, i])
                if variance > 0 and math.isfinite(variance):
                    error = math.sqrt(variance) * birge
            columns[name].append(value)
            columns[f"{name}_uncertainty"].append(error)
    return columns


#: Per-order RVs disagree when their χ² about the joint RV has a p-value below this.
ORDER_DISAGREEMENT_P = 1e-3


#: A second search minimum within this Δχ² (in units of the search's χ²_red) is ambiguous.
AMBIGUOUS_DELTA_CHI2 = 25.0


def order_agreement(columns: dict, rv: float) -> tuple[float, int]:
    """χ² of the per-order RVs about ``rv`` and its degrees of freedom."""
    values = np.asarray(columns["rv"], dtype=float)
    errors = np.asarray(columns["rv_uncertainty"], dtype=float)
    ok = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    if ok.sum() < 2:
        return float("nan"), 0
    return float(np.sum(((values[ok] - rv) / errors[ok]) ** 2)), int(ok.sum() - 1)


def fit_flags(*, search, rv, rv_max, n_dof, n_good, n_free, uncertainty_notes,
               line_stage_undone, order_chi2, order_dof, rest_frame_outside,
               chi2_red, vsini=0.0, resolution_kms=0.0, bounds=None,
               vsini_capped=False) -> dict:  # fmt: skip
    """Reasons to distrust a fit, ``{code: message}`` (empty when there are none).

    Flags that already have their own warning (a bound, the search edge, the rest-frame
    coverage, an undone line stage) are not warned again; the others warn here.
    """
    from scipy.stats import chi2 as chi2_distribution

    flags, quiet = {}, set()
    if search is not None:
        if search.at_edge:
            flags["search_edge"] = (
                f"the search's best RV {search.best_rv:.1f} km/s is on the edge of its range "
                f"{search.rv[0]:.0f} to {search.rv[-1]:.0f} km/s"
            )
            quiet.add("search_edge")
        if search.vsini_at_edge and not vsini_capped:  # a given ceiling: vsini_at_bound
            flags["search_vsini_edge"] = (
                f"the search's best v sin i is the largest it sampled ({search.best_vsini:.0f} "
                "km/s): a faster rotator, or broad lines the template cannot match"
            )
        # a second minimum on the search's edge is the surface running off, not a basin
        inner = [m for m in search.minima[1:] if search.rv[0] < m["rv"] < search.rv[-1]]
        if inner:
            best, second = search.minima[0], inner[0]
            scale = max(1.0, best["chi2"] / max(int(search.n_good.sum()), 1))
            delta = (second["chi2"] - best["chi2"]) / scale
            if delta < AMBIGUOUS_DELTA_CHI2:
                flags["rv_ambiguous"] = (
                    f"the search found a second minimum at RV {second['rv']:.1f} km/s "
                    f"(v sin i {second['vsini']:.0f}) only Δχ² = {delta:.1f} (scaled by "
                    f"χ²_red {scale:.3g}) above the best at {best['rv']:.1f} km/s"
                )
    if search is not None and len(search.rv) > 2:
        width = math.hypot(resolution_kms, 1.1 * vsini)
        moved = abs(rv - search.best_rv)
        if moved > max(2.0 * width, 5.0):
            flags["left_search_basin"] = (
                f"the fitted RV {rv:.2f} km/s lies {moved:.1f} km/s from the search's best "
                f"{search.best_rv:.2f} km/s, more than twice the line width ({width:.1f} km/s)"
            )
        # v sin i more than a factor 1.5 (about a step of the search grid) from the search's,
        # where both exceed the instrumental FWHM: the global stage broadened (or
        # sharpened) the template to fit a mismatch, and the RV went with it
        searched_vsini = search.best_vsini
        if min(vsini, searched_vsini) > resolution_kms > 0:
            ratio = max(vsini, searched_vsini) / min(vsini, searched_vsini)
            if ratio > 1.5:
                flags["left_search_basin"] = (
                    f"v sin i {vsini:.1f} km/s moved a factor {ratio:.2f} from the search's "
                    f"{searched_vsini:.1f} km/s (RV {search.best_rv:.2f} → {rv:.2f} km/s): the "
                    "template's lines are likely too deep or too narrow for this star; try "
                    "free=DEFAULT_FREE | {'line_strength'}"
                )
    searched = search is not None and len(search.vsini) > 2 and not vsini_capped
    if searched and vsini > 1.05 * float(search.vsini[-1]):
        flags["vsini_beyond_search"] = (
            f"v sin i {vsini:.0f} km/s is beyond the largest the search sampled "
            f"({float(search.vsini[-1]):.0f} km/s)"
        )
    for name, (value, lo, hi) in (bounds or {}).items():
        if not lo * 1.01 < value < hi * 0.99 and not (name == "veiling" and value <= lo):
            label = name.replace("_", " ")
            flags[f"{name}_at_bound"] = f"{label} {value:.3g} is on its bound ({lo:g}–{hi:g})"
    if abs(rv) > rv_max:
        flags["rv_beyond_rv_max"] = f"|RV| = {abs(rv):.1f} km/s exceeds rv_max = {rv_max:g} km/s"
    if n_dof <= 0:
        flags["too_few_pixels"] = f"{n_good} good pixels for {n_free} free parameters"
    for name, note in uncertainty_notes.items():
        if "ceiling" in note or "smallest R" in note:
            flags[f"{name}_at_bound"] = note
            quiet.add(f"{name}_at_bound")
    if line_stage_undone:
        flags["line_stage_undone"] = "the line stage made χ² worse and was undone"
        quiet.add("line_stage_undone")
    if order_dof > 0 and math.isfinite(order_chi2):
        p_value = float(chi2_distribution.sf(order_chi2, order_dof))
        if p_value < ORDER_DISAGREEMENT_P:
            flags["orders_disagree"] = (
                f"the per-order RVs scatter about the joint RV with χ² = {order_chi2:.1f} for "
                f"{order_dof} degrees of freedom (p = {p_value:.2g}): see result.orders"
            )
    if rest_frame_outside > REST_FRAME_COVERAGE_WARN:
        flags["rest_frame_outside"] = (
            f"{100 * rest_frame_outside:.0f} % of the good pixels fall outside the stellar "
            "clone in the star's rest frame"
        )
        quiet.add("rest_frame_outside")
    loud = {k: v for k, v in flags.items() if k not in quiet}
    if loud:
        warnings.warn(
            "the fit may be wrong: " + "; ".join(f"{k}: {v}" for k, v in loud.items()),
            FitQualityWarning,
            stacklevel=4,
        )
    return flags
