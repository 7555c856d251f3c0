"""LineForest: thousands of tunable Voigt-like lines as one PyTorch module.

The flux of the forest is the product of every line's transmission::

    linear mode:  F(λ) = ∏_j (1 − s_j a_j V_j(λ − λc_j))
    log mode:     F(λ) = exp(−Σ_j s_j a_j V_j(λ − λc_j))

with ``s_j = +1`` for absorption and ``−1`` for emission lines, ``a_j`` the amplitude
(area, Å) and ``V_j`` an area-normalised pseudo-Voigt or exact Voigt with Gaussian
standard deviation ``σ_j`` and Lorentzian HWHM ``γ_j`` (Å). The trainable parameters
are ``ln a``, ``ln σ``, ``ln γ`` and a centre shift ``δλc`` (Å) relative to the float64
reference centres; a radial velocity shifts every centre by ``λc · v / c``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .profiles import pseudo_voigt, tch_fwhm_and_eta, voigt, wing_correction
from .sparse import (
    SparseLayout,
    pseudo_voigt_log_transmission,
    run_triton,
    use_triton,
    voigt_log_transmission,
    window_half_widths,
)
from .train import as_torch_device

__all__ = [
    "LineForest",
    "SPEED_OF_LIGHT_KMS",
    "PARAMETER_NAMES",
    "TRAINABLE_NAMES",
    "MAX_HALF_WIDTH",
    "WING_BOUNDS",
    "forest_log_transmission",
]

SPEED_OF_LIGHT_KMS = 299792.458
#: Names accepted by ``trainable``.
PARAMETER_NAMES = ("center", "amplitude", "sigma", "gamma")
#: Bounds every optimiser step clamps the log parameters to (ln of Å for σ, γ).
LOG_BOUNDS = {
    "ln_amplitude": (-40.0, 5.0),
    "ln_sigma": (math.log(1e-6), math.log(50.0)),
    "ln_gamma": (math.log(1e-6), math.log(50.0)),
}
_LOG_BOUNDS = LOG_BOUNDS  # the name it had before it was public
#: ``trainable`` may also name ``"wing"``: the wing correction of the lines that have one
#: (:meth:`LineForest.set_wings`).
TRAINABLE_NAMES = (*PARAMETER_NAMES, "wing")
#: Bounds of the wing-correction parameters: α, ln λt (Å), ln b (Å).
WING_BOUNDS = {
    "wing_alpha": (-5.0, 5.0),
    "ln_wing_offset": (math.log(1e-3), math.log(1e4)),
    "ln_wing_scale": (math.log(1e-3), math.log(1e4)),
}
_WING_PARAMETERS = tuple(WING_BOUNDS)
#: Default cap on a line window's half-width, Å (:attr:`LineForest.max_half_width`).
MAX_HALF_WIDTH = 50.0


def _check_finite(name: str, value: np.ndarray) -> None:
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} contains non-finite values")


def forest_log_transmission(
    layout: SparseLayout,
    ln_amplitude: torch.Tensor,
    ln_sigma: torch.Tensor,
    ln_gamma: torch.Tensor,
    shift: torch.Tensor,
    sign: torch.Tensor,
    *,
    linear: bool,
    profile: str = "pseudo_voigt",
    emission: bool = True,
    fused: bool = True,
) -> torch.Tensor:
    """ln of the flux of the lines given by their raw parameters, on ``layout``'s grid.

    What :meth:`LineForest.log_transmission` evaluates, as a function of the per-line
    tensors (``ln a``, ``ln σ``, ``ln γ``, the centre shift from ``layout.center_ref`` in
    Å, the sign), so a subset of a forest's lines (a view of its parameters) is evaluated
    by the same kernels: the Triton kernels on a CUDA device when they apply, else the
    fused PyTorch kernels, or plain autograd with ``fused=False`` (the reference).
    ``linear``: ∏(1 − aV) (True) or exp(−Σ aV); ``emission``: whether any sign is −1.
    """
    if profile == "pseudo_voigt" and fused and use_triton(shift.device):
        # Every per-line step in Triton kernels, windows placed from the current shift.
        out = run_triton(
            "forest_log_transmission_triton",
            layout,
            ln_amplitude,
            ln_sigma,
            ln_gamma,
            shift,
            sign,
            linear=linear,
            clip=1.0 - 1e-6,
            emission=emission,
        )
        if out is not None:
            return out
    layout.refresh(shift)
    amplitude = torch.exp(ln_amplitude)
    sigma = torch.exp(ln_sigma)
    gamma = torch.exp(ln_gamma)
    if profile == "pseudo_voigt" and fused:
        fwhm, eta = tch_fwhm_and_eta(sigma, gamma)
        return pseudo_voigt_log_transmission(
            layout,
            amplitude,
            fwhm,
            eta,
            shift,
            sign,
            linear=linear,
            emission=emission,
        )
    if profile == "voigt" and fused:
        return voigt_log_transmission(
            layout,
            amplitude,
            sigma,
            gamma,
            shift,
            sign,
            linear=linear,
            emission=emission,
        )
    shape = pseudo_voigt if profile == "pseudo_voigt" else voigt
    clip = 1.0 - 1e-6

    def term(dx, amplitude, sigma, gamma, sign):
        av = sign * amplitude * shape(dx, sigma, gamma)
        return torch.log1p(-av.clamp(max=clip)) if linear else -av

    return layout.evaluate(
        term, {"amplitude": amplitude, "sigma": sigma, "gamma": gamma, "sign": sign}, shift
    )


class LineForest(nn.Module):
    """A forest of spectral lines with per-line tunable properties.

    Parameters
    ----------
    center : array_like
        Line centres, Å (kept as float64 reference values).
    amplitude : array_like
        Line amplitudes ``a`` (> 0), Å (area of ``a V``).
    sigma : array_like
        Gaussian standard deviations (> 0), Å.
    gamma : array_like
        Lorentzian half widths at half maximum (> 0), Å.
    emission : array_like of bool, optional
        True for emission lines (flux added instead of removed).
    mode : {"linear", "log"}
        ``"linear"``: ∏(1 − aV); ``"log"``: exp(−Σ aV).
    profile : {"pseudo_voigt", "voigt"}
        Line shape.
    trainable : iterable of str
        Which of ``"center"``, ``"amplitude"``, ``"sigma"``, ``"gamma"`` train.
    dtype : torch.dtype
        Working dtype of the parameters and fluxes (float32 or float64).
    device : str or torch.device, optional
        Where the parameters live.

    Notes
    -----
    Broad lines may carry the wing correction of the method paper's Appendix C.4,
    ``V · G`` with ``G = 1 + (e^α − 1) S((|λ − λc| − λt)/b)``
    (:func:`~blase_specutils.core.profiles.wing_correction`; see :meth:`set_wings`).
    Those lines are evaluated apart from the others, on windows of their own, with
    plain autograd; the rest of the forest keeps its fused kernels.
    """

    def __init__(
        self,
        center,
        amplitude,
        sigma,
        gamma,
        *,
        emission=None,
        mode: str = "linear",
        profile: str = "pseudo_voigt",
        trainable: Iterable[str] = ("amplitude", "sigma", "gamma"),
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> None:
        super().__init__()
        center = np.asarray(center, dtype=np.float64).ravel()
        amplitude = np.asarray(amplitude, dtype=np.float64).ravel()
        sigma = np.asarray(sigma, dtype=np.float64).ravel()
        gamma = np.asarray(gamma, dtype=np.float64).ravel()
        n = center.size
        for name, value in (("amplitude", amplitude), ("sigma", sigma), ("gamma", gamma)):
            if value.size != n:
                raise ValueError(f"{name} has {value.size} entries but center has {n}")
            _check_finite(name, value)
            if np.any(value <= 0):
                raise ValueError(f"{name} must be positive for every line")
        _check_finite("center", center)
        if n == 0:
            raise ValueError("a LineForest needs at least one line")
        if mode not in ("linear", "log"):
            raise ValueError(f"mode must be 'linear' or 'log', not {mode!r}")
        if profile not in ("pseudo_voigt", "voigt"):
            raise ValueError(f"profile must be 'pseudo_voigt' or 'voigt', not {profile!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if device is not None:
            device = as_torch_device(device)
        self.mode = mode
        self.profile = profile
        #: Doppler formula of :meth:`shift`: classical ``1 + v/c`` (False) or relativistic.
        self.relativistic = False
        #: Largest window half-width of :meth:`make_layout`, Å. The default (50 Å) holds
        #: every line of a cool star to the wing tolerance; a clone with broad lines (the
        #: hydrogen lines of an A star, whose Lorentzian wings need hundreds of Å to fall
        #: below the tolerance) raises it so their wings are not cut off by a step.
        self.max_half_width = MAX_HALF_WIDTH
        self.register_buffer(
            "center_ref", torch.as_tensor(center, dtype=torch.float64, device=device)
        )
        sign = (
            np.ones(n)
            if emission is None
            else np.where(np.asarray(emission, bool).ravel(), -1.0, 1.0)
        )
        if sign.size != n:
            raise ValueError("emission must have one entry per line")
        self.register_buffer("sign", torch.as_tensor(sign, dtype=dtype, device=device))
        # A Python flag, so the forward pass never synchronises a GPU to ask.
        self._has_emission = bool(np.any(sign < 0))
        self.center_shift = nn.Parameter(torch.zeros(n, dtype=dtype, device=device))
        self.ln_amplitude = nn.Parameter(
            torch.as_tensor(np.log(amplitude), dtype=dtype, device=device)
        )
        self.ln_sigma = nn.Parameter(torch.as_tensor(np.log(sigma), dtype=dtype, device=device))
        self.ln_gamma = nn.Parameter(torch.as_tensor(np.log(gamma), dtype=dtype, device=device))
        #: Whether the wing correction trains (``"wing"`` in ``trainable``).
        self._wing_trainable = False
        self.set_trainable(trainable)

    # ----------------------------------------------------------------- basics
    def _apply(self, fn, *args, **kwargs):
        # `.to(dtype)`, `.float()`, `.half()` … must never round the float64 reference
        # centres: keep them float64 on whatever device the parameters moved to.
        reference = self.center_ref
        super()._apply(fn, *args, **kwargs)
        self.center_ref = reference.to(device=self.ln_amplitude.device, dtype=torch.float64)
        return self

    @property
    def n_lines(self) -> int:
        """Number of lines."""
        return int(self.center_ref.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.ln_amplitude.dtype

    def linear_lines(self) -> np.ndarray:
        """Per line: whether its transmission is the product ``1 − aV`` (linear mode) rather
        than ``exp(−aV)`` (bool array; one value for a plain forest)."""
        return np.full(self.n_lines, self.mode == "linear")

    def set_trainable(self, names: Iterable[str]) -> None:
        """Choose which line properties train (others are frozen).

        ``names``: an iterable of ``"center"``, ``"amplitude"``, ``"sigma"``, ``"gamma"``,
        or one of them as a string.
        """
        names = {names} if isinstance(names, str) else set(names)
        unknown = names - set(TRAINABLE_NAMES)
        if unknown:
            raise ValueError(
                f"unknown trainable parameter(s) {sorted(unknown)}; choose from {TRAINABLE_NAMES}"
            )
        self.center_shift.requires_grad_("center" in names)
        self.ln_amplitude.requires_grad_("amplitude" in names)
        self.ln_sigma.requires_grad_("sigma" in names)
        self.ln_gamma.requires_grad_("gamma" in names)
        self._wing_trainable = "wing" in names
        if self.has_wings:
            for name in _WING_PARAMETERS:
                getattr(self, name).requires_grad_(self._wing_trainable)

    @property
    def trainable(self) -> tuple[str, ...]:
        flags = (self.center_shift, self.ln_amplitude, self.ln_sigma, self.ln_gamma)
        names = tuple(n for n, p in zip(PARAMETER_NAMES, flags) if p.requires_grad)
        if self.has_wings and self.wing_alpha.requires_grad:
            names += ("wing",)
        return names

    # ------------------------------------------------------------ broad lines
    @property
    def has_wings(self) -> bool:
        """Whether some lines carry the wing correction (:meth:`set_wings`)."""
        return hasattr(self, "wing_index")

    def set_wings(self, lines, *, alpha=0.0, offset, scale) -> None:
        """Give ``lines`` the wing correction ``G`` of Appendix C.4 (the rest keep none).

        Parameters
        ----------
        lines : array_like of bool or int
            The broad lines: a mask with one entry per line, or line indices.
        alpha : float or array_like
            Log stretch of the far wings, one value or one per line (dimensionless);
            0 (the default) leaves the lines exactly as they are.
        offset : float or array_like
            Where the wings change, ``λt`` (> 0), Å.
        scale : float or array_like
            How gradually, ``b`` (> 0), Å.

        Notes
        -----
        The parameters ``wing_alpha``, ``ln_wing_offset`` and ``ln_wing_scale`` hold one
        entry per line of the forest (lines without the correction ignore theirs); they
        train when ``"wing"`` is in :attr:`trainable`. Layouts made before this call do
        not know the lines apart: make a new one.
        """
        n = self.n_lines
        lines = np.asarray(lines).ravel()
        if lines.dtype == bool:
            if lines.size != n:
                raise ValueError(f"the wing mask has {lines.size} entries but there are {n} lines")
            mask = lines
        else:
            if lines.size and (lines.min() < 0 or lines.max() >= n):
                raise ValueError(f"wing line indices must lie in [0, {n})")
            mask = np.zeros(n, bool)
            mask[lines.astype(np.int64)] = True
        values = {}
        for name, value in (("alpha", alpha), ("offset", offset), ("scale", scale)):
            full = np.broadcast_to(np.asarray(value, dtype=np.float64), mask.shape).copy()
            if np.ndim(value) and np.size(value) != n:
                raise ValueError(f"{name} must be one value or one per line")
            _check_finite(name, full)
            if name != "alpha" and np.any(full[mask] <= 0):
                raise ValueError(f"the wing {name} must be positive, Å")
            values[name] = np.where(mask, full, 0.0 if name == "alpha" else 1.0)
        device, dtype = self.ln_amplitude.device, self.dtype
        raw = {
            "wing_alpha": values["alpha"],
            "ln_wing_offset": np.log(values["offset"]),
            "ln_wing_scale": np.log(values["scale"]),
        }
        for name, value in raw.items():
            parameter = nn.Parameter(torch.as_tensor(value, dtype=dtype, device=device))
            parameter.requires_grad_(self._wing_trainable)
            self.register_parameter(name, parameter)
        index = torch.as_tensor(np.nonzero(mask)[0], dtype=torch.long, device=device)
        self.register_buffer("wing_index", index)
        self.register_buffer("narrow", torch.as_tensor(~mask, dtype=dtype, device=device))

    def wing_properties(self) -> dict[str, np.ndarray] | None:
        """Per-line wing correction: ``wing`` (bool), ``alpha``, ``offset``, ``scale`` (Å);
        None without one."""
        if not self.has_wings:
            return None
        with torch.no_grad():
            mask = np.zeros(self.n_lines, bool)
            mask[self.wing_index.cpu().numpy()] = True
            return {
                "wing": mask,
                "alpha": self.wing_alpha.double().cpu().numpy(),
                "offset": torch.exp(self.ln_wing_offset.double()).cpu().numpy(),
                "scale": torch.exp(self.ln_wing_scale.double()).cpu().numpy(),
            }

    @torch.no_grad()
    def copy_wings_into(self, other: LineForest, positions) -> None:
        """Give ``other`` this forest's wing correction, line ``i`` at ``positions[i]``.

        For a forest grown from this one (lines added); the raw values are copied, so the
        corrected lines stay bit for bit as they were. Nothing happens without wings.
        """
        if not self.has_wings:
            return
        positions = np.asarray(positions, dtype=np.int64).ravel()
        if positions.size != self.n_lines:
            raise ValueError("positions must have one entry per line of this forest")
        mask = np.zeros(other.n_lines, bool)
        mask[positions[self.wing_index.cpu().numpy()]] = True
        other.set_wings(mask, offset=1.0, scale=1.0)
        where = torch.as_tensor(positions, dtype=torch.long, device=other.ln_amplitude.device)
        for name in _WING_PARAMETERS:
            getattr(other, name)[where] = getattr(self, name).to(other.dtype)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep parameters finite and inside physical bounds (called after optimiser steps)."""
        bounds = dict(LOG_BOUNDS)
        if self.has_wings:
            bounds.update(WING_BOUNDS)
        for name, (lo, hi) in bounds.items():
            p = getattr(self, name)
            p.nan_to_num_(nan=0.5 * (lo + hi)).clamp_(lo, hi)
        self.center_shift.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)

    def line_properties(self) -> dict[str, np.ndarray]:
        """Current per-line properties as float64 numpy arrays (Å for lengths)."""
        with torch.no_grad():
            sigma = torch.exp(self.ln_sigma.double())
            gamma = torch.exp(self.ln_gamma.double())
            fwhm, eta = tch_fwhm_and_eta(sigma, gamma)
            return {
                "center": (self.center_ref + self.center_shift.double()).cpu().numpy(),
                "amplitude": torch.exp(self.ln_amplitude.double()).cpu().numpy(),
                "sigma": sigma.cpu().numpy(),
                "gamma": gamma.cpu().numpy(),
                "fwhm": fwhm.cpu().numpy(),
                "eta": eta.cpu().numpy(),
                "emission": (self.sign < 0).cpu().numpy(),
            }

    # ----------------------------------------------------------------- layout
    def make_layout(
        self,
        wavelength,
        *,
        tolerance: float = 1e-4,
        velocity_budget_kms: float = 0.0,
        n_fwhm: float = 4.0,
        max_half_width: float | None = None,
        min_pixels: int = 8,
        bucket_ratio: int | None = None,
    ) -> SparseLayout:
        """Windows of every line on ``wavelength`` sized from the current line widths.

        Parameters
        ----------
        wavelength : array_like or torch.Tensor
            Strictly increasing evaluation grid, Å.
        tolerance : float
            Flux tolerance for truncated wings (see :func:`window_half_widths`).
        velocity_budget_kms : float
            Extra half-width for shifts that happen without a re-layout, km/s. Windows
            already follow the current centres, so 0 suffices unless centres move by
            more than a window between refreshes.
        n_fwhm : float
            Minimum window half-width in FWHM.
        max_half_width : float, optional
            Largest window half-width, Å; default :attr:`max_half_width` (50 Å unless
            the forest was cloned with broad lines).
        min_pixels : int
            Smallest window, pixels.
        bucket_ratio : int, optional
            Window lengths are powers of this; default 2 on every device. Windows are
            padded up to their bucket's length and the padding holds real wing pixels,
            so the ratio changes the model at the level of ``tolerance`` (8e-5 RMS on a
            PHOENIX clone between 2 and 4): one default keeps a model the same function
            on the CPU and on a GPU. (With the Triton kernels and CUDA graphs, 2 is also
            the fastest: 0.129 ms against 0.187 ms for 8 in the paper's setting.)
        """
        wl, half, core = self.window_sizes(
            wavelength,
            tolerance=tolerance,
            velocity_budget_kms=velocity_budget_kms,
            n_fwhm=n_fwhm,
            max_half_width=max_half_width,
        )
        wings = self.wing_properties()
        wl = wl.to(self.center_ref.device)
        wing_layout = None
        if wings is not None:
            # the corrected lines get windows of their own; the shared layout keeps them
            # on its smallest windows, where they add nothing (their sign is masked there)
            idx = np.nonzero(wings["wing"])[0]
            if idx.size:
                wing_layout = SparseLayout(
                    wl,
                    self.center_ref[self.wing_index],
                    half[idx],
                    dtype=self.dtype,
                    min_pixels=min_pixels,
                    bucket_ratio=bucket_ratio or 2,
                )
            half = np.where(wings["wing"], 0.0, half)
            core = np.where(wings["wing"], 0.0, core)
        layout = SparseLayout(
            wl,
            self.center_ref,
            half,
            core,
            dtype=self.dtype,
            min_pixels=min_pixels,
            bucket_ratio=bucket_ratio or 2,
        )
        if wings is not None:
            #: The corrected lines' own windows (None when the mask selects none).
            layout.wing_layout = wing_layout
        return layout

    def window_sizes(
        self,
        wavelength,
        *,
        tolerance: float = 1e-4,
        velocity_budget_kms: float = 0.0,
        n_fwhm: float = 4.0,
        max_half_width: float | None = None,
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The checked float64 grid and every line's window and core half-widths, Å.

        What :meth:`make_layout` builds its windows from (the arguments are its own).
        """
        props = self.line_properties()
        budget = props["center"] * velocity_budget_kms / SPEED_OF_LIGHT_KMS
        wings = self.wing_properties()
        if wings is not None:  # corrected wings reach e^α times as far down
            props["amplitude"] = props["amplitude"] * np.where(
                wings["wing"], np.maximum(np.exp(wings["alpha"]), 1.0), 1.0
            )
        half, core = window_half_widths(
            props["amplitude"],
            props["sigma"],
            props["gamma"],
            tolerance=tolerance,
            n_fwhm=n_fwhm,
            budget=budget,
            max_half_width=self.max_half_width if max_half_width is None else max_half_width,
        )
        wl = torch.as_tensor(wavelength, dtype=torch.float64)
        if wl.ndim != 1 or wl.numel() < 2:
            raise ValueError("wavelength must be a 1-D grid with at least two samples")
        if not bool(torch.all(torch.isfinite(wl))):
            raise ValueError("wavelength contains non-finite values")
        if not bool(torch.all(wl[1:] > wl[:-1])):
            raise ValueError("wavelength must be strictly increasing")
        return wl, half, core

    # ------------------------------------------------------------- evaluation
    def shift(self, velocity_kms: torch.Tensor | float | None = None) -> torch.Tensor:
        """Per-line centre shift from the reference centres, Å, including an RV."""
        shift = self.center_shift
        if velocity_kms is not None:
            v = torch.as_tensor(velocity_kms, dtype=self.dtype, device=shift.device)
            beta = v / SPEED_OF_LIGHT_KMS
            # λc' = λc · D with D = 1 + β (classical) or sqrt((1 + β)/(1 − β)).
            # (D − 1 written without cancellation, so float32 keeps its digits.)
            if self.relativistic:
                ratio = (1 + beta) / (1 - beta)
                stretch = (2 * beta / (1 - beta)) / (torch.sqrt(ratio) + 1)
            else:
                stretch = beta
            shift = shift + (self.center_ref.to(self.dtype) + shift) * stretch
        return shift

    def log_transmission(
        self, layout: SparseLayout, velocity_kms=None, *, fused: bool = True
    ) -> torch.Tensor:
        """ln of the forest flux on ``layout``'s grid.

        Parameters
        ----------
        layout : SparseLayout
            From :meth:`make_layout`.
        velocity_kms : float or torch.Tensor, optional
            Radial velocity applied to every line centre, km/s.
        fused : bool
            Use the fused kernel of the profile (False: plain autograd, the reference).
        """
        shift = self.shift(velocity_kms)
        if not self.has_wings:
            return self._log_transmission(layout, shift, self.sign, fused, self._has_emission)
        wing_layout = getattr(layout, "wing_layout", False)
        if wing_layout is False:
            raise ValueError(
                "this layout was made before the forest had its wing correction; "
                "make a new one with make_layout"
            )
        # the kernels apply the sign only when told there are emission lines
        out = self._log_transmission(layout, shift, self.sign * self.narrow, fused, True)
        if wing_layout is not None:
            out = out + self._wing_log_transmission(wing_layout, shift)
        return out

    def _wing_log_transmission(self, layout: SparseLayout, shift: torch.Tensor) -> torch.Tensor:
        """ln flux of the lines with a wing correction alone, on their own windows."""
        idx = self.wing_index
        sub_shift = shift[idx]
        layout.refresh(sub_shift)
        shape = pseudo_voigt if self.profile == "pseudo_voigt" else voigt
        linear = self.mode == "linear"
        clip = 1.0 - 1e-6

        def term(dx, amplitude, sigma, gamma, sign, alpha, offset, scale):
            v = shape(dx, sigma, gamma) * wing_correction(dx, alpha, offset, scale)
            av = sign * amplitude * v
            return torch.log1p(-av.clamp(max=clip)) if linear else -av

        per_line = {
            "amplitude": torch.exp(self.ln_amplitude[idx]),
            "sigma": torch.exp(self.ln_sigma[idx]),
            "gamma": torch.exp(self.ln_gamma[idx]),
            "sign": self.sign[idx],
            "alpha": self.wing_alpha[idx],
            "offset": torch.exp(self.ln_wing_offset[idx]),
            "scale": torch.exp(self.ln_wing_scale[idx]),
        }
        return layout.evaluate(term, per_line, sub_shift)

    def _log_transmission(self, layout, shift, sign, fused: bool, signed: bool) -> torch.Tensor:
        """ln flux of every line through the shared layout, each weighted by ``sign`` (the
        fused kernels apply it only when ``signed``)."""
        return forest_log_transmission(
            layout,
            self.ln_amplitude,
            self.ln_sigma,
            self.ln_gamma,
            shift,
            sign,
            linear=self.mode == "linear",
            profile=self.profile,
            emission=signed,
            fused=fused,
        )

    def forward(self, layout: SparseLayout, velocity_kms=None) -> torch.Tensor:
        """Forest flux (transmission) on ``layout``'s grid."""
        return torch.exp(self.log_transmission(layout, velocity_kms))

    def dense_flux(self, wavelength, velocity_kms=None) -> torch.Tensor:
        """Reference evaluation of every line on every pixel (small problems and tests only)."""
        wl = torch.as_tensor(wavelength, dtype=torch.float64, device=self.center_ref.device)
        shift = self.shift(velocity_kms)
        dx = (wl[None, :] - self.center_ref[:, None]).to(self.dtype) - shift[:, None]
        shape = pseudo_voigt if self.profile == "pseudo_voigt" else voigt
        av = (
            self.sign[:, None]
            * torch.exp(self.ln_amplitude)[:, None]
            * shape(dx, torch.exp(self.ln_sigma)[:, None], torch.exp(self.ln_gamma)[:, None])
        )
        if self.has_wings:
            g = wing_correction(
                dx,
                self.wing_alpha[:, None],
                torch.exp(self.ln_wing_offset)[:, None],
                torch.exp(self.ln_wing_scale)[:, None],
            )
            av = torch.where(self.narrow[:, None] > 0, av, av * g)
        if self.mode == "linear":
            return torch.prod(1.0 - av, dim=0)
        return torch.exp(-av.sum(0))
