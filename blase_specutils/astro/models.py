"""astropy.modeling facades over the torch line-forest engine.

A clone holds thousands of lines; as astropy compound models they would not
scale (recursion limits, minutes per iteration), so the whole forest stays one
torch module and the astropy :class:`~astropy.modeling.Model` only exposes a
few global, unit-aware parameters. Per-line properties travel as a
:class:`~astropy.table.QTable` (:attr:`LineForestModel.line_table`).

Models
------
:class:`LineForestModel`
    The clone evaluated point by point at any spectral coordinate, with a
    radial velocity ``rv`` (km/s) and an amplitude multiplier ``scale``:
    ``F(λ) = ∏_j (1 − scale · a_j V_j(λ − λc_j (1 + rv/c)))``. Has an exact
    ``fit_deriv`` (forward-mode autodiff), so astropy's least-squares fitters
    and :func:`specutils.fitting.fit_lines` work with it directly.
:class:`ExtrinsicModel`
    The clone as observed: RV-shifted lines on a uniform-velocity fine grid,
    convolved with the rotation kernel (``vsini``, ``limb_darkening``) and the
    Gaussian instrument kernel (``resolving_power``), then averaged into the
    pixels whose centres are ``x``. ``x`` must therefore be a sorted pixel
    grid.

Fitter
------
:class:`BlaseFitter`
    Astropy-style fitter, ``fitter(model, x, y, weights=None)``, that
    optimises the global parameters with torch (L-BFGS or Adam) and,
    optionally, the forest's line properties with the paper's L1 prior.

Units
-----
The input is any spectral coordinate (``input_units = {"x": Å}`` with the
:func:`astropy.units.spectral` equivalency): Å, nm, µm, Hz or cm⁻¹ give the same
result. Plain numbers are taken as Å (vacuum, like the clone). The output is a
dimensionless flux in the clone's flattened continuum units; it is a
dimensionless Quantity when ``x`` is a Quantity.

Rules for compound models and units (each is checked in ``tests/test_models.py``):

* Evaluation: a compound with any astropy model evaluates on plain ``x`` (Å).
  With a Quantity ``x`` (converted to Å first), the other parts must accept a
  wavelength Quantity, e.g. ``Polynomial1D(1, c0=1 * u.one, c1=0 / u.AA)``;
  a ``Chebyshev1D`` with a plain ``domain`` cannot.
* Fitting with astropy fitters: ``rv`` (and ``vsini``) carry units, so the
  fitter takes its unit path, which needs every part to implement
  ``_parameter_units_for_data_units``. ``Polynomial1D`` does: fit with
  Quantity ``x`` and ``y`` and the units come back. ``Chebyshev1D`` does not:
  build ``model.without_units() * Chebyshev1D(2, domain=[x0, x1])`` (values
  in km/s) and fit plain arrays, x in Å.
* astropy 8's ``Chebyshev1D.fit_deriv`` ignores ``domain``; for a compound
  whose parts all have ``fit_deriv`` (``LineForestModel`` × domain-mapped
  polynomial) pass ``estimate_jacobian=True``. ``ExtrinsicModel`` has no
  ``fit_deriv``, so its compounds are differenced numerically anyway.
* Plain data in, plain parameters out: astropy fitters return the fitted
  parameters without units (values in km/s) unless ``x`` or ``y`` is a Quantity.
* :class:`BlaseFitter` fits :class:`LineForestModel` / :class:`ExtrinsicModel`
  themselves, not compound models (it needs the torch graph of every part).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterable, Mapping

import astropy.units as u
import numpy as np
import torch
import torch.autograd.forward_ad as forward_ad
from astropy.modeling import Fittable1DModel, Parameter
from astropy.table import QTable
from torch import Tensor, nn

from ..core.broadening import (
    SPEED_OF_LIGHT_KMS,
    convolve_same,
    gaussian_kernel,
    gaussian_kernel_half_width,
    log_uniform_grid,
    rotation_kernel,
    rotation_kernel_half_width,
)
from ..core.lineforest import LineForest
from ..core.losses import chi2, l1_prior
from ..core.observe import observe_fine
from ..core.resample import PixelAverager, pixel_edges_from_centers
from ..core.train import optimize

__all__ = ["LineForestModel", "ExtrinsicModel", "BlaseFitter"]

_KMS = u.km / u.s


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _float64_forest(source, *, device=None) -> LineForest:
    """A private float64 copy of the forest held by ``source``.

    ``source`` is a :class:`LineForest`, anything with a ``forest`` attribute
    holding one (e.g. :class:`~blase_specutils.CloneResult`), or a clone line
    table (:class:`~astropy.table.QTable` from ``forest_to_table``).
    """
    if isinstance(source, QTable):
        # Imported here: the table format belongs to the cloning workflow, which
        # sits above this layer.
        from .clones import forest_from_table

        forest = forest_from_table(source, dtype=torch.float64, device=device)
    else:
        forest = getattr(source, "forest", source)
        if not isinstance(forest, LineForest):
            raise TypeError(
                "expected a LineForest, a CloneResult or a clone line table (QTable), "
                f"got {type(source).__name__}"
            )
        forest = copy.deepcopy(forest).to(dtype=torch.float64)
        if device is not None:
            forest = forest.to(device=device)
    return forest


def _spectral_axis_angstrom(x, name: str = "x") -> np.ndarray:
    """``x`` as a float64 array in Å (plain numbers are taken as Å)."""
    if isinstance(x, u.Quantity):
        if x.unit.physical_type == "dimensionless":
            values = x.to_value(u.dimensionless_unscaled)
        else:
            try:
                values = x.to_value(u.AA, equivalencies=u.spectral())
            except u.UnitConversionError as error:
                raise u.UnitsError(
                    f"{name} must be a spectral coordinate (wavelength, frequency, wavenumber "
                    f"or energy), got unit {x.unit}"
                ) from error
    else:
        values = x
    try:
        values = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be numeric, got {type(x).__name__}") from error
    bad = ~np.isfinite(values)
    if np.any(bad):
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or infinite values")
    if np.any(values <= 0):
        raise ValueError(
            f"{name} must be positive wavelengths; {int(np.sum(values <= 0))} are <= 0 Å"
        )
    return values


def _parameter_scalar(value, unit, name: str) -> float:
    """One parameter value astropy passes to ``evaluate`` as a float in ``unit``."""
    if isinstance(value, u.Quantity):
        value = value.to_value(u.dimensionless_unscaled if unit is None else unit)
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1:
        raise ValueError(
            f"{name} has {array.size} values; model sets (n_models > 1) are not supported"
        )
    number = float(array.reshape(()))
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


class _ScaledForest(nn.Module):
    """Calls ``forest.log_transmission``; lets ``functional_call`` swap ``ln_amplitude``."""

    def __init__(self, forest: LineForest) -> None:
        super().__init__()
        self.forest = forest

    def forward(self, layout, velocity_kms, fused: bool) -> Tensor:  # noqa: D102
        return self.forest.log_transmission(layout, velocity_kms, fused=fused)


def _scaled_log_transmission(
    forest: LineForest, layout, rv: Tensor, scale: Tensor, *, fused: bool
) -> Tensor:
    """ln F of the forest with every amplitude multiplied by ``scale`` (> 0).

    The scale enters as ``ln a + ln scale`` through :func:`torch.func.functional_call`,
    so the engine's own evaluation (fused kernel or plain autograd) is used
    unchanged and ``scale == 1`` reproduces it bit for bit.
    """
    wrapper = _ScaledForest(forest)
    ln_amplitude = forest.ln_amplitude + torch.log(scale)
    return torch.func.functional_call(
        wrapper, {"forest.ln_amplitude": ln_amplitude}, (layout, rv), {"fused": fused}
    )


class _Cache:
    """Per-model cache of grids/layouts; a deep copy starts empty."""

    def __init__(self) -> None:
        self.key = None
        self.value = None

    def __deepcopy__(self, memo):
        return _Cache()


def _x_key(x: np.ndarray) -> tuple:
    return (x.shape, hash(x.tobytes()))


# ---------------------------------------------------------------------------
# LineForestModel
# ---------------------------------------------------------------------------
class LineForestModel(Fittable1DModel):
    """A line-forest clone as an astropy model with a radial velocity and an amplitude scale.

    ``F(λ) = ∏_j (1 − scale · s_j a_j V_j(λ − λc_j (1 + rv / c)))`` in the
    forest's linear mode, ``exp(−scale · Σ_j s_j a_j V_j)`` in its log mode,
    evaluated point by point (``x`` may be unsorted, repeated or scalar).

    Parameters
    ----------
    forest : LineForest, CloneResult or astropy.table.QTable
        The clone. A private float64 copy is taken (the model evaluates in
        float64 so that derivatives are accurate); a clone line table from
        ``CloneResult.lines`` / ``forest_to_table`` is rebuilt.
    rv : float or astropy.units.Quantity, optional
        Radial velocity applied to every line centre, km/s (positive = redshift).
    scale : float, optional
        Multiplier of every line amplitude, dimensionless, ≥ 0.
    tolerance : float, optional
        Wing-truncation tolerance of the sparse line windows, continuum units.
    device : str or torch.device, optional
        Where the forest copy lives (default: where it already is).
    **kwargs
        Passed to :class:`astropy.modeling.Fittable1DModel` (``name``,
        ``fixed``, ``bounds``, ``meta``…).

    Notes
    -----
    Inputs: ``x``, any spectral coordinate (Å, nm, µm, Hz, cm⁻¹, …; plain
    numbers are Å). Output: flux in the clone's flattened continuum units,
    dimensionless.

    The engine truncates each line's wings where they fall below
    ``tolerance``, in pixels of the grid it is given (here the sorted unique
    ``x``), so values agree between different grids to about ``tolerance``
    (a lone point gets every line's full wings). The layout for the last
    ``x`` is cached and rebuilt when ``x`` or the lines change.

    Local fitters (``LevMarLSQFitter``, ``TRFLSQFitter``) need a starting ``rv`` within
    about a line width (a few km/s at high resolution) of the answer: further out, χ²
    has other minima where lines line up with their neighbours, and the fitter settles
    in one without a warning. :func:`blase_specutils.fit` starts with a grid search over
    the RV for this reason.

    Examples
    --------
    >>> import astropy.units as u
    >>> from blase_specutils.core.lineforest import LineForest
    >>> forest = LineForest([10000.0], [0.02], [0.05], [0.02])
    >>> model = LineForestModel(forest, rv=0 * u.km / u.s)
    >>> float(model(1.0 * u.um)) < 1.0
    True
    >>> model.rv.unit
    Unit("km / s")
    """

    rv = Parameter(default=0.0, unit=_KMS, description="Radial velocity of every line, km/s")
    scale = Parameter(default=1.0, min=0.0, description="Multiplier of every line amplitude")

    input_units_equivalencies = {"x": u.spectral()}
    _input_units_strict = True
    _input_units_allow_dimensionless = True
    return_units = {"y": u.dimensionless_unscaled}

    #: Parameter units used inside ``evaluate`` / torch (``None``: dimensionless).
    _internal_units = {"rv": _KMS, "scale": None}

    def __init__(
        self, forest, rv=0.0, scale=1.0, *, tolerance: float = 1e-4, device=None, **kwargs
    ) -> None:
        tolerance = float(tolerance)
        if not (math.isfinite(tolerance) and tolerance > 0):
            raise ValueError(f"tolerance must be finite and > 0, got {tolerance}")
        self._forest = _float64_forest(forest, device=device)
        self._tolerance = tolerance
        self._cache = _Cache()
        for name, unit in self._internal_units.items():
            # plain numbers are taken in the parameter's documented unit (km/s)
            if unit is not None and name in kwargs and not isinstance(kwargs[name], u.Quantity):
                kwargs[name] = kwargs[name] * unit
        if not isinstance(rv, u.Quantity):
            rv = rv * _KMS
        super().__init__(rv=rv, scale=scale, **kwargs)

    # ------------------------------------------------------------ properties
    @property
    def input_units(self):  # noqa: D102
        return {self.inputs[0]: u.AA}

    def _parameter_units_for_data_units(self, inputs_unit, outputs_unit):
        # Parameters do not depend on the data's units: x is converted to Å
        # first (input_units) and the flux is dimensionless.
        return {name: unit for name, unit in self._internal_units.items() if unit is not None}

    def without_units(self) -> LineForestModel:
        """A copy whose parameters are plain numbers in the internal units (km/s).

        Use it to build compound models with astropy models that do not support
        units in fitting (e.g. ``Chebyshev1D``), then fit with plain arrays, x in Å.

        Returns
        -------
        LineForestModel
            Same class, same forest, parameter units removed (values in km/s
            and dimensionless).
        """
        model = self.copy()
        for name, unit in self._internal_units.items():
            parameter = getattr(model, name)
            if parameter.unit is not None:
                target = u.dimensionless_unscaled if unit is None else unit
                parameter.value = parameter.quantity.to_value(target)
                parameter._set_unit(None, force=True)
        return model

    @property
    def forest(self) -> LineForest:
        """The model's own float64 :class:`LineForest` (the torch module)."""
        return self._forest

    @property
    def n_lines(self) -> int:
        """Number of lines in the forest."""
        return self._forest.n_lines

    @property
    def line_table(self) -> QTable:
        """Per-line properties (centre, amplitude, σ, γ, FWHM in Å; depth; …) as a QTable."""
        from .clones import forest_to_table

        return forest_to_table(self._forest)

    # ----------------------------------------------------------- evaluation
    def _parameter_values(self, values: Mapping[str, object]) -> dict[str, float]:
        out = {
            name: _parameter_scalar(values[name], self._internal_units[name], name)
            for name in values
        }
        if out["scale"] < 0:
            raise ValueError(
                f"scale must be >= 0 (it multiplies line amplitudes), got {out['scale']}"
            )
        return out

    def _tensors(self, values: Mapping[str, float]) -> dict[str, Tensor]:
        device = self._forest.center_ref.device
        return {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in values.items()}

    def _prepare_x(self, x_angstrom: np.ndarray):
        """Sorted unique grid (≥ 2 samples) and how to map it back to ``x``'s shape."""
        flat = x_angstrom.reshape(-1)
        if flat.size == 0:
            raise ValueError("x is empty")
        grid, inverse = np.unique(flat, return_inverse=True)
        if grid.size == 1:  # a layout needs two samples; add a dummy one 1 Å redwards
            grid = np.array([grid[0], grid[0] + 1.0])
        return grid, (inverse.reshape(-1), x_angstrom.shape)

    @staticmethod
    def _restore_x(values: np.ndarray, how) -> np.ndarray:
        inverse, shape = how
        return values[inverse].reshape(shape)

    @staticmethod
    def _restore_x_torch(values: Tensor, how) -> Tensor:
        inverse, shape = how
        return values[torch.as_tensor(inverse, device=values.device)].reshape(shape)

    def _layout(self, grid: np.ndarray, *, reuse: bool = False):
        """Sparse layout of the forest on ``grid`` (cached; rebuilt when the lines change)."""
        forest = self._forest
        state = tuple(p._version for p in forest.parameters())
        key = _x_key(grid)
        cache = self._cache
        if cache.key is not None and cache.key[0] == key and (reuse or cache.key[1] == state):
            return cache.value
        with torch.no_grad():
            layout = forest.make_layout(grid, tolerance=self._tolerance)
        cache.key, cache.value = (key, state), layout
        return layout

    def _torch_flux(
        self,
        grid: np.ndarray,
        params: Mapping[str, Tensor],
        *,
        fused: bool = True,
        reuse_layout: bool = False,
    ) -> Tensor:
        """Flux on the prepared ``grid`` (Å) as a float64 tensor, differentiable in ``params``."""
        layout = self._layout(grid, reuse=reuse_layout)
        log_t = _scaled_log_transmission(
            self._forest, layout, params["rv"], params["scale"], fused=fused
        )
        return torch.exp(log_t)

    def _evaluate_numpy(self, x, values: Mapping[str, object]) -> np.ndarray:
        x_angstrom = _spectral_axis_angstrom(x)
        grid, how = self._prepare_x(x_angstrom)
        params = self._tensors(self._parameter_values(values))
        with torch.no_grad():
            flux = self._torch_flux(grid, params)
        return self._restore_x(flux.cpu().numpy(), how)

    def evaluate(self, x, rv, scale):
        """Flux of the forest at ``x``.

        Parameters
        ----------
        x : array_like or astropy.units.Quantity
            Spectral coordinate, Å when plain (any spectral unit as a Quantity);
            any shape, unsorted and repeated values allowed.
        rv : float, numpy.ndarray or astropy.units.Quantity
            Radial velocity, km/s (a single value).
        scale : float or numpy.ndarray
            Amplitude multiplier, dimensionless (a single value, ≥ 0).

        Returns
        -------
        numpy.ndarray
            Flux, dimensionless (flattened continuum units), shape of ``x``.
        """
        return self._evaluate_numpy(x, {"rv": rv, "scale": scale})

    def fit_deriv(self, x, rv, scale):
        """Derivatives of the flux with respect to ``rv`` and ``scale``.

        Computed by forward-mode automatic differentiation through the
        unfused torch evaluation (the fused kernel has no forward-mode rule),
        one pass per parameter. The two evaluations differ only by Gaussian
        tails below ``tolerance`` (≈1e-8 in flux), so these derivatives match
        finite differences of :meth:`evaluate` to ≈1e-7 relative.

        Parameters
        ----------
        x : array_like or astropy.units.Quantity
            Spectral coordinate, Å when plain.
        rv : float or astropy.units.Quantity
            Radial velocity, km/s.
        scale : float
            Amplitude multiplier, dimensionless (> 0).

        Returns
        -------
        list of numpy.ndarray
            ``[∂F/∂rv (per km/s), ∂F/∂scale]``, each with the shape of ``x``.
        """
        return self._jvp_columns(x, {"rv": rv, "scale": scale}, ("rv", "scale"))

    def _jvp_columns(
        self, x, values: Mapping[str, object], names: Iterable[str]
    ) -> list[np.ndarray]:
        x_angstrom = _spectral_axis_angstrom(x)
        grid, how = self._prepare_x(x_angstrom)
        params = self._tensors(self._parameter_values(values))
        columns = []
        with torch.no_grad(), warnings.catch_warnings():
            # torch loads its forward-AD decompositions through the deprecated
            # torch.jit.script on first use; that warning is torch's own business.
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning
            )
            for name in names:
                with forward_ad.dual_level():
                    dual = dict(params)
                    dual[name] = forward_ad.make_dual(params[name], torch.ones_like(params[name]))
                    flux = self._torch_flux(grid, dual, fused=False)
                    tangent = forward_ad.unpack_dual(flux).tangent
                if tangent is None:  # the flux does not depend on this parameter
                    tangent = torch.zeros(grid.size, dtype=torch.float64)
                columns.append(self._restore_x(tangent.cpu().numpy(), how))
        return columns


