"""The composite forward model of transfer learning.

star clone (RV on line centres; optical depths × a global line strength) → rotational
broadening (v sin i, ε) → veiling (an additive continuum fraction) → × telluric
clone (optional small shift, optical-depth scale) → instrumental Gaussian (R) →
average into the data pixels → × a smooth per-order continuum.

Everything up to the pixel averaging happens on one log-uniform (uniform-velocity)
fine grid that covers every order plus a buffer for the kernels, so RV, v sin i and
R act as shifts and convolutions there. Multiplication by the tellurics happens
before the instrumental convolution (they do not commute).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .broadening import (
    SPEED_OF_LIGHT_KMS,
    InstrumentalBroadening,
    RotationalBroadening,
    log_uniform_grid,
)
from .components import ComponentForest
from .lineforest import LineForest
from .observe import observe_fine, veil
from .resample import PixelAverager

__all__ = ["ForwardModel", "chebyshev_design"]


def chebyshev_design(x: torch.Tensor, degree: int) -> torch.Tensor:
    """Chebyshev polynomials T_0..T_degree at ``x`` ∈ [−1, 1], shape ``(len(x), degree+1)``."""
    cols = [torch.ones_like(x)]
    if degree >= 1:
        cols.append(x)
    for _ in range(2, degree + 1):
        cols.append(2.0 * x * cols[-1] - cols[-2])
    return torch.stack(cols, dim=1)


class ForwardModel(nn.Module):
    """Star × telluric model observed through an instrument, at the data pixels.

    Parameters
    ----------
    stellar : LineForest
        Stellar clone (flattened units).
    pixel_edges : list of numpy.ndarray
        Per order, ``(n_pixels, 2)`` arrays of [lower, upper] pixel edges, Å (vacuum).
    telluric : LineForest, optional
        Telluric clone (transmission). A
        :class:`~blase_specutils.core.components.ComponentForest` (one forest per
        molecule) gets one optical-depth scale per component: ``ln_telluric_scale`` is
        then a vector and the transmission ``∏_m T_m^{s_m}``.
    rv : float
        Initial radial velocity, km/s (applied to stellar line centres).
    vsini : float
        Initial projected rotational velocity, km/s.
    limb_darkening : float
        Linear limb-darkening coefficient ε.
    resolving_power : float
        Initial resolving power R.
    step_kms : float
        Velocity step of the fine grid, km/s.
    vsini_max : float, optional
        Largest v sin i the rotation kernel holds, km/s.
    rv_max : float
        Largest absolute RV expected, km/s: sets the fine grid's buffer.
    continuum_degree : int
        Degree of the per-order Chebyshev continuum.
    fit_rv, fit_vsini, fit_limb_darkening, fit_resolving_power : bool
        Which global parameters train.
    fit_telluric_shift, fit_telluric_scale : bool
        Whether a small telluric velocity shift (km/s) and the optical-depth scale(s) train.
    line_strength : float
        Initial global scale ``s`` of the stellar clone's optical depths: the star's
        transmission is ``T^s`` (``T`` the clone's), so ``s < 1`` makes every line
        shallower, weak lines in proportion, saturated ones less (a template hotter or
        more metal-poor than the star, or the reverse, to first order).
    veiling : float
        Initial veiling ``r ≥ 0``: a featureless continuum added to the rotated star as a
        fraction of its continuum, ``(S + r)/(1 + r)`` (paper §8.7).
    fit_line_strength, fit_veiling : bool
        Whether they train.
    dtype : torch.dtype
        Working dtype.
    device : torch.device or str, optional
        Where everything lives.
    tolerance : float
        Wing tolerance of the forests' sparse windows.
    """

    def __init__(
        self,
        stellar: LineForest,
        pixel_edges: list[np.ndarray],
        *,
        telluric: LineForest | None = None,
        rv: float = 0.0,
        vsini: float = 2.0,
        limb_darkening: float = 0.6,
        resolving_power: float = 55000.0,
        step_kms: float = 0.5,
        vsini_max: float | None = None,
        rv_max: float = 500.0,
        continuum_degree: int = 2,
        fit_rv: bool = True,
        fit_vsini: bool = True,
        fit_limb_darkening: bool = False,
        fit_resolving_power: bool = False,
        fit_telluric_shift: bool = False,
        fit_telluric_scale: bool = False,
        line_strength: float = 1.0,
        veiling: float = 0.0,
        fit_line_strength: bool = False,
        fit_veiling: bool = False,
        dtype: torch.dtype = torch.float32,
        device=None,
        tolerance: float = 1e-4,
    ) -> None:
        super().__init__()
        if continuum_degree < 0:
            raise ValueError("continuum_degree must be >= 0")
        self.stellar = stellar
        self.telluric = telluric
        self.tolerance = tolerance
        self.step_kms = float(step_kms)
        self.n_orders = len(pixel_edges)
        edges = [np.asarray(e, dtype=np.float64) for e in pixel_edges]
        lo = min(float(e[:, 0].min()) for e in edges)
        hi = max(float(e[:, 1].max()) for e in edges)
        self.rotation = RotationalBroadening(
            vsini,
            limb_darkening,
            step_kms=step_kms,
            vsini_max=vsini_max,
            fit_vsini=fit_vsini,
            fit_limb_darkening=fit_limb_darkening,
            dtype=dtype,
        )
        self.instrument = InstrumentalBroadening(
            resolving_power, step_kms=step_kms, fit=fit_resolving_power, dtype=dtype
        )
        self.rotation.to(device)
        self.instrument.to(device)
        self._data_range = (lo, hi)
        self._all_edges = np.concatenate(edges, axis=0)
        self._dtype = dtype
        grid = self._fine_grid()
        self.register_buffer("fine_wavelength", grid.to(device))
        self.rv_max = rv_max
        self.rv = nn.Parameter(
            torch.tensor(float(rv), dtype=dtype, device=device), requires_grad=fit_rv
        )
        self.telluric_shift = nn.Parameter(
            torch.tensor(0.0, dtype=dtype, device=device), requires_grad=fit_telluric_shift
        )
        # one scale, or one per component of a telluric model by molecule (the shift is
        # shared: the molecules move together with the observatory)
        scale_shape = (telluric.n_components,) if isinstance(telluric, ComponentForest) else ()
        self.ln_telluric_scale = nn.Parameter(
            torch.zeros(scale_shape, dtype=dtype, device=device),
            requires_grad=fit_telluric_scale,
        )
        if not (math.isfinite(line_strength) and line_strength > 0):
            raise ValueError(f"line_strength must be finite and > 0, got {line_strength}")
        if not (math.isfinite(veiling) and veiling >= 0):
            raise ValueError(f"veiling must be finite and >= 0, got {veiling}")
        self.ln_line_strength = nn.Parameter(
            torch.tensor(math.log(line_strength), dtype=dtype, device=device),
            requires_grad=fit_line_strength,
        )
        self.veiling = nn.Parameter(
            torch.tensor(float(veiling), dtype=dtype, device=device), requires_grad=fit_veiling
        )
        self.averager = PixelAverager(
            grid.cpu().numpy(), self._all_edges, dtype=dtype, device=device
        )
        order_index = np.concatenate([np.full(len(e), k) for k, e in enumerate(edges)])
        x = np.concatenate(
            [
                2.0 * (e.mean(1) - e.mean(1).min()) / max(np.ptp(e.mean(1)), 1e-12) - 1.0
                for e in edges
            ]
        )
        self.register_buffer(
            "order_index", torch.as_tensor(order_index, dtype=torch.long, device=device)
        )
        self.register_buffer(
            "continuum_basis",
            chebyshev_design(torch.as_tensor(x, dtype=dtype, device=device), continuum_degree),
        )
        # every term up to the degree built with, for set_continuum_degree
        self._full_continuum_basis = self.continuum_basis
        self._max_continuum_degree = int(continuum_degree)
        self.continuum_coefficients = nn.Parameter(
            torch.zeros(self.n_orders, continuum_degree + 1, dtype=dtype, device=device)
        )
        with torch.no_grad():
            self.continuum_coefficients[:, 0] = 1.0
        self.order_sizes = [len(e) for e in edges]
        self.relayout()

    def _pad_kms(self) -> float:
        """Buffer the fine grid needs beyond the data: both kernels plus 8 steps, km/s."""
        return (self.rotation.half_width + self.instrument.half_width + 8) * self.step_kms

    def _fine_grid(self) -> torch.Tensor:
        lo, hi = self._data_range
        pad_kms = self._pad_kms()
        return log_uniform_grid(
            lo * math.exp(-pad_kms / SPEED_OF_LIGHT_KMS),
            hi * math.exp(pad_kms / SPEED_OF_LIGHT_KMS),
            self.step_kms,
            dtype=torch.float64,
        )

    @torch.no_grad()
    def lower_resolving_power_floor(self, resolving_power_min: float) -> bool:
        """Let the instrumental kernel hold R down to ``resolving_power_min``.

        The kernel is built for the smallest R it must represent (R₀/2 when R is fitted);
        an R below that would be truncated. This lengthens the kernel, and, when the
        fine grid's buffer no longer covers it, rebuilds the grid, the pixel averager and
        the line layouts (every parameter object stays, so optimisers keep working).
        Returns whether anything changed (False when the floor is already that low).
        """
        if resolving_power_min >= self.instrument.resolving_power_min:
            return False
        self.instrument.set_resolving_power_min(resolving_power_min)
        lo = float(self.fine_wavelength[0])
        have_kms = SPEED_OF_LIGHT_KMS * math.log(self._data_range[0] / lo)
        if self._pad_kms() > have_kms:
            device = self.fine_wavelength.device
            grid = self._fine_grid()
            self.fine_wavelength = grid.to(device)
            self.averager = PixelAverager(
                grid.cpu().numpy(), self._all_edges, dtype=self._dtype, device=device
            )
            self.relayout()
        return True

    @torch.no_grad()
    def set_continuum_degree(self, degree: int) -> None:
        """Use the continuum's Chebyshev terms up to ``degree`` (at most the degree the
        model was built with).

        The basis is hierarchical: columns are dropped or restored, coefficients kept
        where they exist and zero for new terms. Refit them afterwards (the continuum
        solver of :func:`blase_specutils.fit` does).
        """
        if not 0 <= degree <= self._max_continuum_degree:
            raise ValueError(f"degree must be in [0, {self._max_continuum_degree}], got {degree}")
        self.continuum_basis = self._full_continuum_basis[:, : degree + 1].contiguous()
        old = self.continuum_coefficients
        new = torch.zeros(old.shape[0], degree + 1, dtype=old.dtype, device=old.device)
        keep = min(degree + 1, old.shape[1])
        new[:, :keep] = old[:, :keep]
        self.continuum_coefficients = nn.Parameter(new, requires_grad=old.requires_grad)

    # ---------------------------------------------------------------- layouts
    @torch.no_grad()
    def relayout(self, source: dict[str, torch.Tensor] | None = None) -> None:
        """Re-size the forests' windows on the fine grid from their current widths.

        With ``source`` (a :meth:`forest_parameters` snapshot, e.g. from a checkpoint),
        the windows are made from those line parameters instead, and the current ones are
        left as they are: a resumed run then has the windows the interrupted run had.
        The parameters the windows were made from are kept in :attr:`layout_source`.
        """
        if source is None:
            self._make_layouts()
            self.layout_source = self.forest_parameters()
            return
        current = self.forest_parameters()
        params = dict(self._forest_parameter_objects())
        unknown = set(source) ^ set(params)
        if unknown:
            raise ValueError(
                f"the layout source does not fit these line forests: {sorted(unknown)}"
            )
        with torch.no_grad():
            for name, value in source.items():
                params[name].copy_(value)
            try:
                self._make_layouts()
            finally:
                for name, value in current.items():
                    params[name].copy_(value)
        self.layout_source = {name: value.detach().clone() for name, value in source.items()}

    def _make_layouts(self) -> None:
        self.stellar_layout = self.stellar.make_layout(
            self.fine_wavelength, tolerance=self.tolerance
        )
        self.telluric_layout = (
            None
            if self.telluric is None
            else self.telluric.make_layout(self.fine_wavelength, tolerance=self.tolerance)
        )

    def _forest_parameter_objects(self):
        for prefix, module in self.named_modules():
            if isinstance(module, LineForest):
                for name, p in module.named_parameters(recurse=False):
                    yield f"{prefix}.{name}", p

    def forest_parameters(self) -> dict[str, torch.Tensor]:
        """A detached copy of every line forest's parameters, by their ``state_dict`` names."""
        return {name: p.detach().clone() for name, p in self._forest_parameter_objects()}

    # ------------------------------------------------------------- components
    #: Range of the line strength s and largest veiling r the model uses: a fit that
    #: presses on them says so (the fit flags it) instead of erasing or saturating the
    #: template's lines.
    LINE_STRENGTH_RANGE = (0.1, 10.0)
    MAX_VEILING = 10.0

    def line_strength(self) -> torch.Tensor:
        """The global optical-depth scale of the stellar clone, within
        :attr:`LINE_STRENGTH_RANGE` (scalar tensor)."""
        lo, hi = self.LINE_STRENGTH_RANGE
        return torch.clamp(torch.exp(self.ln_line_strength), lo, hi)

    def effective_veiling(self) -> torch.Tensor:
        """Veiling as used, ``min(max(veiling, 0), MAX_VEILING)`` (scalar tensor)."""
        return torch.clamp(self.veiling, min=0.0, max=self.MAX_VEILING)

    def stellar_fine(self) -> torch.Tensor:
        """RV-shifted, rotationally broadened (and veiled) stellar flux on the fine grid."""
        # At their defaults (s = 1, r = 0) both steps are exact identities in floating
        # point (1·x and (x + 0)/1), so a model that frees neither is unchanged bit for bit;
        # no test of their values here, which would synchronise a GPU every epoch.
        return veil(self.rotation(self.shifted_stellar_fine()), self.effective_veiling())

    def shifted_stellar_fine(self) -> torch.Tensor:
        """The stellar clone on the fine grid at the RV, line strength applied, not broadened."""
        log_t = self.stellar.log_transmission(self.stellar_layout, self.rv)
        return torch.exp(self.line_strength() * log_t)

    def telluric_fine(self) -> torch.Tensor | None:
        """Telluric transmission on the fine grid (``T^scale``, or ``∏_m T_m^{s_m}`` by
        molecule), or None."""
        if self.telluric is None:
            return None
        # No float(...) test of the value: that would synchronise a GPU every epoch.
        shift = self.telluric_shift if self.telluric_shift.requires_grad else None
        if isinstance(self.telluric, ComponentForest):
            # ∏_m T_m^{s_m}: each molecule's optical depth scaled on its own
            scales = torch.exp(self.ln_telluric_scale)
            log_t = self.telluric.log_transmission(self.telluric_layout, shift, scales=scales)
            return torch.exp(log_t)
        log_t = self.telluric.log_transmission(self.telluric_layout, shift)
        return torch.exp(torch.exp(self.ln_telluric_scale) * log_t)

    def continuum(self) -> torch.Tensor:
        """Per-pixel continuum of every order, concatenated."""
        coeff = self.continuum_coefficients[self.order_index]
        return (self.continuum_basis * coeff).sum(1)

    def joint_fine(self) -> torch.Tensor:
        """Star × telluric on the fine grid, before the instrument."""
        star = self.stellar_fine()
        tell = self.telluric_fine()
        return star if tell is None else star * tell

    def forward(self) -> torch.Tensor:
        """Model flux at every data pixel (orders concatenated)."""
        observed = observe_fine(
            self.shifted_stellar_fine(),
            rotate=self.rotation,
            veiling=self.effective_veiling(),
            telluric=self.telluric_fine(),
            instrument=self.instrument,
            average=self.averager,
        )
        return observed * self.continuum()

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Split a concatenated per-pixel vector back into orders."""
        return list(torch.split(values, self.order_sizes))
