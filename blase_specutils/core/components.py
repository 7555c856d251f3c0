"""A line forest made of named components, each with its own optical-depth scale.

The telluric transmission is a product over molecules whose columns change
independently (water with the humidity, O₂ and CO₂ with the airmass alone), so the
telluric model is ``T = ∏_m T_m^{s_m}``, one scale ``s_m`` per molecule. A
:class:`ComponentForest` holds the molecules' clones as one :class:`LineForest` (its
per-line parameters concatenated, component after component, so everything that trains,
clamps, saves or counts the lines of a forest works on it unchanged) and evaluates each
component on its own windows with its own mode (a saturated water clone is a log-mode
forest, a weak CH₄ one may be linear), summing ``s_m ln T_m``.

Each component's lines are a contiguous block of the parameters, evaluated as views of
them, so one evaluation costs the same line–pixel pairs as the concatenated forest plus
one kernel call per component.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .layout import SparseLayout
from .lineforest import LineForest, forest_log_transmission
from .profiles import pseudo_voigt, voigt

__all__ = ["ComponentForest", "ComponentLayout", "check_component_names"]


class ComponentLayout:
    """One :class:`~blase_specutils.core.layout.SparseLayout` per component of a
    :class:`ComponentForest`, on one wavelength grid.

    Attributes
    ----------
    layouts : tuple of SparseLayout
        In the forest's component order.
    """

    def __init__(self, layouts: Sequence[SparseLayout]) -> None:
        self.layouts = tuple(layouts)

    @property
    def wavelength(self) -> torch.Tensor:
        """The grid, Å (float64)."""
        return self.layouts[0].wavelength

    @property
    def n_pixels(self) -> int:
        return self.layouts[0].n_pixels

    @property
    def n_lines(self) -> int:
        return sum(layout.n_lines for layout in self.layouts)

    def __len__(self) -> int:
        return len(self.layouts)

    def __getitem__(self, index: int) -> SparseLayout:
        return self.layouts[index]


class ComponentForest(LineForest):
    """Named line forests (molecules) as one forest, each scaled on its own.

    Build one with :meth:`from_forests`. The transmission with scales ``s`` is
    ``∏_m T_m^{s_m}`` (``ln T = Σ_m s_m ln T_m``); without scales every ``s_m = 1``, the
    components' plain product.

    Parameters
    ----------
    center, amplitude, sigma, gamma, emission, profile, trainable, dtype, device
        As for :class:`LineForest`, every component's lines in component order.
    component : array_like of int
        Per line, the index of its component (0 … n−1, non-decreasing: each component's
        lines are one block, and every component has lines).
    names : sequence of str
        The components' names (distinct, non-empty), e.g. ``("H2O", "O2")``.
    modes : sequence of {"linear", "log"}
        Each component's forest mode.
    """

    def __init__(
        self,
        center,
        amplitude,
        sigma,
        gamma,
        *,
        component,
        names: Sequence[str],
        modes: Sequence[str],
        emission=None,
        profile: str = "pseudo_voigt",
        trainable=("amplitude", "sigma", "gamma"),
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> None:
        names = tuple(names)
        modes = tuple(modes)
        check_component_names(names)
        if len(modes) != len(names):
            raise ValueError(f"{len(names)} component names but {len(modes)} modes")
        for name, mode in zip(names, modes):
            if mode not in ("linear", "log"):
                raise ValueError(
                    f"component {name!r}: mode must be 'linear' or 'log', not {mode!r}"
                )
        super().__init__(
            center, amplitude, sigma, gamma, emission=emission, mode=modes[0], profile=profile,
            trainable=trainable, dtype=dtype, device=device,
        )  # fmt: skip
        #: The components' common mode, or ``"mixed"`` (see :meth:`linear_lines` per line).
        self.mode = modes[0] if len(set(modes)) == 1 else "mixed"
        index = np.asarray(component).ravel()
        if index.size != self.n_lines:
            raise ValueError(
                f"component has {index.size} entries but there are {self.n_lines} lines"
            )
        if not np.issubdtype(index.dtype, np.integer):
            raise ValueError("component must hold integer component indices")
        if np.any(np.diff(index) < 0):
            raise ValueError("component must be non-decreasing (each component's lines one block)")
        counts = np.bincount(index, minlength=len(names)) if index.min() >= 0 else None
        if counts is None or counts.size != len(names) or np.any(counts == 0):
            raise ValueError(
                f"component must index {len(names)} components (0 … {len(names) - 1}), "
                "each with at least one line"
            )
        #: The components' names, in order.
        self.names = names
        #: The components' modes (``"linear"`` or ``"log"``), in order.
        self.modes = modes
        ends = np.cumsum(counts)
        #: Each component's lines: ``[start, stop)`` rows of the parameters.
        self.bounds = tuple((int(e - c), int(e)) for c, e in zip(counts, ends))
        self.register_buffer(
            "component", torch.as_tensor(index, dtype=torch.long, device=self.center_ref.device)
        )
        sign = self.sign.cpu().numpy()
        # Python flags per component, so the forward pass never synchronises a GPU to ask
        self._component_emission = tuple(bool(np.any(sign[a:b] < 0)) for a, b in self.bounds)

    @classmethod
    def from_forests(cls, forests: Sequence[tuple[str, LineForest]]) -> ComponentForest:
        """Concatenate named forests, their raw parameters copied bit for bit.

        Parameters
        ----------
        forests : sequence of (str, LineForest)
            The components in order. They must share a profile, a dtype and the Doppler
            formula; each keeps its own mode. The trainable properties are those of the
            first.

        Raises
        ------
        ValueError
            Without components, with repeated or empty names, or forests that differ in
            profile, dtype or Doppler formula.
        TypeError
            If a component is not a LineForest (or is itself a ComponentForest).
        """
        forests = list(forests)
        names = tuple(name for name, _ in forests)
        check_component_names(names)
        for name, forest in forests:
            if not isinstance(forest, LineForest) or isinstance(forest, ComponentForest):
                raise TypeError(
                    f"component {name!r} must be a LineForest, not {type(forest).__name__}"
                )
        first = forests[0][1]
        for what in ("profile", "dtype", "relativistic"):
            values = {str(getattr(f, what)) for _, f in forests}
            if len(values) > 1:
                raise ValueError(
                    f"the components differ in {what} ({', '.join(sorted(values))}); "
                    "clone every molecule alike"
                )
        with torch.no_grad():
            props = [f.line_properties() for _, f in forests]
            out = cls(
                torch.cat([f.center_ref.cpu() for _, f in forests]).numpy(),
                np.concatenate([p["amplitude"] for p in props]),
                np.concatenate([p["sigma"] for p in props]),
                np.concatenate([p["gamma"] for p in props]),
                component=np.concatenate(
                    [np.full(f.n_lines, k, dtype=np.int64) for k, (_, f) in enumerate(forests)]
                ),
                names=names,
                modes=[f.mode for _, f in forests],
                emission=np.concatenate([p["emission"] for p in props]),
                profile=first.profile,
                trainable=first.trainable,
                dtype=first.dtype,
                device=first.center_ref.device,
            )
            for name in ("ln_amplitude", "ln_sigma", "ln_gamma", "center_shift"):
                getattr(out, name).copy_(torch.cat([getattr(f, name).detach() for _, f in forests]))
        out.relativistic = first.relativistic
        return out

    @property
    def n_components(self) -> int:
        """Number of components."""
        return len(self.names)

    def component_forest(self, name: str) -> LineForest:
        """A plain, independent :class:`LineForest` copy of one component (bit for bit)."""
        if name not in self.names:
            raise KeyError(f"no component {name!r}; the components are {list(self.names)}")
        k = self.names.index(name)
        a, b = self.bounds[k]
        with torch.no_grad():
            forest = LineForest(
                self.center_ref[a:b].cpu().numpy(),
                np.ones(b - a),
                np.ones(b - a),
                np.ones(b - a),
                emission=(self.sign[a:b] < 0).cpu().numpy(),
                mode=self.modes[k],
                profile=self.profile,
                trainable=self.trainable,
                dtype=self.dtype,
                device=self.center_ref.device,
            )
            for attr in ("ln_amplitude", "ln_sigma", "ln_gamma", "center_shift"):
                getattr(forest, attr).copy_(getattr(self, attr)[a:b])
        forest.relativistic = self.relativistic
        return forest

    def linear_lines(self) -> np.ndarray:
        """Per line: whether its component is a linear-mode forest (bool array)."""
        out = np.zeros(self.n_lines, dtype=bool)
        for (a, b), mode in zip(self.bounds, self.modes):
            out[a:b] = mode == "linear"
        return out

    def line_properties(self) -> dict[str, np.ndarray]:
        """:meth:`LineForest.line_properties` plus ``component`` (index per line)."""
        props = super().line_properties()
        props["component"] = self.component.cpu().numpy()
        return props

    def set_wings(self, lines, *, alpha=0.0, offset, scale) -> None:
        """Not for a telluric model by molecule (its lines are narrow)."""
        raise NotImplementedError("a ComponentForest has no wing correction")

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
    ) -> ComponentLayout:
        """Every component's windows on ``wavelength`` (see :meth:`LineForest.make_layout`)."""
        wl, half, core = self.window_sizes(
            wavelength,
            tolerance=tolerance,
            velocity_budget_kms=velocity_budget_kms,
            n_fwhm=n_fwhm,
            max_half_width=max_half_width,
        )
        wl = wl.to(self.center_ref.device)
        return ComponentLayout(
            SparseLayout(
                wl,
                self.center_ref[a:b],
                half[a:b],
                core[a:b],
                dtype=self.dtype,
                min_pixels=min_pixels,
                bucket_ratio=bucket_ratio or 2,
            )
            for a, b in self.bounds
        )

    # ------------------------------------------------------------- evaluation
    def component_log_transmissions(
        self, layout: ComponentLayout, velocity_kms=None, *, fused: bool = True
    ) -> list[torch.Tensor]:
        """``ln T_m`` of every component on ``layout``'s grid (unscaled), in order."""
        if not isinstance(layout, ComponentLayout) or len(layout) != self.n_components:
            raise TypeError(
                f"a ComponentForest of {self.n_components} components is evaluated on the "
                "ComponentLayout its make_layout returns"
            )
        shift = self.shift(velocity_kms)
        out = []
        for k, (a, b) in enumerate(self.bounds):
            out.append(
                forest_log_transmission(
                    layout[k],
                    self.ln_amplitude[a:b],
                    self.ln_sigma[a:b],
                    self.ln_gamma[a:b],
                    shift[a:b],
                    self.sign[a:b],
                    linear=self.modes[k] == "linear",
                    profile=self.profile,
                    emission=self._component_emission[k],
                    fused=fused,
                )
            )
        return out

    def log_transmission(
        self,
        layout: ComponentLayout,
        velocity_kms=None,
        *,
        fused: bool = True,
        scales: torch.Tensor | Sequence[float] | None = None,
    ) -> torch.Tensor:
        """``Σ_m s_m ln T_m`` on ``layout``'s grid.

        Parameters
        ----------
        layout : ComponentLayout
            From :meth:`make_layout`.
        velocity_kms : float or torch.Tensor, optional
            Shift applied to every line centre, km/s.
        fused : bool
            As for :meth:`LineForest.log_transmission`.
        scales : torch.Tensor or sequence of float, optional
            One optical-depth scale per component (default: all 1).
        """
        parts = self.component_log_transmissions(layout, velocity_kms, fused=fused)
        if scales is None:
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            return total
        scales = torch.as_tensor(scales, dtype=parts[0].dtype, device=parts[0].device)
        if scales.shape != (self.n_components,):
            raise ValueError(
                f"scales must hold one value per component ({self.n_components}), "
                f"got shape {tuple(scales.shape)}"
            )
        total = scales[0] * parts[0]
        for k in range(1, self.n_components):
            total = total + scales[k] * parts[k]
        return total

    def forward(self, layout: ComponentLayout, velocity_kms=None) -> torch.Tensor:
        """The components' product on ``layout``'s grid (every scale 1)."""
        return torch.exp(self.log_transmission(layout, velocity_kms))

    def dense_flux(self, wavelength, velocity_kms=None, *, scales=None) -> torch.Tensor:
        """Reference evaluation of every line on every pixel, ``∏_m T_m^{s_m}`` (tests)."""
        wl = torch.as_tensor(wavelength, dtype=torch.float64, device=self.center_ref.device)
        shift = self.shift(velocity_kms)
        dx = (wl[None, :] - self.center_ref[:, None]).to(self.dtype) - shift[:, None]
        shape = pseudo_voigt if self.profile == "pseudo_voigt" else voigt
        av = (
            self.sign[:, None]
            * torch.exp(self.ln_amplitude)[:, None]
            * shape(dx, torch.exp(self.ln_sigma)[:, None], torch.exp(self.ln_gamma)[:, None])
        )
        log_t = torch.zeros(wl.numel(), dtype=av.dtype, device=av.device)
        for k, ((a, b), mode) in enumerate(zip(self.bounds, self.modes)):
            part = torch.log(torch.prod(1.0 - av[a:b], 0)) if mode == "linear" else -av[a:b].sum(0)
            log_t = log_t + (1.0 if scales is None else float(scales[k])) * part
        return torch.exp(log_t)


def check_component_names(names: Sequence) -> None:
    """Raise ValueError for no names, a non-string or empty one, or a repeated one."""
    if len(names) == 0:
        raise ValueError("a telluric model by molecule needs at least one component")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"component names must be non-empty strings, not {name!r}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"component names must be distinct; repeated: {repeated}")