# ---------------------------------------------------------------------------
# ExtrinsicModel
# ---------------------------------------------------------------------------
class _FineGrid:
    """Fine uniform-velocity grid, the forest's layout on it and the pixel averager."""

    def __init__(self, wavelength: Tensor, averager: PixelAverager) -> None:
        self.wavelength = wavelength
        self.averager = averager


class ExtrinsicModel(LineForestModel):
    """A clone as observed: RV, rotation, instrument, and averaging into pixels.

    The forest (lines shifted by ``rv``, amplitudes × ``scale``) is evaluated
    on a grid uniform in velocity (step ``step_kms``) that covers the pixels
    plus a buffer for both kernels, convolved with the rigid-rotation kernel
    (``vsini``, linear limb darkening ``limb_darkening``) and the Gaussian
    instrumental profile (FWHM = c / ``resolving_power``), then averaged
    over each pixel (pixel edges are midpoints between neighbouring ``x``).
    Kernels, convolution and averaging are the core engine's
    (:func:`~blase_specutils.core.broadening.rotation_kernel`,
    :func:`~blase_specutils.core.broadening.gaussian_kernel`,
    :func:`~blase_specutils.core.broadening.convolve_same`,
    :class:`~blase_specutils.core.resample.PixelAverager`).

    Parameters
    ----------
    forest : LineForest, CloneResult or astropy.table.QTable
        The clone (a private float64 copy is taken).
    rv : float or astropy.units.Quantity, optional
        Radial velocity, km/s.
    scale : float, optional
        Line amplitude multiplier, dimensionless.
    vsini : float or astropy.units.Quantity, optional
        Projected rotational velocity, km/s, in ``[0, vsini_max]``.
    limb_darkening : float, optional
        Linear limb-darkening coefficient ε, dimensionless, in [0, 1]. Fixed
        by default (pass ``fixed={"limb_darkening": False}`` to fit it).
    resolving_power : float, optional
        Instrumental resolving power R = λ/Δλ_FWHM, dimensionless, ≥
        ``resolving_power_min``.
    step_kms : float, optional
        Velocity step of the fine grid, km/s.
    vsini_max : float or astropy.units.Quantity, optional
        Largest v sin i the fixed-length rotation kernel holds, km/s; default
        ``max(2 vsini, vsini + 20 km/s)``. It is the upper bound of ``vsini``.
    resolving_power_min : float, optional
        Smallest R the fixed-length Gaussian kernel holds to ``n_sigma``
        (default ``resolving_power / 1.5``); the lower bound of
        ``resolving_power``.
    n_sigma : float, optional
        Truncation radius of the Gaussian kernel at ``resolving_power_min``, σ.
    tolerance : float, optional
        Wing-truncation tolerance of the sparse line windows.
    device : str or torch.device, optional
        Where the forest copy lives.
    **kwargs
        Passed to :class:`astropy.modeling.Fittable1DModel`.

    Notes
    -----
    ``x`` must be 1-D, strictly increasing, with at least two pixels (the
    pixel centres of one contiguous order); it is a pixel grid, not a set of
    points. Pixels should span a few fine-grid steps: the fine flux is piecewise
    constant, so a Gaussian line seen through 1.5 km/s pixels on the default
    0.5 km/s grid is off by 0.4 % of its depth (2 % through 0.3 km/s pixels);
    lower ``step_kms`` for finer pixels. There is no ``fit_deriv`` (the
    rotation kernel has no forward-mode derivative): astropy fitters estimate
    the Jacobian by finite differences, :class:`BlaseFitter` uses reverse-mode
    gradients.
    """

    vsini = Parameter(
        default=2.0, unit=_KMS, min=0.0, description="Projected rotational velocity, km/s"
    )
    limb_darkening = Parameter(
        default=0.6, min=0.0, max=1.0, fixed=True, description="Linear limb-darkening coefficient"
    )
    resolving_power = Parameter(default=55000.0, description="Instrumental resolving power λ/Δλ")

    _internal_units = {
        "rv": _KMS,
        "scale": None,
        "vsini": _KMS,
        "limb_darkening": None,
        "resolving_power": None,
    }
    fit_deriv = None

    def __init__(
        self,
        forest,
        rv=0.0,
        scale=1.0,
        vsini=2.0,
        limb_darkening=0.6,
        resolving_power=55000.0,
        *,
        step_kms: float = 0.5,
        vsini_max=None,
        resolving_power_min: float | None = None,
        n_sigma: float = 6.0,
        tolerance: float = 1e-4,
        device=None,
        **kwargs,
    ) -> None:
        vsini_value = _parameter_scalar(vsini, _KMS, "vsini")
        r_value = _parameter_scalar(resolving_power, None, "resolving_power")
        step_kms = float(step_kms)
        if not (math.isfinite(step_kms) and step_kms > 0):
            raise ValueError(f"step_kms must be finite and > 0 km/s, got {step_kms}")
        if vsini_value < 0:
            raise ValueError(f"vsini must be >= 0 km/s, got {vsini_value}")
        if not r_value > 0:
            raise ValueError(f"resolving_power must be > 0, got {r_value}")
        if vsini_max is None:
            vsini_max = max(2.0 * vsini_value, vsini_value + 20.0)
        vsini_max = _parameter_scalar(vsini_max, _KMS, "vsini_max")
        if vsini_max < vsini_value:
            raise ValueError(f"vsini_max ({vsini_max} km/s) is below vsini ({vsini_value} km/s)")
        if resolving_power_min is None:
            resolving_power_min = r_value / 1.5
        resolving_power_min = float(resolving_power_min)
        if not (0 < resolving_power_min <= r_value):
            raise ValueError(
                f"resolving_power_min must be in (0, resolving_power = {r_value}], "
                f"got {resolving_power_min}"
            )
        self._step_kms = step_kms
        self._vsini_max = vsini_max
        self._resolving_power_min = resolving_power_min
        self._rotation_half_width = rotation_kernel_half_width(vsini_max, step_kms)
        self._instrument_half_width = gaussian_kernel_half_width(
            resolving_power_min, step_kms, n_sigma
        )
        super().__init__(
            forest,
            rv=rv,
            scale=scale,
            tolerance=tolerance,
            device=device,
            vsini=vsini,
            limb_darkening=limb_darkening,
            resolving_power=resolving_power,
            **kwargs,
        )
        self.vsini.bounds = (
            0.0,
            vsini_max if self.vsini.unit is None else (vsini_max * _KMS).to_value(self.vsini.unit),
        )
        self.resolving_power.bounds = (resolving_power_min, None)

    @property
    def step_kms(self) -> float:
        """Velocity step of the fine grid, km/s."""
        return self._step_kms

    @property
    def vsini_max(self) -> u.Quantity:
        """Largest v sin i the rotation kernel holds."""
        return self._vsini_max * _KMS

    @property
    def resolving_power_min(self) -> float:
        """Smallest resolving power the instrument kernel holds."""
        return self._resolving_power_min

    def _prepare_x(self, x_angstrom: np.ndarray):
        if x_angstrom.ndim != 1 or x_angstrom.size < 2:
            raise ValueError(
                "x must be a 1-D pixel grid with at least two pixels for ExtrinsicModel "
                f"(it averages into pixels), got shape {x_angstrom.shape}"
            )
        steps = np.diff(x_angstrom)
        if np.any(steps <= 0):
            raise ValueError(
                "x must be strictly increasing for ExtrinsicModel (pixel edges are midpoints "
                f"between neighbours); {int(np.sum(steps <= 0))} steps are not"
            )
        return x_angstrom, None

    @staticmethod
    def _restore_x(values: np.ndarray, how) -> np.ndarray:
        return values

    @staticmethod
    def _restore_x_torch(values: Tensor, how) -> Tensor:
        return values

    def _fine_grid(self, pixels: np.ndarray) -> _FineGrid:
        edges = pixel_edges_from_centers(pixels)
        pad_kms = (self._rotation_half_width + self._instrument_half_width + 8) * self._step_kms
        factor = math.exp(pad_kms / SPEED_OF_LIGHT_KMS)
        fine = log_uniform_grid(
            edges[0] / factor, edges[-1] * factor, self._step_kms, dtype=torch.float64
        )
        device = self._forest.center_ref.device
        averager = PixelAverager(fine.numpy(), edges, dtype=torch.float64, device=device)
        return _FineGrid(fine.to(device), averager)

    def _layout(self, grid: np.ndarray, *, reuse: bool = False):
        forest = self._forest
        state = tuple(p._version for p in forest.parameters())
        key = _x_key(grid)
        cache = self._cache
        if cache.key is not None and cache.key[0] == key:
            fine, layout = cache.value
            if not (reuse or cache.key[1] == state):
                with torch.no_grad():
                    layout = forest.make_layout(fine.wavelength, tolerance=self._tolerance)
                cache.key, cache.value = (key, state), (fine, layout)
            return cache.value
        fine = self._fine_grid(grid)
        with torch.no_grad():
            layout = forest.make_layout(fine.wavelength, tolerance=self._tolerance)
        cache.key, cache.value = (key, state), (fine, layout)
        return cache.value

    def _torch_flux(
        self,
        grid: np.ndarray,
        params: Mapping[str, Tensor],
        *,
        fused: bool = True,
        reuse_layout: bool = False,
    ) -> Tensor:
        fine, layout = self._layout(grid, reuse=reuse_layout)
        log_t = _scaled_log_transmission(
            self._forest, layout, params["rv"], params["scale"], fused=fused
        )
        rotation = rotation_kernel(
            params["vsini"],
            self._step_kms,
            limb_darkening=params["limb_darkening"],
            half_width=self._rotation_half_width,
        )
        instrument = gaussian_kernel(
            params["resolving_power"], self._step_kms, half_width=self._instrument_half_width
        )
        return observe_fine(
            torch.exp(log_t),
            rotate=lambda flux: convolve_same(flux, rotation),
            instrument=lambda flux: convolve_same(flux, instrument),
            average=fine.averager,
        )

    def _parameter_values(self, values: Mapping[str, object]) -> dict[str, float]:
        out = super()._parameter_values(values)
        if not 0.0 <= out["vsini"] <= self._vsini_max * (1 + 1e-12):
            raise ValueError(
                f"vsini = {out['vsini']} km/s is outside [0, vsini_max = {self._vsini_max} km/s]; "
                "build the model with a larger vsini_max"
            )
        if not 0.0 <= out["limb_darkening"] <= 1.0:
            raise ValueError(f"limb_darkening must lie in [0, 1], got {out['limb_darkening']}")
        if out["resolving_power"] < self._resolving_power_min * (1 - 1e-12):
            raise ValueError(
                f"resolving_power = {out['resolving_power']} is below resolving_power_min = "
                f"{self._resolving_power_min}; build the model with a smaller resolving_power_min"
            )
        return out

    def evaluate(self, x, rv, scale, vsini, limb_darkening, resolving_power):
        """Observed flux averaged into the pixels centred on ``x``.

        Parameters
        ----------
        x : array_like or astropy.units.Quantity
            Pixel centres, strictly increasing, 1-D, ≥ 2 pixels; Å when plain.
        rv : float or astropy.units.Quantity
            Radial velocity, km/s.
        scale : float
            Amplitude multiplier, dimensionless.
        vsini : float or astropy.units.Quantity
            Projected rotational velocity, km/s.
        limb_darkening : float
            Linear limb-darkening coefficient, dimensionless.
        resolving_power : float
            Resolving power, dimensionless.

        Returns
        -------
        numpy.ndarray
            Pixel-averaged flux, dimensionless, shape of ``x``.
        """
        return self._evaluate_numpy(
            x,
            {
                "rv": rv,
                "scale": scale,
                "vsini": vsini,
                "limb_darkening": limb_darkening,
                "resolving_power": resolving_power,
            },
        )


