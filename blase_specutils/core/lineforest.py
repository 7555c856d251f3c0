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

from .profiles import pseudo_voigt, tch_fwhm_and_eta, voigt
from .sparse import (
    SparseLayout,
    pseudo_voigt_log_transmission,
    run_triton,
    use_triton,
    voigt_log_transmission,
    window_half_widths,
)

__all__ = ["LineForest", "SPEED_OF_LIGHT_KMS", "PARAMETER_NAMES", "MAX_HALF_WIDTH"]

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
#: Default cap on a line window's half-width, Å (:attr:`LineForest.max_half_width`).
MAX_HALF_WIDTH = 50.0


def _check_finite(name: str, value: np.ndarray) -> None:
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} contains non-finite values")


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
            raise ValueError("dtype must be torch.float32 or torch.float64")
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

    def set_trainable(self, names: Iterable[str]) -> None:
        """Choose which line properties train (others are frozen).

        ``names``: an iterable of ``"center"``, ``"amplitude"``, ``"sigma"``, ``"gamma"``,
        or one of them as a string.
        """
        names = {names} if isinstance(names, str) else set(names)
        unknown = names - set(PARAMETER_NAMES)
        if unknown:
            raise ValueError(
                f"unknown trainable parameter(s) {sorted(unknown)}; choose from {PARAMETER_NAMES}"
            )
        self.center_shift.requires_grad_("center" in names)
        self.ln_amplitude.requires_grad_("amplitude" in names)
        self.ln_sigma.requires_grad_("sigma" in names)
        self.ln_gamma.requires_grad_("gamma" in names)

    @property
    def trainable(self) -> tuple[str, ...]:
        flags = (self.center_shift, self.ln_amplitude, self.ln_sigma, self.ln_gamma)
        return tuple(n for n, p in zip(PARAMETER_NAMES, flags) if p.requires_grad)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep parameters finite and inside physical bounds (called after optimiser steps)."""
        for name, (lo, hi) in LOG_BOUNDS.items():
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
        props = self.line_properties()
        budget = props["center"] * velocity_budget_kms / SPEED_OF_LIGHT_KMS
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
        return SparseLayout(
            wl.to(self.center_ref.device),
            self.center_ref,
            half,
            core,
            dtype=self.dtype,
            min_pixels=min_pixels,
            bucket_ratio=bucket_ratio or 2,
        )

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
        linear = self.mode == "linear"
        if self.profile == "pseudo_voigt" and fused and use_triton(shift.device):
            # Every per-line step in Triton kernels, windows placed from the current shift.
            out = run_triton(
                "forest_log_transmission_triton",
                layout,
                self.ln_amplitude,
                self.ln_sigma,
                self.ln_gamma,
                shift,
                self.sign,
                linear=linear,
                clip=1.0 - 1e-6,
                emission=self._has_emission,
            )
            if out is not None:
                return out
        layout.refresh(shift)
        amplitude = torch.exp(self.ln_amplitude)
        sigma = torch.exp(self.ln_sigma)
        gamma = torch.exp(self.ln_gamma)
        if self.profile == "pseudo_voigt" and fused:
            fwhm, eta = tch_fwhm_and_eta(sigma, gamma)
            return pseudo_voigt_log_transmission(
                layout,
                amplitude,
                fwhm,
                eta,
                shift,
                self.sign,
                linear=linear,
                emission=self._has_emission,
            )
        if self.profile == "voigt" and fused:
            return voigt_log_transmission(
                layout,
                amplitude,
                sigma,
                gamma,
                shift,
                self.sign,
                linear=linear,
                emission=self._has_emission,
            )
        shape = pseudo_voigt if self.profile == "pseudo_voigt" else voigt
        clip = 1.0 - 1e-6

        def term(dx, amplitude, sigma, gamma, sign):
            av = sign * amplitude * shape(dx, sigma, gamma)
            return torch.log1p(-av.clamp(max=clip)) if linear else -av

        return layout.evaluate(
            term, {"amplitude": amplitude, "sigma": sigma, "gamma": gamma, "sign": self.sign}, shift
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
        if self.mode == "linear":
            return torch.prod(1.0 - av, dim=0)
        return torch.exp(-av.sum(0))
