"""The global stages: the continuum-profiled χ², the search start, clipping, L-BFGS on the
few global parameters (RV, v sin i, R, line strength, veiling), the v sin i–R valley."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..cloning import CloneResult, load_clone
from ..core.components import ComponentForest, check_component_names
from ..core.forward import ForwardModel
from ..core.lineforest import SPEED_OF_LIGHT_KMS, LineForest
from ..core.losses import solve_continuum
from ..core.train import optimize
from .orders import Order, envelope, envelope_degree

C_KMS = SPEED_OF_LIGHT_KMS


def as_forest(obj, name: str) -> tuple[LineForest, CloneResult | None]:
    if obj is None:
        return None, None
    if isinstance(obj, (str, Path)):
        obj = load_clone(obj)
    if isinstance(obj, CloneResult):
        return obj.forest, obj
    if isinstance(obj, LineForest):
        return obj, None
    raise TypeError(
        f"{name} must be a CloneResult, a saved clone path or a LineForest, "
        f"not {type(obj).__name__}"
    )


def as_telluric(obj) -> tuple[LineForest | None, CloneResult | None, tuple[float, float] | None]:
    """The telluric forest of ``fit(telluric=...)``, its clone (one clone given as a
    CloneResult or a path; else None) and the range it covers (Å; None without one).

    One clone (a CloneResult, a saved clone's path or a LineForest) is used as it is. A
    mapping ``{name: clone}`` or a sequence of ``(name, clone)`` pairs, one clone per
    molecule, becomes a :class:`~blase_specutils.core.components.ComponentForest` (one
    optical-depth scale per molecule) covering the range every component covers.
    """
    if obj is None or isinstance(obj, (str, Path, CloneResult, LineForest)):
        forest, clone_result = as_forest(obj, "telluric")
        return forest, clone_result, None if forest is None else forest_range(forest, clone_result)
    if isinstance(obj, Mapping):
        pairs = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        pairs = list(obj)
        for k, pair in enumerate(pairs):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise TypeError(
                    f"telluric[{k}] is a {type(pair).__name__}: a list of telluric clones "
                    "must hold (name, clone) pairs, e.g. [('H2O', h2o), ('O2', o2)]"
                )
    else:
        raise TypeError(
            "telluric must be a CloneResult, a saved clone path, a LineForest, or one clone "
            "per molecule as a dict {name: clone} or a list of (name, clone) pairs, "
            f"not {type(obj).__name__}"
        )
    if not pairs:
        raise ValueError(
            "telluric is an empty collection: give at least one (molecule name, clone)"
        )
    check_component_names([name for name, _ in pairs])
    forests, lo, hi = [], -math.inf, math.inf
    for name, value in pairs:
        if value is None or isinstance(value, ComponentForest):
            raise TypeError(
                f"telluric[{name!r}] must be one molecule's clone (a CloneResult, a saved "
                f"clone path or a LineForest), not {type(value).__name__}"
            )
        try:
            forest, clone_result = as_forest(value, f"telluric[{name!r}]")
        except TypeError as err:
            raise TypeError(str(err)) from None
        c_lo, c_hi = forest_range(forest, clone_result)
        lo, hi = max(lo, c_lo), min(hi, c_hi)
        forests.append((name, forest))
    if lo >= hi:
        raise ValueError(
            "the telluric clones by molecule cover no common wavelength range; clone every "
            "molecule over the data's range"
        )
    return ComponentForest.from_forests(forests), None, (lo, hi)


def forest_range(forest: LineForest, clone_result: CloneResult | None) -> tuple[float, float]:
    if clone_result is not None and "wavelength_min" in clone_result.meta:
        return clone_result.meta["wavelength_min"], clone_result.meta["wavelength_max"]
    c = forest.center_ref.cpu().numpy()
    return float(c.min()), float(c.max())


def initial_resolving_power(resolving_power, instrument) -> tuple[float, str]:
    """The starting R and where it came from (given, the instrument's, or the default)."""
    from ..astro.instruments import DEFAULT_RESOLVING_POWER, nominal_resolving_power

    if resolving_power is not None:
        return float(resolving_power), "given"
    nominal = nominal_resolving_power(instrument)
    if nominal is not None:
        return nominal, f"nominal for {instrument}"
    return DEFAULT_RESOLVING_POWER, "default"


def model_chi2(model: ForwardModel, data, inv_sigma, good) -> torch.Tensor:
    r = (model() - data) * inv_sigma
    return torch.sum(torch.where(good, r * r, torch.zeros_like(r)))


@torch.no_grad()
def solve_model_continuum(model: ForwardModel, data, inv_sigma, good) -> float:
    """Weighted linear least squares for the continuum coefficients at fixed lines.

    Returns χ² with the solved continuum (one forward evaluation in all).
    """
    shape = model.averager(model.instrument(model.joint_fine())).double()
    return float(continuum_solved_chi2(model, shape, data, inv_sigma, good))


def continuum_solved_chi2(model: ForwardModel, shape, data, inv_sigma, good) -> torch.Tensor:
    """Solve the continuum coefficients for the line ``shape`` (float64); χ² with them.

    The coefficients are written into the model (see
    :func:`blase_specutils.core.losses.solve_continuum`: scaled columns, an SVD fallback
    when LAPACK fails on tiny uncertainties). χ² keeps the autograd graph of ``shape``
    but not of the solution: at the least-squares solution ∂χ²/∂c = 0, so the gradient
    of χ² with respect to the other parameters is that of the continuum-profiled χ²
    (variable projection).
    """
    return solve_continuum(
        model.continuum_coefficients, model.continuum_basis, model.order_index, shape, data,
        inv_sigma, good,
    )  # fmt: skip


def model_profiled_chi2(model: ForwardModel, data, inv_sigma, good) -> torch.Tensor:
    """χ² (float64) minimised over the continuum at the current globals and lines.

    The loss of the global stages: L-BFGS on the few globals with the continuum solved
    exactly at every evaluation, instead of on globals and continuum coefficients
    together, whose curvatures differ by orders of magnitude. Jointly, in float32, the
    strong-Wolfe line search stalled short of the minimum: on broad lines (v sin i
    40 km/s, S/N 100) the RV stopped 2–5σ from χ²'s minimum and scattered 2.6× its
    error bar over noise realisations.
    """
    shape = model.averager(model.instrument(model.joint_fine())).double()
    return continuum_solved_chi2(model, shape, data, inv_sigma, good)


#: Highest continuum degree ``continuum_degree="auto"`` may choose.
MAX_AUTO_CONTINUUM_DEGREE = 8


@torch.no_grad()
def template_continuum_degree(model: ForwardModel, orders: list[Order]) -> int:
    """Continuum degree from the data divided by the template (at the grid-search RV).

    Dividing by the broadened template cancels the lines to the extent it matches, so the
    binned median of the ratio follows the continuum closely, where the upper envelope of
    a line-rich order scatters by ~1 %: that scatter hid a blaze's quartic term
    (v sin i then came out 0.2 km/s high at S/N 200).
    """
    shape = model.averager(model.instrument(model.joint_fine())).double().cpu().numpy()
    degrees, start = [], 0
    for o in orders:
        n = len(o.wavelength)
        lines = shape[start : start + n]
        start += n
        usable = o.good & (lines > 0.2)  # not the cores of saturated lines
        ratio = np.where(usable, o.flux / np.where(usable, lines, 1.0), 0.0)
        order = Order(o.wavelength, ratio, o.sigma, usable)
        degrees.append(
            envelope_degree(order, MAX_AUTO_CONTINUUM_DEGREE, percentile=50.0, floor=0.001)
        )
    return max(degrees)


def joint_search(star0, tell0, orders, *, rv, rv_half_width, vsini, fit_vsini, vsini_max,
                  resolving_power, limb_darkening, step_kms, relativistic):  # fmt: skip
    """Run :func:`blase_specutils.core.search.rv_vsini_search` on the prepared orders."""
    from ..core.forward import chebyshev_design
    from ..core.search import MAX_SEARCH_VSINI, SearchOrder, default_vsini_grid, rv_vsini_search

    star = copy.deepcopy(star0).to(device="cpu", dtype=torch.float64)
    star.relativistic = relativistic
    star.set_trainable(())
    tell = None
    if tell0 is not None:
        tell = copy.deepcopy(tell0).to(device="cpu", dtype=torch.float64)
        tell.set_trainable(())
    if fit_vsini:
        top = 0.95 * vsini_max if vsini_max is not None else MAX_SEARCH_VSINI
        grid = default_vsini_grid(resolving_power, top)
    else:
        grid = [5.0 if vsini is None else vsini]
    search_orders = []
    for o in orders:
        if not o.good.any():
            continue  # an order with nothing left (the search's order_rv lists the others)
        centres = o.edges.mean(1)
        x = 2.0 * (centres - centres.min()) / max(np.ptp(centres), 1e-12) - 1.0
        weight = np.where(o.good, 1.0 / o.sigma**2, 0.0)
        degree = envelope_degree(o)
        basis = chebyshev_design(torch.as_tensor(x, dtype=torch.float64), degree)
        search_orders.append(
            SearchOrder(
                o.edges, torch.as_tensor(o.flux), torch.as_tensor(weight), basis,
                additive=torch.as_tensor(envelope(o, x, degree)),
            )  # fmt: skip
        )
    result = rv_vsini_search(
        search_orders,
        lambda g: star(star.make_layout(g)),
        telluric_flux=None if tell is None else (lambda g: tell(tell.make_layout(g))),
        # a sixth of the instrumental FWHM is fine enough to choose the basin, and up to
        # 3× cheaper than the model's step (the fit refines from there)
        step_kms=max(step_kms, min(1.5, C_KMS / resolving_power / 6.0)),
        resolving_power=resolving_power,
        rv_center=rv,
        rv_half_width=rv_half_width,
        vsini_grid=grid,
        limb_darkening=limb_darkening,
        relativistic=relativistic,
    )
    if result.at_edge:
        warnings.warn(
            f"the RV grid search ({round(result.rv[0], 3):g} to {round(result.rv[-1], 3):g} "
            f"km/s) found its best fit at the edge, {round(result.best_rv, 0):g} km/s: the "
            "star's RV may lie beyond; pass a closer rv= or a larger rv_search",
            UserWarning,
            stacklevel=4,
        )
    return result


#: Smallest starting v sin i (km/s) when it is fitted (zero is a stationary point).
MIN_START_VSINI = 0.5


#: A fit whose v sin i presses on a default ceiling below this (km/s) is rerun from that
#: ceiling with one three times higher (so from the default start: 55, 165, 495 km/s).
MAX_AUTO_VSINI_CEILING = 400.0


#: Samples of the v sin i grid search before the global stage.
VSINI_GRID_POINTS = 16


@torch.no_grad()
def vsini_grid_search(model: ForwardModel, profiled_chi2) -> float:
    """Start v sin i at the best of a geometric grid of the continuum-profiled χ².

    From 0.5 km/s (or one model-grid step) to 0.95 ``vsini_max``, with the current RV,
    plus the current value. Started far from the minimum, the globals' L-BFGS could
    overshoot v sin i into ``|v sin i| <`` half a grid step, where the rotation kernel
    is a delta and the gradient exactly zero, and stay there (injected 2 km/s at R
    100,000 and S/N 50: a start at 5 km/s ended at 0.08 in one seed of eight). Returns
    the v sin i set.
    """
    rotation = model.rotation
    low = max(MIN_START_VSINI, rotation.step_kms)
    high = 0.95 * rotation.vsini_max
    current = float(rotation.effective_vsini())
    candidates = [current]
    if high > low:
        candidates += list(np.geomspace(low, high, VSINI_GRID_POINTS))
    losses = []
    for vsini in candidates:
        rotation.vsini.fill_(float(vsini))
        losses.append(float(profiled_chi2()))
    best = candidates[int(np.argmin(losses))]
    rotation.vsini.fill_(float(best))
    return float(best)


def upward_outliers(model, data, inv_sigma, good, clip_sigma: float) -> torch.Tensor:
    """Good pixels far above both the model and the line-free continuum (bool tensor).

    The threshold is ``clip_sigma`` times the larger of 1 and the robust (MAD) scatter of
    the normalised residuals, so a model that is still rough (residuals of many σ) clips
    only what stands out from its own misfit. Absorption lines that the model makes too
    deep leave the data below the continuum and are never clipped.
    """
    with torch.no_grad():
        residual = (data - model()) * inv_sigma
        values = residual[good]
        if values.numel() < 10:
            return torch.zeros_like(good)
        scatter = 1.4826 * torch.median(torch.abs(values - torch.median(values)))
        threshold = clip_sigma * max(float(scatter), 1.0)
        above_continuum = data > model.continuum()
        return good & (residual > threshold) & above_continuum


#: A free R within this factor of its kernel's floor lowers the floor (see below).
R_FLOOR_MARGIN = 1.1


#: At most this many floor lowerings per stage (each halves the floor).
MAX_R_FLOOR_LOWERINGS = 4


def lower_r_floor_if_near(model: ForwardModel) -> bool:
    """Lower the instrumental kernel's floor to R/2 when a free R comes near it.

    The kernel is built for R down to R₀/2; a fit that wants less (the nominal R is too
    high) would press against the truncated kernel and stop there. Returns whether the
    floor moved (the model changed: the caller continues the stage).
    """
    inst = model.instrument
    if not inst.log_resolving_power.requires_grad:
        return False
    r = float(inst.resolving_power.detach())
    if r > R_FLOOR_MARGIN * inst.resolving_power_min:
        return False
    return model.lower_resolving_power_floor(min(r, inst.resolving_power_min) / 2.0)


def fit_globals(model, loss_fn, groups, iterations, progress, label, num_threads) -> list[float]:
    """L-BFGS on the few global parameters; falls back to Adam if a step diverges."""
    saved = copy.deepcopy(model.state_dict())
    try:
        h = optimize(
            model,
            loss_fn,
            epochs=iterations,
            learning_rate=1.0,
            rtol=1e-9,
            patience=3,
            optimizer="lbfgs",
            progress=progress,
            description=f"fit: {label}",
            param_groups=groups,
            num_threads=num_threads,
        )
        return h.loss
    except FloatingPointError:
        model.load_state_dict(saved)
    h = optimize(
        model,
        loss_fn,
        epochs=20 * iterations,
        learning_rate=0.01,
        rtol=1e-9,
        patience=20,
        progress=progress,
        description=f"fit: {label} (Adam)",
        param_groups=groups,
        num_threads=num_threads,
    )
    return h.loss


def fit_globals_lowering_r(model, loss_fn, groups, iterations, progress, label, num_threads):
    """:func:`fit_globals`, rerun after lowering R's kernel floor while R presses on it."""
    loss = fit_globals(model, loss_fn, groups, iterations, progress, label, num_threads)
    for _ in range(MAX_R_FLOOR_LOWERINGS):
        if not lower_r_floor_if_near(model):
            break
        loss += fit_globals(model, loss_fn, groups, iterations, progress, label, num_threads)
    return loss


#: v sin i below this multiple of the instrumental FWHM (c/R) trades off against R.
DEGENERATE_VSINI_FRACTION = 1.5


#: Where the v sin i profile is sampled, as fractions of the instrumental FWHM (c/R).
VALLEY_VSINI_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4)


#: Rotational width per unit v sin i added in quadrature to the instrument's FWHM (about
#: the FWHM of the limb-darkened rotation profile over v sin i, measured along the valley).
ROTATION_WIDTH_PER_VSINI = 1.1


def search_rotation_resolution_valley(
    model, loss_fn, groups, iterations, progress, num_threads
) -> list[float]:
    """With R and v sin i both free and v sin i not much above the resolution, profile χ²
    along v sin i and restart the joint fit from the best point.

    Below about the instrument's FWHM the two broadenings trade off: χ² has a long, narrow,
    curved valley of near-constant total width, along which a joint optimiser crawls and
    stops near wherever it entered it (v sin i = 0 is moreover a stationary point). In a
    noiseless injection at v sin i 3 km/s and R 60,000, the joint fit started from R 45,000
    ended at v sin i 0.05, R 49,600 (χ² 2.4× that at the truth) and from 70,000 at 3.7,
    69,900 (5×). Here v sin i is held at ``f · c/R`` for the fractions
    ``VALLEY_VSINI_FRACTIONS`` while R (started where ``(c/R)² + (1.1 v sin i)²`` keeps
    the current total width) and the other globals are fitted: a well-conditioned problem
    whose minimum is the profile χ²(v sin i). The joint fit then restarts from the best
    sample, refined by a parabola through its neighbours. Returns the losses if the result
    beats the current state (else the state is left as it was).
    """
    rotation, instrument = model.rotation, model.instrument
    if not (rotation.vsini.requires_grad and instrument.log_resolving_power.requires_grad):
        return []
    fwhm_kms = C_KMS / float(instrument.resolving_power.detach())
    vsini_now = float(rotation.effective_vsini().detach())
    if vsini_now >= DEGENERATE_VSINI_FRACTION * fwhm_kms:
        return []
    width2 = fwhm_kms**2 + (ROTATION_WIDTH_PER_VSINI * vsini_now) ** 2
    with torch.no_grad():
        loss_now = float(loss_fn())
    saved = copy.deepcopy(model.state_dict())
    brief = max(3, iterations // 3)
    samples = []  # (v sin i, loss, R)
    rotation.vsini.requires_grad_(False)
    try:
        for fraction in VALLEY_VSINI_FRACTIONS:
            vsini = min(fraction * fwhm_kms, 0.9 * rotation.vsini_max)
            instrument2 = width2 - (ROTATION_WIDTH_PER_VSINI * vsini) ** 2
            if instrument2 < (0.3 * fwhm_kms) ** 2:
                break  # the rest would need an R beyond reach
            model.load_state_dict(saved)
            with torch.no_grad():
                rotation.vsini.fill_(vsini)
                instrument.log_resolving_power.fill_(math.log(C_KMS / math.sqrt(instrument2)))
            fit_globals(model, loss_fn, groups, brief, progress, "v sin i profile", num_threads)
            with torch.no_grad():
                samples.append(
                    (vsini, float(loss_fn()), float(instrument.resolving_power.detach()))
                )
    finally:
        rotation.vsini.requires_grad_(True)
    if not samples:
        model.load_state_dict(saved)
        return []
    vsinis, losses, powers = (np.array(x) for x in zip(*samples))
    k = int(np.argmin(losses))
    vsini, power = vsinis[k], powers[k]
    if 0 < k < len(samples) - 1:  # parabola through the best sample and its neighbours
        y0, y1, y2 = losses[k - 1 : k + 2]
        den = y0 - 2 * y1 + y2
        if den > 0:
            shift = 0.5 * (vsinis[k + 1] - vsinis[k]) * (y0 - y2) / den
            vsini = vsini + shift
            power = np.interp(vsini, vsinis, powers)
    model.load_state_dict(saved)
    with torch.no_grad():
        rotation.vsini.fill_(max(float(vsini), MIN_START_VSINI))
        instrument.log_resolving_power.fill_(math.log(float(power)))
    history = fit_globals(model, loss_fn, groups, iterations, progress, "globals", num_threads)
    with torch.no_grad():
        if float(loss_fn()) < loss_now:
            return history
    model.load_state_dict(saved)
    return []