# ---------------------------------------------------------------------------
# BlaseFitter
# ---------------------------------------------------------------------------
#: How each global parameter is represented while torch optimises it.
_LOG_PARAMETERS = ("scale", "resolving_power")


class _GlobalParameters(nn.Module):
    """Free global parameters (in optimisation space) and the forest, for ``optimize``."""

    def __init__(
        self, initial: Mapping[str, float], free: Iterable[str], forest: LineForest
    ) -> None:
        super().__init__()
        self.free = nn.ParameterDict()
        self.fixed: dict[str, Tensor] = {}
        for name, value in initial.items():
            raw = math.log(max(value, 1e-300)) if name in _LOG_PARAMETERS else value
            tensor = torch.tensor(raw, dtype=torch.float64, device=forest.center_ref.device)
            if name in free:
                self.free[name] = nn.Parameter(tensor)
            else:
                self.fixed[name] = tensor
        self.forest = forest

    def values(self, bounds: Mapping[str, tuple]) -> dict[str, Tensor]:
        out = {}
        for name in list(self.free.keys()) + list(self.fixed.keys()):
            raw = self.free[name] if name in self.free else self.fixed[name]
            value = torch.exp(raw) if name in _LOG_PARAMETERS else raw
            if name == "vsini":
                value = torch.abs(value)  # the profile is even in v sin i
            lo, hi = bounds.get(name, (None, None))
            if lo is not None or hi is not None:
                value = torch.clamp(value, min=lo, max=hi)
            out[name] = value
        return out


