"""The start of a fit: a joint RV × v sin i grid search on the continuum-profiled χ².

A star's RV can lie anywhere within ±1000 km/s of a guess and its v sin i anywhere from
0 to 500 km/s; gradient descent only finds the minimum of the basin it starts in. The
search here evaluates χ² on the whole (RV, v sin i) plane cheaply: the rest-frame
stellar spectrum is evaluated once per order on a uniform-velocity grid wide enough for
every shift, broadened once per v sin i (rotation, then the instrument: both are
convolutions and commute with a Doppler shift on such a grid), and each RV is then a
*roll* of that broadened spectrum by a whole number of grid steps; averaging into the
pixels and the least-squares continuum are done for all RVs at once
(:func:`blase_specutils.core.losses.profiled_chi2_batch`). The model of the search
includes an additive constant per order (veiling; negative values deepen the lines),
so a template with too many or too few, too deep or too shallow lines does not pull the
search to a wrong v sin i or RV: the depth mismatch is absorbed linearly.

Telluric absorption, when given, multiplies the search model at the pixels after the
instrument (an approximation that is good enough to choose a basin; the fit itself
applies it before the instrument).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .broadening import (
    SPEED_OF_LIGHT_KMS,
    convolve_same,
    gaussian_kernel,
    gaussian_kernel_half_width,
    log_uniform_grid,
    rotation_kernel,
    rotation_kernel_half_width,
)
from .losses import profiled_chi2_batch
from .resample import PixelAverager

__all__ = [
    "SearchOrder",
    "SearchResult",
    "default_vsini_grid",
    "rv_vsini_search",
    "velocity_to_log_shift",
    "log_shift_to_velocity",
    "local_minima",
]

#: Largest v sin i the default search samples, km/s.
MAX_SEARCH_VSINI = 450.0


def default_vsini_grid(resolving_power: float, vsini_max: float = MAX_SEARCH_VSINI) -> np.ndarray:
    """0, then 0.6 instrumental FWHM (c/R) to ``vsini_max`` in geometric steps of ~1.6
    (below the FWHM the surfaces differ little, so the grid starts near it), km/s."""
    fwhm = SPEED_OF_LIGHT_KMS / resolving_power
    low = 0.6 * fwhm
    if vsini_max <= low:
        return np.array([0.0, float(vsini_max)])
    n = max(2, int(math.ceil(math.log(vsini_max / low) / math.log(1.6))) + 1)
    return np.concatenate([[0.0], np.geomspace(low, vsini_max, n)])
#: Shapes evaluated per batch (memory: batch × fine-window length × 8 bytes).
BATCH = 384
#: Width of the Gaussian prior on the log of the depth scale the additive term implies
#: (a factor 1.65 at 1σ): it picks between minima of similar χ², not against the data.
DEPTH_PRIOR_WIDTH = 0.5


def velocity_to_log_shift(rv_kms: float, relativistic: bool = False) -> float:
    """The shift ``c ln D`` (km/s) on a uniform-velocity grid for a Doppler factor D."""
    beta = rv_kms / SPEED_OF_LIGHT_KMS
    if relativistic:
        return SPEED_OF_LIGHT_KMS * math.atanh(beta)
    return SPEED_OF_LIGHT_KMS * math.log1p(beta)


def log_shift_to_velocity(shift_kms, relativistic: bool = False):
    """Inverse of :func:`velocity_to_log_shift` (numpy arrays welcome)."""
    x = np.asarray(shift_kms, dtype=np.float64) / SPEED_OF_LIGHT_KMS
    if relativistic:
        return SPEED_OF_LIGHT_KMS * np.tanh(x)
    return SPEED_OF_LIGHT_KMS * np.expm1(x)


@dataclass
class SearchOrder:
    """One order as the search sees it.

    Attributes
    ----------
    edges : numpy.ndarray
        ``[N, 2]`` pixel bounds, Å.
    data : torch.Tensor
        ``[N]`` flux (masked pixels any finite value).
    weight : torch.Tensor
        ``[N]`` inverse variance, 0 at masked pixels.
    basis : torch.Tensor
        ``[N, K]`` continuum design (Chebyshev in the order's pixel position).
    additive : torch.Tensor, optional
        ``[N]`` shape of the additive (veiling) term: the order's continuum as seen in
        the data (its blaze), default flat.
    """

    edges: np.ndarray
    data: torch.Tensor
    weight: torch.Tensor
    basis: torch.Tensor
    additive: torch.Tensor | None = None


@dataclass
class SearchResult:
    """The χ² surface of :func:`rv_vsini_search` and what was read off it.

    Attributes
    ----------
    rv : numpy.ndarray
        Coarse RV grid, km/s.
    vsini : numpy.ndarray
        v sin i grid, km/s.
    chi2 : numpy.ndarray
        ``[n_orders, n_vsini, n_rv]`` profiled χ² per order.
    n_good : numpy.ndarray
        Good pixels per order.
    best_rv, best_vsini, best_chi2 : float
        The refined minimum of the summed surface.
    minima : list of dict
        Distinct local minima of the summed surface profiled over v sin i, best first
        (``rv``, ``vsini``, ``chi2``), at most five.
    at_edge : bool
        The best RV lies on the first or last grid point (the star may lie beyond).
    vsini_at_edge : bool
        The best v sin i is the largest sampled (the star may rotate faster, or the
        template's lines are too narrow for broad intrinsic lines).
    order_rv, order_vsini : numpy.ndarray
        Per order, the minimum of its own surface.
    depth_scale : float
        Factor on the template's line depths implied by the best solution's additive term.
    """

    rv: np.ndarray
    vsini: np.ndarray
    chi2: np.ndarray
    n_good: np.ndarray
    best_rv: float
    best_vsini: float
    best_chi2: float
    minima: list = field(default_factory=list)
    at_edge: bool = False
    vsini_at_edge: bool = False
    order_rv: np.ndarray = field(default_factory=lambda: np.zeros(0))
    order_vsini: np.ndarray = field(default_factory=lambda: np.zeros(0))
    depth_scale: float = 1.0

    @property
    def combined(self) -> np.ndarray:
        """``[n_vsini, n_rv]`` χ² summed over orders."""
        return self.chi2.sum(0)

    def summary(self) -> dict:
        """Plain-data record for a result's ``meta``."""
        return {
            "best_rv": float(self.best_rv),
            "best_vsini": float(self.best_vsini),
            "best_chi2": float(self.best_chi2),
            "minima": [dict(m) for m in self.minima],
            "rv_range": [float(self.rv[0]), float(self.rv[-1])],
            "vsini_grid": [float(v) for v in self.vsini],
            "at_edge": bool(self.at_edge),
            "vsini_at_edge": bool(self.vsini_at_edge),
            "order_rv": [float(v) for v in self.order_rv],
            "order_vsini": [float(v) for v in self.order_vsini],
            "depth_scale": float(self.depth_scale),
        }


def local_minima(values: np.ndarray, positions: np.ndarray, separation: float) -> list[int]:
    """Indices of local minima of ``values`` at least ``separation`` apart, best first."""
    n = len(values)
    candidates = [
        i
        for i in range(n)
        if (i == 0 or values[i] <= values[i - 1]) and (i == n - 1 or values[i] <= values[i + 1])
    ]
    candidates.sort(key=lambda i: values[i])
    kept: list[int] = []
    for i in candidates:
        if all(abs(positions[i] - positions[j]) >= separation for j in kept):
            kept.append(i)
    return kept


class OrderSurface:
    """The per-order machinery: extended grid, rest-frame spectrum, pixel averager."""

    def __init__(self, order, rest_flux, telluric_flux, step, shift_lo, shift_hi, pad,
                 resolving_power):  # fmt: skip
        lo = float(order.edges[:, 0].min())
        hi = float(order.edges[:, 1].max())
        log_step = step / SPEED_OF_LIGHT_KMS
        self.n_window = int(math.ceil(math.log(hi / lo) / log_step)) + 5
        self.offset = shift_hi + pad
        length = shift_hi - shift_lo + self.n_window + 2 * pad
        start = lo * math.exp(-(2 + self.offset) * log_step)
        grid = log_uniform_grid(start, start * math.exp((length - 1) * log_step), step)
        grid = grid[:length]
        self.grid = grid
        window = grid[self.offset : self.offset + self.n_window]
        self.averager = PixelAverager(window.numpy(), order.edges, dtype=torch.float64)
        with torch.no_grad():
            self.star = rest_flux(grid).double()
            self.telluric = None
            if telluric_flux is not None:
                ipad = gaussian_kernel_half_width(resolving_power, step) + 2
                part = grid[self.offset - ipad : self.offset + self.n_window + ipad]
                kernel = gaussian_kernel(resolving_power, step).double()
                seen = convolve_same(telluric_flux(part).double(), kernel)
                self.telluric = self.averager(seen[ipad : ipad + self.n_window])
        self.order = order
        # The averaging matrix as fixed-length rows of taps (column, weight): averaging
        # every shifted window is then one gather, without forming the windows.
        rows = self.averager.rows.numpy()
        cols = self.averager.columns.numpy()
        weights = self.averager.weights.numpy()
        n_data = self.averager.n_data
        counts = np.bincount(rows, minlength=n_data)
        n_taps = max(int(counts.max()), 1)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(rows.size) - first[rows]
        taps = np.zeros((n_data, n_taps), dtype=np.int64)
        tap_weights = np.zeros((n_data, n_taps))
        taps[rows, slot] = cols
        tap_weights[rows, slot] = weights
        self.taps = torch.as_tensor(taps)
        self.tap_weights = torch.as_tensor(tap_weights)
        self.prefix = self._prefix_form(taps, tap_weights, counts, window.numpy())

    @staticmethod
    def _prefix_form(taps, tap_weights, counts, window):
        """The averager as edge taps plus a prefix-sum difference, when it has that form.

        A pixel's interior fine bins (all but its first and last) are whole, so their
        weights are the bins' widths over the pixel's width, and on a log-uniform grid
        a bin's width is proportional to its wavelength: ``w_pj = K_p λ_j``. Rolled by
        ``s`` samples, ``Σ_j w_pj b[j + s] = K_p (λ_0/λ_s) Σ_j λ_{j+s} b[j+s]`` is a
        difference of the prefix sums of ``λ b``: four gathers per pixel whatever the
        number of taps (a pixel is 3–10 model steps). Returns None (use the gather)
        when the weights do not have that form.
        """
        if counts.min() < 1:
            return None
        n = len(counts)
        index = np.arange(n)
        first = taps[:, 0]
        last = taps[index, counts - 1]
        if np.any(last - first != counts - 1):  # the taps of a pixel are not contiguous
            return None
        w_first = tap_weights[:, 0].copy()
        w_last = np.where(counts > 1, tap_weights[index, counts - 1], 0.0)
        ratio = window[taps] / window[0]
        interior = (np.arange(taps.shape[1])[None] > 0) & (
            np.arange(taps.shape[1])[None] < (counts - 1)[:, None]
        )
        k = np.where(interior, tap_weights / ratio, 0.0)
        scale = k.sum(1) / np.maximum(interior.sum(1), 1)
        spread = np.where(interior, np.abs(k - scale[:, None]), 0.0).max(1)
        if np.any(spread > 1e-9 * np.abs(scale)):
            return None
        return {
            "first": torch.as_tensor(first),
            "last": torch.as_tensor(last),
            "w_first": torch.as_tensor(w_first),
            "w_last": torch.as_tensor(w_last),
            "scale": torch.as_tensor(scale),
        }

    def prefix_sums(self, broadened: torch.Tensor) -> torch.Tensor | None:
        """Exclusive prefix sums of ``(λ/λ_window) · broadened`` (None: gather form)."""
        if self.prefix is None:
            return None
        weighted = broadened * (self.grid / self.grid[self.offset]).to(broadened.dtype)
        return torch.cat([weighted.new_zeros(1), torch.cumsum(weighted, 0)])

    def average(
        self, broadened: torch.Tensor, starts: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[len(starts), N]``: the pixel means of ``broadened[start : start + window]``.

        ``prefix`` (from :meth:`prefix_sums`) selects the prefix-sum form; both forms
        agree to rounding (tested)."""
        if prefix is None:
            positions = starts[:, None, None] + self.taps[None]
            return (broadened[positions] * self.tap_weights[None]).sum(-1)
        p = self.prefix
        lo = starts[:, None] + p["first"][None]
        hi = starts[:, None] + p["last"][None]
        # λ_window/λ_start, the roll's change of the bins' widths
        shrink = (self.grid[self.offset] / self.grid[starts]).to(broadened.dtype)[:, None]
        return (
            p["w_first"] * broadened[lo]
            + p["w_last"] * broadened[hi]
            + p["scale"] * shrink * (prefix[hi] - prefix[lo + 1])
        )

    def chi2(self, broadened: torch.Tensor, shifts: np.ndarray):
        """Profiled χ² and depth scale for integer ``shifts`` of ``broadened``."""
        starts = torch.as_tensor(self.offset - shifts, dtype=torch.long)
        prefix = self.prefix_sums(broadened)
        out_chi2, out_depth = [], []
        for b in range(0, len(starts), BATCH):
            shapes = self.average(broadened, starts[b : b + BATCH], prefix)
            c, depth = profiled_chi2_batch(
                shapes, self.order.basis, self.order.data, self.order.weight,
                telluric=self.telluric, additive_shape=self.order.additive,
            )  # fmt: skip
            out_chi2.append(c)
            out_depth.append(depth)
        return torch.cat(out_chi2).numpy(), torch.cat(out_depth).numpy()


@torch.no_grad()
def rv_vsini_search(
    orders: Sequence[SearchOrder],
    rest_flux: Callable[[torch.Tensor], torch.Tensor],
    *,
    step_kms: float,
    resolving_power: float,
    rv_center: float = 0.0,
    rv_half_width: float = 1000.0,
    vsini_grid: Sequence[float] | None = None,
    limb_darkening: float = 0.6,
    telluric_flux: Callable[[torch.Tensor], torch.Tensor] | None = None,
    relativistic: bool = False,
    rv_step: float | None = None,
) -> SearchResult:
    """Grid search of the continuum-profiled χ² over RV and v sin i, coarse to fine.

    Parameters
    ----------
    orders : sequence of SearchOrder
        The data, one entry per order.
    rest_flux : callable
        ``rest_flux(grid)`` returns the stellar clone's rest-frame flux on a float64
        wavelength grid (Å).
    step_kms : float
        Velocity step of the model grid, km/s; RVs are searched in whole steps, then
        refined by a parabola.
    resolving_power : float
        Instrumental R of the search model.
    rv_center, rv_half_width : float
        The RV range searched, km/s.
    vsini_grid : sequence of float, optional
        v sin i values sampled, km/s (one value: v sin i held). Default
        :func:`default_vsini_grid` for the resolving power.
    limb_darkening : float
        Linear limb darkening of the rotation kernel.
    telluric_flux : callable, optional
        ``telluric_flux(grid)``: telluric transmission on a grid (observatory frame).
    relativistic : bool
        Doppler formula used to turn grid shifts into RVs.
    rv_step : float, optional
        Step of the coarse RV grid, km/s (default: a third of the instrumental FWHM,
        at least one model step).

    Returns
    -------
    SearchResult
    """
    if not orders:
        raise ValueError("the search needs at least one order")
    for name, value, low in (
        ("step_kms", step_kms, 0.0), ("resolving_power", resolving_power, 0.0),
        ("rv_half_width", rv_half_width, None), ("rv_center", rv_center, None),
    ):  # fmt: skip
        value = float(value)
        if not math.isfinite(value) or (low is not None and value <= low):
            bound = "" if low is None else " and > 0"
            raise ValueError(f"{name} must be finite{bound}, got {value}")
    if rv_half_width < 0:
        raise ValueError(f"rv_half_width must be >= 0 km/s, got {rv_half_width}")
    if vsini_grid is not None:
        grid = np.asarray(vsini_grid, dtype=np.float64)
        if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
            raise ValueError("vsini_grid must hold at least one finite v sin i >= 0 km/s")
    for k, order in enumerate(orders):
        if not bool(torch.any(order.weight > 0)):
            raise ValueError(f"order {k} of the search has no pixel with a positive weight")
    step = float(step_kms)
    if vsini_grid is None:
        vsini_grid = default_vsini_grid(resolving_power)
    vsini_grid = np.asarray(sorted(float(v) for v in vsini_grid), dtype=np.float64)
    centre = velocity_to_log_shift(rv_center, relativistic)
    shift_lo = int(math.floor((centre - rv_half_width) / step))
    shift_hi = int(math.ceil((centre + rv_half_width) / step))
    inst_half = gaussian_kernel_half_width(resolving_power, step)
    rot_half = rotation_kernel_half_width(float(vsini_grid.max()), step)
    pad = inst_half + rot_half + 4
    fwhm = SPEED_OF_LIGHT_KMS / resolving_power
    coarse = rv_step if rv_step is not None else fwhm / 3.0
    stride = max(1, int(round(coarse / step)))
    shifts = np.arange(shift_lo, shift_hi + 1, stride)
    surfaces = [
        OrderSurface(o, rest_flux, telluric_flux, step, shift_lo, shift_hi, pad, resolving_power)
        for o in orders
    ]
    inst_kernel = gaussian_kernel(resolving_power, step).double()

    def broaden(star: torch.Tensor, vsini: float) -> torch.Tensor:
        if vsini > 0.5 * step:
            kernel = rotation_kernel(
                torch.tensor(vsini, dtype=torch.float64), step, limb_darkening=limb_darkening,
            ).double()  # fmt: skip
            star = convolve_same(star, kernel)
        return convolve_same(star, inst_kernel)

    chi2 = np.zeros((len(orders), len(vsini_grid), len(shifts)))
    log_depth = np.zeros_like(chi2)
    strides = []
    for j, vsini in enumerate(vsini_grid):
        # Broader lines need fewer RVs: a third of the total width (instrument and
        # rotation), interpolated onto the common grid afterwards.
        width = math.hypot(fwhm, 1.1 * vsini)
        stride_j = max(stride, int(round(width / 3.0 / step)))
        strides.append(stride_j)
        shifts_j = np.arange(shift_lo, shift_hi + 1, stride_j)
        if shifts_j[-1] != shift_hi:
            shifts_j = np.append(shifts_j, shift_hi)
        for k, surface in enumerate(surfaces):
            values, depth = surface.chi2(broaden(surface.star, vsini), shifts_j)
            chi2[k, j] = np.interp(shifts, shifts_j, values)
            log_depth[k, j] = np.interp(shifts, shifts_j, np.log(depth))
    total = chi2.sum(0)
    # Which minimum: χ² plus a weak prior on each order's depth scale, in units of the
    # surface's own χ²_red. Against a template far from the star (χ²_red in the
    # hundreds) a broadened, deepened template at a wrong RV can fit the mismatch as well
    # as the right one (WASP 69 on a 40 Å clone: v sin i 48 and RV −40 with lines 2.6×
    # deeper, Δχ² = 1 χ²_red below RV −10, v sin i 12); the prior costs a factor 2.6
    # in depth 3.7 χ²_red and a veiling of 1 (depth 0.5) 1.9: nothing against real signal.
    n_good_total = max(int(sum(int((o.weight > 0).sum()) for o in orders)), 1)
    scale = max(1.0, float(total.min()) / n_good_total)
    score = total + scale * np.sum((log_depth / DEPTH_PRIOR_WIDTH) ** 2, axis=0)
    j_best, i_best = np.unravel_index(int(np.argmin(score)), score.shape)
    at_edge = len(shifts) > 2 and i_best in (0, len(shifts) - 1)

    # Refine the RV in whole model steps around the coarse minimum, at the best v sin i.
    reach = 2 * strides[j_best]
    fine = np.arange(
        max(shift_lo, shifts[i_best] - reach), min(shift_hi, shifts[i_best] + reach) + 1
    )
    fine_total = np.zeros(len(fine))
    fine_score = np.zeros(len(fine))
    fine_depth = np.zeros(len(fine))
    for surface in surfaces:
        c, dscale = surface.chi2(broaden(surface.star, vsini_grid[j_best]), fine)
        fine_total += c
        fine_score += c + scale * (np.log(dscale) / DEPTH_PRIOR_WIDTH) ** 2
        fine_depth += dscale / len(surfaces)
    m = int(np.argmin(fine_score))
    best_shift = float(fine[m])
    if 0 < m < len(fine) - 1:
        y0, y1, y2 = fine_score[m - 1 : m + 2]
        den = y0 - 2 * y1 + y2
        if den > 0:
            best_shift += 0.5 * (y0 - y2) / den
    # v sin i: a parabola in the grid index through the best and its neighbours.
    best_vsini = float(vsini_grid[j_best])
    if 0 < j_best < len(vsini_grid) - 1:
        y0, y1, y2 = score[j_best - 1 : j_best + 2, i_best]
        den = y0 - 2 * y1 + y2
        if den > 0:
            offset = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5))
            neighbour = vsini_grid[j_best + (1 if offset > 0 else -1)]
            best_vsini += abs(offset) * (neighbour - best_vsini)

    rv_grid = log_shift_to_velocity(shifts * step, relativistic)
    profile = score.min(0)
    width = math.hypot(fwhm, 1.1 * best_vsini)
    minima = []
    for i in local_minima(profile, rv_grid, max(3.0 * width, 10.0))[:5]:
        j = int(np.argmin(score[:, i]))
        minima.append(
            {"rv": float(rv_grid[i]), "vsini": float(vsini_grid[j]), "chi2": float(profile[i])}
        )
    order_rv, order_vsini = [], []
    for k in range(len(orders)):
        own = chi2[k] + scale * (log_depth[k] / DEPTH_PRIOR_WIDTH) ** 2
        jj, ii = np.unravel_index(int(np.argmin(own)), own.shape)
        order_rv.append(float(rv_grid[ii]))
        order_vsini.append(float(vsini_grid[jj]))
    n_good = np.array([int((o.weight > 0).sum()) for o in orders])
    return SearchResult(
        rv=rv_grid,
        vsini=vsini_grid,
        chi2=chi2,
        n_good=n_good,
        best_rv=float(log_shift_to_velocity(best_shift * step, relativistic)),
        best_vsini=best_vsini,
        best_chi2=float(fine_total[m]),
        minima=minima,
        at_edge=bool(at_edge),
        vsini_at_edge=bool(len(vsini_grid) > 2 and j_best == len(vsini_grid) - 1),
        order_rv=np.array(order_rv),
        order_vsini=np.array(order_vsini),
        depth_scale=float(fine_depth[m]),
    )