#: L-BFGS settings of :class:`BlaseFitter` for :func:`~blase_specutils.core.train.optimize`:
#: tight tolerances (the loss is already relative to its start). torch's defaults (gradient
#: 1e-7) stop noise-free fits of a few global parameters early; with these the fit stops
#: when L-BFGS itself converges (gradient below 1e-12 or no change) or after ``maxiter``
#: epochs of 20 iterations.
LBFGS_OPTIONS = {
    "max_iter": 20,
    "tolerance_grad": 1e-12,
    "tolerance_change": 1e-15,
    "history_size": 50,
}


class BlaseFitter:
    """Fit a :class:`LineForestModel` or :class:`ExtrinsicModel` with torch optimisers.

    Called like an astropy fitter, ``fitter(model, x, y, weights=None)``, it
    returns a fitted copy of ``model``. The free (not ``fixed``) global
    parameters are optimised; parameter ``bounds`` are enforced by clamping;
    ``scale`` and ``resolving_power`` are optimised in log space. With
    ``fit_lines=True`` the chosen per-line properties of the model's forest
    train as well, under the paper's L1 prior on ln a (eq. 11). The loss is
    ``½ Σ (w (y − F))² + (prior_weight / Λ) Σ |ln a − ln â|``.

    Parameters
    ----------
    optimizer : {"lbfgs", "adam"}, optional
        L-BFGS (strong-Wolfe line search; best for a few global parameters) or
        Adam (many line parameters).
    learning_rate : float, optional
        Step size; default 1.0 for L-BFGS, 0.05 for Adam.

    Attributes
    ----------
    fit_info : dict
        After a call: ``loss`` (list, per epoch), ``n_epochs``, ``stop_reason``,
        ``wall_time`` (s), ``final_loss``, ``chi2`` (Σ (w (y − F))²).

    Examples
    --------
    >>> fitter = BlaseFitter()                      # doctest: +SKIP
    >>> fitted = fitter(model, wavelength, flux)     # doctest: +SKIP
    >>> fitted.rv, fitter.fit_info["n_epochs"]       # doctest: +SKIP
    """

    supported_constraints = ["fixed", "bounds"]

    def __init__(self, optimizer: str = "lbfgs", learning_rate: float | None = None) -> None:
        if optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', not {optimizer!r}")
        if learning_rate is None:
            learning_rate = 1.0 if optimizer == "lbfgs" else 0.05
        learning_rate = float(learning_rate)
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate}")
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.fit_info: dict = {}

    @staticmethod
    def _data(model: LineForestModel, x, y, weights):
        x_angstrom = _spectral_axis_angstrom(x)
        if x_angstrom.ndim != 1:
            raise ValueError(f"x must be 1-D, got shape {x_angstrom.shape}")
        if isinstance(y, u.Quantity):
            try:
                y = y.to_value(u.dimensionless_unscaled)
            except u.UnitConversionError as error:
                raise u.UnitsError(
                    "y must be a dimensionless flux (the model is in continuum units), "
                    f"got unit {y.unit}"
                ) from error
        y = np.array(y, dtype=np.float64)
        if y.shape != x_angstrom.shape:
            raise ValueError(f"y has shape {y.shape} but x has shape {x_angstrom.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError(f"y contains {int(np.sum(~np.isfinite(y)))} NaN or infinite values")
        if weights is None:
            w = np.ones_like(y)
        else:
            if isinstance(weights, u.Quantity):
                weights = weights.to_value(u.dimensionless_unscaled)
            w = np.broadcast_to(np.array(weights, dtype=np.float64), y.shape).copy()
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(
                    "weights must be finite and >= 0 (they multiply the residuals, 1/σ)"
                )
        return x_angstrom, y, w

    def __call__(
        self,
        model: LineForestModel,
        x,
        y,
        weights=None,
        *,
        maxiter: int = 100,
        fit_lines: bool = False,
        line_parameters: Iterable[str] = ("amplitude",),
        prior_scale: float = 5.0,
        prior_weight: float = 1.0,
        rtol: float = 1e-10,
        patience: int = 3,
        relayout_every: int = 50,
        progress: bool = False,
    ) -> LineForestModel:
        """Fit ``model`` to ``(x, y)`` and return a fitted copy.

        Parameters
        ----------
        model : LineForestModel or ExtrinsicModel
            Initial guess (not modified).
        x : array_like or astropy.units.Quantity
            Spectral coordinate, Å when plain; for :class:`ExtrinsicModel` the
            strictly increasing pixel centres.
        y : array_like or astropy.units.Quantity
            Flux, dimensionless (continuum-normalised).
        weights : array_like, optional
            Multiply the residuals, i.e. 1/σ in flux units⁻¹ (astropy convention).
        maxiter : int, optional
            Maximum epochs (one L-BFGS epoch runs up to 20 iterations).
        fit_lines : bool, optional
            Also train the forest's ``line_parameters``.
        line_parameters : iterable of str, optional
            Which of "center", "amplitude", "sigma", "gamma" train with ``fit_lines``.
        prior_scale : float, optional
            Λ of the L1 prior on ln a, dimensionless (paper: ≈ 5).
        prior_weight : float, optional
            Weight of the prior relative to ½ χ², dimensionless.
        rtol : float, optional
            Stop when the loss improved by less than ``rtol`` (relative) over
            ``patience`` epochs.
        patience : int, optional
            Window of the stopping rule, epochs.
        relayout_every : int, optional
            With ``fit_lines``, re-size the line windows every this many epochs.
        progress : bool, optional
            Show a progress bar.

        Returns
        -------
        LineForestModel
            A copy of ``model`` with fitted parameters (and lines).
        """
        if not isinstance(model, LineForestModel):
            raise TypeError(
                "BlaseFitter fits LineForestModel / ExtrinsicModel instances; for compound models "
                f"use an astropy fitter (got {type(model).__name__})"
            )
        if len(model) != 1:
            raise ValueError("model sets (n_models > 1) are not supported")
        if any(getattr(model, name).tied for name in model.param_names):
            raise ValueError("tied parameters are not supported by BlaseFitter")
        maxiter = int(maxiter)
        if maxiter < 1:
            raise ValueError(f"maxiter must be >= 1, got {maxiter}")
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
        x_angstrom, y_data, w_data = self._data(model, x, y, weights)
        fitted = model.copy()
        x_grid, how = fitted._prepare_x(x_angstrom)  # raises if ExtrinsicModel gets no pixel grid
        forest = fitted.forest
        original_trainable = forest.trainable
        line_parameters = tuple(line_parameters)
        forest.set_trainable(line_parameters if fit_lines else ())

        initial = {
            name: _parameter_scalar(
                getattr(fitted, name).quantity
                if getattr(fitted, name).unit is not None
                else getattr(fitted, name).value,
                fitted._internal_units[name],
                name,
            )
            for name in fitted.param_names
        }
        bounds = {}
        for name in fitted.param_names:
            param = getattr(fitted, name)
            lo, hi = param.bounds
            unit = fitted._internal_units[name]
            if param.unit is not None and unit is not None:
                lo = None if lo is None else (lo * param.unit).to_value(unit)
                hi = None if hi is None else (hi * param.unit).to_value(unit)
            bounds[name] = (lo, hi)
        free = [name for name in fitted.param_names if not getattr(fitted, name).fixed]
        if not free and not fit_lines:
            raise ValueError("nothing to fit: every parameter is fixed and fit_lines is False")
        holder = _GlobalParameters(initial, free, forest)
        device = forest.center_ref.device
        y_t = torch.as_tensor(y_data, device=device)
        w_t = torch.as_tensor(w_data, device=device)
        every_pixel = torch.ones(y_t.shape, dtype=torch.bool, device=device)
        ln_a0 = forest.ln_amplitude.detach().clone()
        # the layout is built once for the pixel grid; windows follow the RV by re-centring
        fitted._layout(x_grid)

        def residual_sum():
            flux = fitted._torch_flux(x_grid, holder.values(bounds), reuse_layout=True)
            flux = fitted._restore_x_torch(flux, how)
            return chi2(flux, y_t, w_t, every_pixel)  # Σ (w (y − F))²

        def raw_loss():
            loss = 0.5 * residual_sum()
            if fit_lines and forest.ln_amplitude.requires_grad:
                loss = loss + prior_weight * l1_prior(forest.ln_amplitude, ln_a0, prior_scale)
            return loss

        # The optimiser sees the loss relative to its initial value, so that the
        # optimisers' absolute tolerances act as relative ones whatever the weights.
        with torch.no_grad():
            normaliser = float(raw_loss())
        if not math.isfinite(normaliser):
            raise ValueError(
                "the initial model gives a non-finite loss; check the data and the initial "
                "parameters"
            )
        normaliser = normaliser if normaliser > 0 else 1.0

        def loss_fn():
            return raw_loss() / normaliser

        def after_step(epoch: int) -> None:
            if fit_lines:
                forest.clamp_()
                if relayout_every and epoch % relayout_every == 0:
                    fitted._cache.key = None

        t0 = time.perf_counter()
        if self.optimizer == "adam":
            history = optimize(
                holder,
                loss_fn,
                epochs=maxiter,
                learning_rate=self.learning_rate,
                optimizer="adam",
                rtol=rtol,
                patience=patience,
                progress=progress,
                description="BlaseFitter",
                after_step=after_step,
            )
        else:  # the one L-BFGS driver, with tight tolerances and L-BFGS's own stopping
            history = optimize(
                holder,
                loss_fn,
                epochs=maxiter,
                learning_rate=self.learning_rate,
                optimizer="lbfgs",
                rtol=0.0,
                progress=progress,
                description="BlaseFitter",
                after_step=after_step,
                num_threads=None,
                lbfgs_options=LBFGS_OPTIONS,
                lbfgs_until_converged=True,
            )
        with torch.no_grad():
            final_values = holder.values(bounds)
            fitted._cache.key = None
            chi2_final = float(residual_sum())
            final_loss = float(raw_loss())
        for name, tensor in final_values.items():
            param = getattr(fitted, name)
            value = float(tensor.detach())
            unit = fitted._internal_units[name]
            if param.unit is not None and unit is not None:
                value = (value * unit).to_value(param.unit)
            param.value = value
        forest.set_trainable(original_trainable)
        fitted._cache.key = None
        loss = [value * normaliser for value in history.loss]
        self.fit_info = {
            "loss": loss,
            "initial_loss": normaliser,
            "n_epochs": int(history.epochs),
            "stop_reason": history.stop_reason,
            "wall_time": time.perf_counter() - t0,
            "final_loss": final_loss,
            "chi2": chi2_final,
        }
        return fitted
