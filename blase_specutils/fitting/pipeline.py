"""Transfer learning as a pipeline: :func:`fit` is the list of its stages.

Every stage is a function of one :class:`FitState` (the model, the data, the weights,
the history, the diagnostics): it reads what earlier stages left there and writes what
it adds. Options come in as a frozen :class:`~.options.FitOptions`; the keywords of
:func:`fit` override it. The stages, in order:

1. :func:`prepare` — check the options, the clones and the data (one order type, one
   flux level per order), crop or refuse what lies beyond the clones, choose the fine
   grid's step.
2. :func:`search_start` — the joint RV × v sin i grid search on the continuum-profiled χ²
   (:mod:`blase_specutils.core.search`), wide by default.
3. :func:`build_model` — the composite forward model at the search's start.
4. :func:`choose_continuum` — the continuum's Chebyshev degree (data, then the data
   divided by the template) and its least-squares coefficients.
5. :func:`clip` — upward outliers (cosmic rays) masked, before and after the globals.
6. :func:`fit_globals` — L-BFGS on the free globals with every line frozen and the
   continuum solved at every evaluation; the v sin i–R valley when both are free.
7. :func:`train_lines` — the chosen line properties learn under the L1 prior (the RV,
   line strength and veiling held), undone if they leave χ² worse.
8. :func:`polish` — the globals again, lines frozen, on the final line windows.
   :func:`undo_lines_if_worse` — the lines back to the clone's when χ² got worse.
9. :func:`estimate_uncertainties` and :func:`check` — errors, per-order estimates,
   effective degrees of freedom, flags.

A v sin i that ends on the default ceiling reruns stages 3–8 from it with a ceiling
three times higher: a loop in :func:`fit`, not a recursive call.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..astro.inputs import check_flag, observed_object, unpack_spectra
from ..cloning import CloneResult
from ..core.components import ComponentForest
from ..core.forward import ForwardModel
from ..core.profiles import pseudo_voigt_peak
from ..core.search import SearchResult
from ..core.train import (
    TrainingHistory,
    limit_threads,
    load_checkpoint,
    optimize,
    resolve_device,
)
from .added_lines import grown_initial, insert_lines, read_added_lines
from .broad_lines import (
    BROAD_LINE_HANDLINGS,
    MASK_HALF_WIDTH_FWHM,
    MIN_NARROW_LINES,
    broad_line_index,
    broad_line_pixels,
    narrow_lines_in_good_pixels,
)
from .common_modes import (
    COMMON_MODE_PARAMETERS,
    common_mode_weights,
    good_ranges,
    remove_common_modes,
    velocity_information,
)
from .diagnostics import (
    Jacobian,
    active_lines,
    effective_line_parameters,
    fit_flags,
    global_jacobian,
    global_uncertainties,
    line_by_line_rv,
    line_values,
    line_velocities,
    marginal_uncertainties,
    order_agreement,
    order_diagnostics,
    telluric_scale_uncertainties,
    warn_at_bounds,
)
from .global_stage import (
    MAX_AUTO_CONTINUUM_DEGREE,
    MAX_AUTO_VSINI_CEILING,
    MAX_R_FLOOR_LOWERINGS,
    MIN_START_VSINI,
    as_forest,
    as_telluric,
    fit_globals_lowering_r,
    forest_range,
    initial_resolving_power,
    joint_search,
    lower_r_floor_if_near,
    model_chi2,
    model_profiled_chi2,
    search_rotation_resolution_valley,
    solve_model_continuum,
    template_continuum_degree,
    upward_outliers,
    vsini_grid_search,
)
from .global_stage import fit_globals as lbfgs_globals
from .options import (
    PRIOR_CENTER_FACTOR_RANGE,
    PRIOR_CENTER_REFERENCE_DEPTH,
    PRIOR_CENTER_SCALINGS,
    FitOptions,
    LineOptions,
    check_fit_numbers,
    check_rotation_limits,
    check_velocity_limits,
)
from .orders import (
    C_KMS,
    DEFAULT_STEP_KMS,
    MIN_AUTO_STEP_KMS,
    BadPixelWarning,
    Order,
    crop_orders,
    envelope_degree,
    finest_pixel_kms,
    orders_inside_hint,
    prepare_orders,
    warn_rest_frame_coverage,
)
from .result import FitQualityWarning, FitResult

__all__ = ["fit", "FitState"]

#: Step sizes of the global parameters when they train with the lines (Adam).
GLOBAL_LEARNING_RATES = {
    "rv": 0.02,
    "rotation.vsini": 0.05,
    "rotation.limb_darkening": 0.01,
    "instrument.log_resolving_power": 0.002,
    "continuum_coefficients": 0.002,
    "ln_telluric_scale": 0.01,
    "telluric_shift": 0.02,
    "ln_line_strength": 0.01,
    "veiling": 0.01,
}


@dataclass
class FitState:
    """What the stages share: options, data, model, history and diagnostics."""

    options: FitOptions
    orders: list[Order]
    order_indices: list[int]
    flux_unit: object
    star0: object
    star_clone: CloneResult | None
    tell0: object
    tell_clone: CloneResult | None
    rv: float
    vsini: float
    resolving_power: float
    resolving_power_source: str
    step_kms: float
    step_kms_source: str
    device: torch.device
    vsini_max: float | None = None
    search: SearchResult | None = None
    model: ForwardModel | None = None
    data: torch.Tensor | None = None
    inv_sigma: torch.Tensor | None = None
    good: torch.Tensor | None = None
    n_good: int = 0
    auto_degree: bool = False
    n_clipped: int = 0
    initial_chi2: float = float("nan")
    history: TrainingHistory = field(default_factory=TrainingHistory)
    ceilings_raised: list = field(default_factory=list)
    line_stage_undone: bool = False
    lines_trained: bool = False
    chi2_before_lines: float = float("nan")
    saved_before_lines: dict | None = None
    pristine_good: list = field(default_factory=list)
    line_start: dict = field(default_factory=dict)
    n_line_dof: int = 0
    n_free: int = 0
    n_dof: int = 0
    chi2_reduced: float = float("nan")
    jacobian: Jacobian | None = None
    curvature_uncertainties: dict = field(default_factory=dict)
    marginalised_uncertainties: dict = field(default_factory=dict)
    line_ln_amplitude_sigma: np.ndarray | None = None
    line_velocity: np.ndarray | None = None
    line_velocity_sigma: np.ndarray | None = None
    line_by_line: dict = field(default_factory=dict)
    n_active_lines: int = 0
    uncertainty_notes: dict = field(default_factory=dict)
    uncertainty_scale: float = 1.0
    #: Birge-scaled 1-σ errors of the telluric scale(s), one per component
    telluric_scale_sigma: list = field(default_factory=list)
    order_columns: dict = field(default_factory=dict)
    order_chi2: float = float("nan")
    order_dof: int = 0
    rest_frame_outside: float = 0.0
    rv_error_floor: float = 0.0
    flags: dict = field(default_factory=dict)
    object_name: str | None = None
    setup_fingerprint: str = ""
    #: the user's added lines (paper §8.4): their positions in the stellar forest, labels
    added_index: np.ndarray | None = None
    added_lines: object = None
    #: broad intrinsic lines (rows of the stellar forest), the good pixels before they
    #: were masked, and what the mask did (result.meta["broad_lines"])
    broad_index: np.ndarray | None = None
    unmasked_good: list = field(default_factory=list)
    broad_lines: dict = field(default_factory=dict)
    #: the line stage's common modes: {"held": hold_common_modes} once the stage ran
    common_modes: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- helpers
    @property
    def free(self) -> frozenset:
        return self.options.free

    def chi2(self) -> torch.Tensor:
        return model_chi2(self.model, self.data, self.inv_sigma, self.good)

    def solve_continuum(self) -> float:
        return solve_model_continuum(self.model, self.data, self.inv_sigma, self.good)

    def profiled_chi2_per_pixel(self) -> torch.Tensor:
        """The global stages' loss: the continuum solved exactly at every evaluation."""
        return model_profiled_chi2(self.model, self.data, self.inv_sigma, self.good) / self.n_good

    def global_groups(self, continuum: bool = True) -> list[dict]:
        groups = []
        for name, p in self.model.named_parameters():
            if name == "continuum_coefficients" and not continuum:
                continue
            if name in GLOBAL_LEARNING_RATES and p.requires_grad:
                groups.append({"params": [p], "lr": GLOBAL_LEARNING_RATES[name]})
        return groups

    def run_global_stage(self, stage, label: str) -> None:
        """Run a global stage on the continuum-profiled χ²; the continuum then matches."""
        opts = self.options
        groups = self.global_groups(continuum=False)
        if groups and opts.global_epochs > 0:
            self.history.loss += stage(
                self.model, self.profiled_chi2_per_pixel, groups, opts.global_epochs,
                opts.run.progress, label, opts.run.num_threads,
            )  # fmt: skip
        # L-BFGS's last evaluation may have been a rejected trial point
        self.solve_continuum()


# ----------------------------------------------------------------------- stage 1
#: Newton steps on added lines' ln a before the line stage, and the largest step (e-folds).
ADDED_LINE_NEWTON_STEPS = 6
ADDED_LINE_MAX_STEP = 3.0


def prepare(
    wavelength, flux, uncertainty, mask, stellar, telluric, options: FitOptions, add_lines=None
):
    """Check everything and make the orders; returns the :class:`FitState`."""
    opts = options
    numbers = check_fit_numbers(
        {
            "rv": opts.rv, "vsini": opts.vsini, "resolving_power": opts.resolving_power,
            "limb_darkening": opts.limb_darkening, "vsini_max": opts.search.vsini_max,
            "rv_search": opts.search.rv_search, "rv_max": opts.search.rv_max,
            "clip_sigma": opts.clip_sigma, "prior_scale": opts.lines.prior_scale,
            "prior_weight": opts.lines.prior_weight,
            "prior_ln_sigma": opts.lines.prior_ln_sigma,
            "prior_ln_gamma": opts.lines.prior_ln_gamma,
            "prior_center": opts.lines.prior_center, "epochs": opts.lines.epochs,
            "global_epochs": opts.global_epochs, "learning_rate": opts.lines.learning_rate,
            "rtol": opts.lines.rtol, "step_kms": opts.search.step_kms,
            "checkpoint_every": opts.run.checkpoint_every,
            "checkpoint_seconds": opts.run.checkpoint_seconds, "seed": opts.run.seed,
            "num_threads": opts.run.num_threads, "broad_fwhm_kms": opts.broad_fwhm_kms,
        }
    )  # fmt: skip
    check_velocity_limits(numbers["rv"], numbers["rv_search"], numbers["rv_max"])
    check_rotation_limits(numbers["vsini"], numbers["vsini_max"])
    if opts.run.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {opts.run.dtype!r}")
    for name in ("progress", "cuda_graph"):
        check_flag(getattr(opts.run, name), name)
    check_flag(opts.relativistic, "relativistic")
    check_flag(opts.lines.hold_common_modes, "hold_common_modes")
    if opts.run.resume is not None and not Path(opts.run.resume).is_file():
        raise FileNotFoundError(f"resume: no checkpoint file at {opts.run.resume}")
    degree = opts.continuum_degree
    if degree != "auto" and not (isinstance(degree, (int, np.integer)) and degree >= 0):
        raise ValueError(f"continuum_degree must be 'auto' or an integer >= 0, not {degree!r}")
    if opts.broad_lines not in BROAD_LINE_HANDLINGS:
        raise ValueError(
            f"broad_lines must be one of {BROAD_LINE_HANDLINGS}, not {opts.broad_lines!r}"
        )
    if opts.outside not in ("error", "crop"):
        raise ValueError(f"outside must be 'error' or 'crop', not {opts.outside!r}")
    if opts.lines.prior_center_scaling not in PRIOR_CENTER_SCALINGS:
        raise ValueError(
            f"prior_center_scaling must be one of {PRIOR_CENTER_SCALINGS}, not "
            f"{opts.lines.prior_center_scaling!r}"
        )
    # one name alone is a common way to write a single trainable property
    trainable = opts.lines.trainable
    trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable)
    telluric_trainable = opts.lines.telluric_trainable
    if isinstance(telluric_trainable, str):
        telluric_trainable = (telluric_trainable,)
    # the checked numbers (plain floats, Quantities converted) back into the options
    opts = opts.replace_keywords(
        **numbers, trainable=trainable, telluric_trainable=telluric_trainable
    )
    object_name = observed_object(wavelength)
    wavelength, flux, uncertainty, mask, instrument = unpack_spectra(
        wavelength, flux, uncertainty, mask, "fit"
    )
    resolving_power, resolving_power_source = initial_resolving_power(
        opts.resolving_power, instrument
    )
    torch.manual_seed(opts.run.seed)
    device = resolve_device(opts.run.device)
    star0, star_clone = as_forest(stellar, "stellar")
    if star0 is None:
        raise ValueError("a stellar clone is required")
    added = None if add_lines is None else read_added_lines(add_lines)
    tell0, tell_clone, tell_range = as_telluric(telluric)
    orders, flux_unit = prepare_orders(wavelength, flux, uncertainty, mask)
    rv = opts.rv
    if abs(rv) > opts.search.rv_max:
        warnings.warn(
            f"initial rv = {rv} km/s is beyond rv_max = {opts.search.rv_max} km/s",
            UserWarning,
            stacklevel=4,
        )
    vsini = 5.0 if opts.vsini is None else opts.vsini
    if "vsini" in opts.free:
        vsini = max(vsini, MIN_START_VSINI)
    ranges = [("stellar", forest_range(star0, star_clone)), ("telluric", tell_range)]
    orders, order_indices = _within_clones(orders, opts.outside, ranges)
    step_kms, step_source = _fine_step(orders, opts.search.step_kms)
    added_index = None
    if added is not None:
        n_clone = star0.n_lines
        star0 = insert_lines(star0, added, orders, rv=rv, resolving_power=resolving_power)
        added_index = np.arange(n_clone, star0.n_lines)
        if "amplitude" not in opts.lines.trainable or opts.lines.epochs == 0:
            warnings.warn(
                f"add_lines: {added_index.size} added line(s) stay at their starting depth of "
                "1e-3 (the amplitudes do not train: 'amplitude' not in trainable, or epochs=0)",
                UserWarning,
                stacklevel=4,
            )
        if star_clone is not None:
            star_clone = CloneResult(
                star0, star_clone.wavelength, star_clone.target_flux, star_clone.continuum,
                star_clone.history, grown_initial(star_clone.initial, star0, n_clone),
                dict(star_clone.meta),
            )  # fmt: skip
    state = FitState(
        options=opts, orders=orders, order_indices=order_indices, flux_unit=flux_unit,
        star0=star0, star_clone=star_clone, tell0=tell0, tell_clone=tell_clone, rv=rv,
        vsini=vsini, resolving_power=resolving_power,
        resolving_power_source=resolving_power_source, step_kms=step_kms,
        step_kms_source=step_source, device=device, vsini_max=opts.search.vsini_max,
        object_name=object_name, added_index=added_index, added_lines=added,
    )  # fmt: skip
    state.pristine_good = [o.good.copy() for o in orders]
    state.setup_fingerprint = setup_fingerprint(state)
    if opts.run.resume is not None:
        check_resumable(opts.run.resume, state.setup_fingerprint)
    return state


def setup_fingerprint(state: FitState) -> str:
    """A digest of what makes a line-stage checkpoint this fit's: the orders (wavelength,
    flux, σ, mask), the input clones' line parameters, the free globals, the trainable
    line properties and the dtype. Settings that only change how long it runs (epochs,
    checkpoint frequency) are not in it, so a resumed run may go on for longer."""
    opts = state.options
    digest = hashlib.sha256()
    for order in state.orders:
        for array in (order.wavelength, order.flux, order.sigma, order.good):
            digest.update(np.ascontiguousarray(array).tobytes())
    for forest in (state.star0, state.tell0):
        if forest is None:
            digest.update(b"none")
            continue
        for name, tensor in sorted(forest.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = (
        sorted(state.free), list(opts.lines.trainable), list(opts.lines.telluric_trainable),
        str(opts.run.dtype),
    )  # fmt: skip
    digest.update(repr(settings).encode())
    return digest.hexdigest()


def check_resumable(path, fingerprint: str) -> None:
    """Refuse, before any stage runs, a checkpoint that is damaged or another fit's."""
    saved = load_checkpoint(path).get("extra", {}).get("setup")
    if saved is not None and saved != fingerprint:
        raise ValueError(
            f"resume: the checkpoint {path} was written by another fit (other data, clones, "
            "free parameters, trainable line properties or dtype); resume only the fit that "
            "wrote it, or delete the checkpoint to start afresh"
        )


def _within_clones(orders, outside, ranges):
    """Crop (``outside="crop"``) or refuse data beyond the clones' wavelength ranges
    (``ranges``: ``(name, (lo, hi) or None)`` per clone)."""
    order_indices = list(range(len(orders)))
    for name, lo_hi in ranges:
        if lo_hi is None:
            continue
        lo, hi = lo_hi
        if outside == "crop":
            orders, order_indices = crop_orders(orders, order_indices, lo, hi, name)
        data_lo = min(float(o.wavelength[o.good].min()) for o in orders if o.good.any())
        data_hi = max(float(o.wavelength[o.good].max()) for o in orders if o.good.any())
        if data_lo < lo or data_hi > hi:
            raise ValueError(
                f"the data span {data_lo:.2f}–{data_hi:.2f} Å but the {name} clone covers only "
                f"{lo:.2f}–{hi:.2f} Å; clone a wider range of the template"
                + orders_inside_hint(orders, lo, hi)
                + " (or pass outside='crop')"
            )
    return orders, order_indices


def _fine_step(orders, step_kms):
    """The fine grid's velocity step: given, or a third of the finest pixel (≤ 0.5 km/s)."""
    finest_pixel = finest_pixel_kms(orders)
    source = "given"
    if step_kms is None:
        step_kms = max(MIN_AUTO_STEP_KMS, min(DEFAULT_STEP_KMS, finest_pixel / 3.0))
        source = "auto"
    if step_kms > 0.5 * finest_pixel:
        warnings.warn(
            f"the fine model grid's step of {step_kms:.3g} km/s is coarser than half the "
            f"data's finest pixels ({finest_pixel:.3g} km/s): the model misplaces flux within "
            f"pixels; pass step_kms <= {finest_pixel / 3:.3g} for a model at the pixels' "
            "precision (the cost grows as 1/step_kms)",
            UserWarning,
            stacklevel=5,
        )
    return step_kms, source


# ----------------------------------------------------------------------- stage 2
def search_start(state: FitState) -> None:
    """Start RV and v sin i from the joint grid search (skipped when neither is free)."""
    opts = state.options
    fit_rv = "rv" in state.free and opts.search.rv_search > 0
    fit_vsini = "vsini" in state.free and opts.global_epochs > 0  # 0: the globals stay put
    if not (fit_rv or fit_vsini):
        return
    state.search = joint_search(
        state.star0, state.tell0, state.orders, rv=state.rv,
        rv_half_width=opts.search.rv_search if fit_rv else 0.0, vsini=state.vsini,
        fit_vsini=fit_vsini, vsini_max=state.vsini_max,
        resolving_power=state.resolving_power, limb_darkening=opts.limb_darkening,
        step_kms=state.step_kms, relativistic=opts.relativistic,
    )  # fmt: skip
    if fit_rv:
        state.rv = state.search.best_rv
    if fit_vsini:
        state.vsini = max(state.search.best_vsini, MIN_START_VSINI)


def mask_broad_lines(state: FitState) -> None:
    """Mask the pixels around the stellar clone's broad lines (``broad_lines="mask"``).

    Runs before the search (at the starting RV; the interval of 1.5 FWHM of a line
    hundreds of km/s wide covers the RVs of most stars) and again after it, at the
    search's RV, from the unmasked pixels. Nothing changes when the clone has no broad
    line. When the mask would leave fewer than :data:`~.broad_lines.MIN_NARROW_LINES`
    narrow lines (an A0V star's single near-infrared order) nothing is masked, since the
    broad lines are then all that measures the RV, and the result is flagged
    ``broad_lines_dominate`` with a warning.
    """
    opts = state.options
    if opts.broad_lines == "keep":
        return
    if state.broad_index is None:
        state.broad_index = broad_line_index(state.star0, opts.broad_fwhm_kms)
        state.unmasked_good = [o.good.copy() for o in state.orders]
    index = state.broad_index
    if index.size == 0:
        return
    wavelengths = [o.wavelength for o in state.orders]
    inside = broad_line_pixels(wavelengths, state.star0, index, state.rv)
    goods = [g & ~m for g, m in zip(state.unmasked_good, inside)]
    n_masked = int(sum(int(np.sum(g & m)) for g, m in zip(state.unmasked_good, inside)))
    if n_masked == 0 or not any(g.any() for g in goods):
        if n_masked:
            warnings.warn(
                f"broad_lines='mask': the {index.size} broad line(s) of the stellar clone "
                "cover every good pixel; they are kept in the χ² (v sin i may absorb their "
                "mismatch)",
                FitQualityWarning,
                stacklevel=4,
            )
        # nothing masked (an earlier call's mask, at another RV, undone)
        for o, g in zip(state.orders, state.unmasked_good):
            o.good = g.copy()
        state.pristine_good = [g.copy() for g in state.unmasked_good]
        state.broad_lines = {}
        return
    props = state.star0.line_properties()
    n_narrow = narrow_lines_in_good_pixels(wavelengths, goods, state.star0, index, state.rv)
    if n_narrow < MIN_NARROW_LINES:
        goods, n_masked, handling = state.unmasked_good, 0, "keep (too few narrow lines)"
    else:
        handling = "mask"
    for o, g in zip(state.orders, goods):
        o.good = g.copy()
    state.pristine_good = [g.copy() for g in goods]
    state.broad_lines = {
        "handling": handling,
        "fwhm_threshold_kms": opts.broad_fwhm_kms,
        "mask_half_width_fwhm": MASK_HALF_WIDTH_FWHM,
        "rv_of_mask": float(state.rv),
        "index": [int(i) for i in index],
        "center": [float(c) for c in props["center"][index]],
        "fwhm_kms": [float(v) for v in C_KMS * props["fwhm"][index] / props["center"][index]],
        "n_masked_pixels": n_masked,
        "n_narrow_lines": n_narrow,
    }


# ----------------------------------------------------------------------- stage 3
def build_model(state: FitState) -> None:
    """The forward model (copies of the clones, never the inputs) and the data tensors."""
    opts, free, dev, dtype = state.options, state.free, state.device, state.options.run.dtype
    star = copy.deepcopy(state.star0).to(device=dev, dtype=dtype)
    star.relativistic = opts.relativistic
    star.set_trainable(())
    tell = None
    if state.tell0 is not None:
        tell = copy.deepcopy(state.tell0).to(device=dev, dtype=dtype)
        tell.set_trainable(())
    state.auto_degree = opts.continuum_degree == "auto"
    # "auto": the most it may need, lowered once the template is in place
    degree = MAX_AUTO_CONTINUUM_DEGREE if state.auto_degree else int(opts.continuum_degree)
    vsini = state.vsini
    ceiling = state.vsini_max if state.vsini_max is not None else max(3.0 * vsini, vsini + 50.0)
    state.model = ForwardModel(
        star, [o.edges for o in state.orders], telluric=tell, rv=state.rv, vsini=vsini,
        limb_darkening=opts.limb_darkening, resolving_power=state.resolving_power,
        step_kms=state.step_kms, vsini_max=ceiling, rv_max=opts.search.rv_max,
        continuum_degree=degree, fit_rv="rv" in free, fit_vsini="vsini" in free,
        fit_limb_darkening="limb_darkening" in free,
        fit_resolving_power="resolving_power" in free,
        fit_telluric_scale="telluric_scale" in free and tell is not None,
        fit_telluric_shift="telluric_shift" in free and tell is not None,
        fit_line_strength="line_strength" in free, fit_veiling="veiling" in free,
        dtype=dtype, device=dev,
    )  # fmt: skip
    orders = state.orders
    state.data = torch.as_tensor(np.concatenate([o.flux for o in orders]), dtype=dtype, device=dev)
    state.inv_sigma = torch.as_tensor(
        1.0 / np.concatenate([o.sigma for o in orders]), dtype=dtype, device=dev
    )
    good = torch.as_tensor(np.concatenate([o.good for o in orders]), device=dev)
    empty = getattr(state.model.averager, "empty", None)
    if empty is not None:
        good = good & ~torch.as_tensor(empty, device=dev)
    state.good = good
    state.n_good = int(good.sum())
    n_continuum = int(state.model.continuum_coefficients.numel())
    if state.n_good < 10 * (n_continuum + 4) and not state.ceilings_raised:
        warnings.warn(
            f"only {state.n_good} good pixels to constrain {n_continuum} continuum "
            "coefficients, RV, v sin i and the line amplitudes: the fit and its uncertainties "
            "are unreliable (check the mask)",
            BadPixelWarning,
            stacklevel=4,
        )


# ----------------------------------------------------------------------- stage 4
def choose_continuum(state: FitState) -> None:
    """The continuum degree (``"auto"``: the data, then the data over the template)."""
    model = state.model
    if state.auto_degree:  # first guess from the data alone, refined below with the template
        model.set_continuum_degree(max(envelope_degree(o) for o in state.orders))
    state.solve_continuum()
    if state.auto_degree:
        model.set_continuum_degree(template_continuum_degree(model, state.orders))
        state.solve_continuum()


# ----------------------------------------------------------------------- stage 5
def clip(state: FitState) -> None:
    """Mask pixels far above both the continuum and the model (cosmic rays, hot pixels)."""
    sigma = state.options.clip_sigma
    if sigma is None:
        return
    spikes = upward_outliers(state.model, state.data, state.inv_sigma, state.good, sigma)
    count = int(spikes.sum())
    if not count:
        return
    state.good = state.good & ~spikes
    state.n_good = int(state.good.sum())
    state.n_clipped += count
    clipped = spikes.cpu().numpy()
    start = 0
    for o in state.orders:
        o.good = o.good & ~clipped[start : start + o.good.size]
        start += o.good.size
    state.solve_continuum()


def warn_clipped(state: FitState) -> None:
    if state.n_clipped:
        warnings.warn(
            f"masked {state.n_clipped} pixels above the continuum and the model by more than "
            f"clip_sigma = {state.options.clip_sigma:g} robust σ (cosmic rays, hot pixels or "
            "emission)",
            BadPixelWarning,
            stacklevel=4,
        )


# ----------------------------------------------------------------------- stage 6
def fit_globals(state: FitState) -> None:
    """The free globals by L-BFGS on the continuum-profiled χ², every line frozen.

    A free R first waits for v sin i: started together from a v sin i far below the
    star's, R drops to make up the broadening and the pair settles in a worse minimum
    (v sin i 15 km/s injected: R 14,000 and v sin i 3.2, χ² up 30 %).
    """
    model, epochs = state.model, state.options.global_epochs
    if epochs <= 0:
        return
    if model.rotation.vsini.requires_grad:
        vsini_grid_search(model, state.profiled_chi2_per_pixel)
        state.solve_continuum()
    log_r = model.instrument.log_resolving_power
    if log_r.requires_grad:
        log_r.requires_grad_(False)
        state.run_global_stage(lbfgs_globals, "globals")
        log_r.requires_grad_(True)
    state.run_global_stage(fit_globals_lowering_r, "globals")

    def valley(model, loss_fn, groups, iterations, progress, label, num_threads):
        return search_rotation_resolution_valley(
            model, loss_fn, groups, iterations, progress, num_threads
        )

    state.run_global_stage(valley, "globals")


def vsini_on_default_ceiling(state: FitState) -> bool:
    """Whether v sin i presses on a ceiling the user did not give (then raise it)."""
    model, opts = state.model, state.options
    ceiling = model.rotation.vsini_max
    return (
        "vsini" in state.free
        and opts.search.vsini_max is None
        and opts.run.checkpoint is None
        and opts.run.resume is None
        and float(model.rotation.effective_vsini().detach()) >= 0.99 * ceiling
        and ceiling < MAX_AUTO_VSINI_CEILING
    )


def raise_vsini_ceiling(state: FitState) -> None:
    """Restart from the ceiling with one three times higher (stages 3–8 run again)."""
    ceiling = state.model.rotation.vsini_max
    state.ceilings_raised.append(ceiling)
    state.vsini = ceiling
    state.vsini_max = None
    state.history = TrainingHistory()
    state.n_clipped = 0
    state.line_stage_undone = False
    state.lines_trained = False
    for o, good in zip(state.orders, state.pristine_good):  # clipping runs again
        o.good = good.copy()


# ----------------------------------------------------------------------- stage 7
def train_lines(state: FitState) -> None:
    """The line properties learn with the L1 prior on ln a (and Gaussian ones if asked).

    The RV holds still while the lines learn and is re-fitted afterwards (stage 8):
    moved together, the amplitudes of blended lines follow the RV as it wanders and lock
    it off its optimum (injection tests at v sin i = 15 km/s, S/N 300: +69 ± 77 m/s
    jointly, +3 ± 24 m/s this way, reported σ 21 m/s). The line strength and the veiling
    hold still too: trained with the amplitudes, they drift along a valley the
    amplitudes make flat (an unveiled injection: veiling 0.39, line strength 1.39,
    "± 0.02"), so they stay what the global stage measured against the clone as it was.
    """
    lines, run = state.options.lines, state.options.run
    model = state.model
    star, tell = model.stellar, model.telluric
    with torch.no_grad():
        state.chi2_before_lines = state.solve_continuum()
    state.saved_before_lines = copy.deepcopy(model.state_dict())
    state.line_start = {
        "star": line_values(star),
        "tell": None if tell is None else line_values(tell),
    }
    ln_a0 = {id(f): f.ln_amplitude.detach().clone() for f in (star, tell) if f is not None}
    start = {
        id(f): {n: getattr(f, n).detach().clone() for n in ("ln_sigma", "ln_gamma", "center_shift")}
        for f in (star, tell)
        if f is not None
    }
    star.set_trainable(lines.trainable)
    if tell is not None:
        tell.set_trainable(lines.telluric_trainable)
    forests = [f for f in (star, tell) if f is not None]
    widths = {
        id(f): {
            name: width
            for name, width in (
                ("ln_sigma", lines.prior_ln_sigma),
                ("ln_gamma", lines.prior_ln_gamma),
                ("center_shift", center_prior_widths(f, lines)),
            )
            if width is not None
        }
        for f in forests
    }
    # added lines start at an arbitrary small amplitude: no L1 pull back to it (their
    # amplitude is the data's alone); None keeps the prior's sum as it always was
    l1_weight = {id(f): None for f in forests}
    if state.added_index is not None:
        keep = torch.ones(star.n_lines, dtype=star.dtype, device=star.ln_amplitude.device)
        keep[torch.as_tensor(state.added_index, device=keep.device)] = 0.0
        l1_weight[id(star)] = keep

    def total_loss():
        loss = 0.5 * state.chi2()
        for forest in forests:
            departure = torch.abs(forest.ln_amplitude - ln_a0[id(forest)])
            if l1_weight[id(forest)] is not None:
                departure = departure * l1_weight[id(forest)]
            loss = loss + (lines.prior_weight / lines.prior_scale) * torch.sum(departure)
            for name, width in widths[id(forest)].items():
                delta = (getattr(forest, name) - start[id(forest)][name]) / width
                loss = loss + 0.5 * torch.sum(delta * delta)
        return loss

    r_floor_lowerings = 0

    def checkpoint_extra() -> dict:
        # what the module's state_dict lacks: the line windows' source parameters and the
        # instrumental kernel's floor, which both change during the stage
        return {
            "setup": state.setup_fingerprint,
            "layout_source": model.layout_source,
            "resolving_power_min": float(model.instrument.resolving_power_min),
            "r_floor_lowerings": r_floor_lowerings,
        }

    def on_resume(extra: dict) -> None:
        nonlocal r_floor_lowerings
        floor = extra.get("resolving_power_min")
        if floor is not None:
            model.lower_resolving_power_floor(float(floor))
        if extra.get("layout_source") is not None:
            model.relayout(source=extra["layout_source"])
        r_floor_lowerings = int(extra.get("r_floor_lowerings", r_floor_lowerings))

    # the lines' common shift and broadening belong to the RV, v sin i and R
    common_weights = {}
    if lines.hold_common_modes:
        ranges = good_ranges(state.orders)
        with torch.no_grad():
            _, sigma_v = line_velocities(
                model, state.data, state.inv_sigma, state.good, scale_by_local_chi2=False
            )
        common_weights[id(star)] = velocity_information(sigma_v, star)
        if tell is not None:
            common_weights[id(tell)] = common_mode_weights(tell, ranges, 0.0)

    state.common_modes = {"held": bool(lines.hold_common_modes)}

    def after_step(epoch):
        nonlocal r_floor_lowerings
        for forest in forests:
            forest.clamp_()
            if id(forest) in common_weights:
                remove_common_modes(
                    forest, state.line_start["star" if forest is star else "tell"],
                    common_weights[id(forest)], COMMON_MODE_PARAMETERS,
                )  # fmt: skip
        if epoch % 100 == 0:
            model.relayout()
            return True  # new windows, new loss: the convergence test starts afresh
        if (
            epoch % 10 == 0
            and r_floor_lowerings < MAX_R_FLOOR_LOWERINGS
            and lower_r_floor_if_near(model)
        ):
            r_floor_lowerings += 1
            return True  # a longer instrumental kernel: the loss changed
        return False

    line_groups = []
    for forest in forests:
        for name, p in forest.named_parameters():
            if p.requires_grad:
                # Centres move in Å: a step of lr·(0.05 Å) ~ 1 mÅ; log-parameters move by lr.
                lr = lines.learning_rate * (0.05 if name == "center_shift" else 1.0)
                line_groups.append({"params": [p], "lr": lr})
    held = [p for p in (model.rv, model.ln_line_strength, model.veiling) if p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    trained = bool(line_groups) and lines.epochs > 0
    state.lines_trained = trained
    if trained and state.added_index is not None and star.ln_amplitude.requires_grad:
        grow_added_lines(state, total_loss)
    if trained:
        h = optimize(
            model, total_loss, epochs=lines.epochs, learning_rate=lines.learning_rate,
            rtol=lines.rtol, patience=30, progress=run.progress, description="fit: lines",
            param_groups=state.global_groups() + line_groups, after_step=after_step,
            checkpoint=run.checkpoint, checkpoint_every=run.checkpoint_every,
            checkpoint_seconds=run.checkpoint_seconds, resume=run.resume,
            checkpoint_extra=checkpoint_extra, on_resume=on_resume,
            num_threads=run.num_threads, cuda_graph=run.cuda_graph,
            graph_key=lambda: (
                id(model.stellar_layout), id(model.telluric_layout), model.instrument.half_width,
            ),
        )  # fmt: skip
        state.history.loss += h.loss
    for forest in forests:
        forest.set_trainable(())
    for p in held:
        p.requires_grad_(True)


def grow_added_lines(state: FitState, loss_fn) -> None:
    """Newton steps on the added lines' ln a alone before Adam takes over.

    An added line starts at depth 1e-3 and Adam moves ln a by about the learning rate per
    epoch: a real line 0.3 deep would need ~300 epochs to grow into place (measured: an
    injected 90 mÅ line at 22 mÅ after 100 epochs). Each step here takes the gradient of
    the loss with respect to the added lines' ln a and its curvature from a finite
    difference of that gradient with all of them moved together (their footprints barely
    overlap), solves the continuum again, and never lets a line fall below its start
    (a line the data do not support stays where it started, as before).
    """
    model = state.model
    star = model.stellar
    index = torch.as_tensor(state.added_index, device=star.ln_amplitude.device)
    start = star.ln_amplitude.detach()[index].clone()
    h = 0.05
    for _ in range(ADDED_LINE_NEWTON_STEPS):
        gradient = torch.autograd.grad(loss_fn(), star.ln_amplitude)[0][index]
        with torch.no_grad():
            star.ln_amplitude[index] += h
        moved = torch.autograd.grad(loss_fn(), star.ln_amplitude)[0][index]
        with torch.no_grad():
            star.ln_amplitude[index] -= h
            curvature = (moved - gradient) / h
            step = torch.where(
                curvature > 0,
                -gradient / curvature.clamp_min(1e-30),
                -torch.sign(gradient) * ADDED_LINE_MAX_STEP,
            ).clamp(-ADDED_LINE_MAX_STEP, ADDED_LINE_MAX_STEP)
            if not torch.isfinite(step).all():
                break
            star.ln_amplitude[index] = torch.maximum(star.ln_amplitude[index] + step, start)
            star.clamp_()
        state.solve_continuum()
    model.relayout()


def center_prior_widths(forest, lines: LineOptions):
    """The centre prior's width (Å): ``prior_center`` for every line, or per line ∝ its
    single-line depth at the start of the stage (``prior_center_scaling="depth"``)."""
    if lines.prior_center is None or lines.prior_center_scaling == "uniform":
        return lines.prior_center
    with torch.no_grad():
        strength = torch.exp(forest.ln_amplitude) * pseudo_voigt_peak(
            torch.exp(forest.ln_sigma), torch.exp(forest.ln_gamma)
        )
        linear = torch.as_tensor(forest.linear_lines(), device=strength.device)
        depth = torch.where(linear, strength, -torch.expm1(-strength))
        lo, hi = PRIOR_CENTER_FACTOR_RANGE
        factor = torch.clamp(depth.abs() / PRIOR_CENTER_REFERENCE_DEPTH, lo, hi)
    return lines.prior_center * factor


def undo_lines_if_worse(state: FitState) -> None:
    """A line stage (and polish) that left χ² worse than before it (a diverging learning
    rate) is undone: the lines go back to the input clone's, with a warning and a flag."""
    with torch.no_grad():
        chi2_after = float(state.chi2())
    if not state.lines_trained or chi2_after <= state.chi2_before_lines * (1 + 1e-6):
        return
    state.model.load_state_dict(state.saved_before_lines)
    state.model.relayout()
    state.solve_continuum()
    state.line_stage_undone = True
    warnings.warn(
        f"the line stage left chi2 worse than before it ({chi2_after:.6g} against "
        f"{state.chi2_before_lines:.6g}; a learning rate of "
        f"{state.options.lines.learning_rate:g} too large?): its changes are undone and the "
        "lines are those of the input clone",
        FitQualityWarning,
        stacklevel=4,
    )


# ----------------------------------------------------------------------- stage 8
def polish(state: FitState) -> None:
    """The globals, the RV included, with the lines frozen, on windows sized from the
    lines as learnt (the layout the result is evaluated on; polishing first and re-sizing
    after left χ² computed on a model the polish never saw)."""
    state.model.relayout()
    state.run_global_stage(fit_globals_lowering_r, "polish")


# ----------------------------------------------------------------------- stage 9
def estimate_uncertainties(state: FitState) -> None:
    """Degrees of freedom, χ²_red, the globals' errors (Birge-scaled) and the lines'."""
    model, lines = state.model, state.options.lines
    star, tell = model.stellar, model.telluric
    state.n_free = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n in GLOBAL_LEARNING_RATES and p.requires_grad
    )
    # Trained line parameters count as degrees of freedom where they left their prior's
    # kink (the lasso's effective number: its non-zero departures), so χ²_red ≈ 1 at
    # the true noise after the lines learn.
    trained = not state.line_stage_undone and lines.epochs > 0 and state.line_start
    if trained:
        state.n_line_dof = effective_line_parameters(
            star, state.line_start["star"], lines.trainable, lines.learning_rate
        )
        if tell is not None:
            state.n_line_dof += effective_line_parameters(
                tell, state.line_start["tell"], lines.telluric_trainable, lines.learning_rate
            )
    state.n_dof = state.n_good - state.n_free - state.n_line_dof
    with torch.no_grad():
        final_chi2 = float(state.chi2())
    state.chi2_reduced = final_chi2 / state.n_dof if state.n_dof > 0 else float("nan")
    state.jacobian = global_jacobian(model, state.data, state.inv_sigma, state.good)
    curvature = global_uncertainties(state.jacobian)
    # The Fisher matrix with the active lines' amplitudes (and the continua) marginalised,
    # order by order, gives each trained line's σ(ln a), and the globals' errors as if
    # every active line were free. Those are not the reported ones: the fit holds the
    # RV while the lines learn and polishes it with them frozen, and over injections
    # (Y band, S/N 200, 10 seeds) its RV and v sin i scatter 1.27× and 1.0× the
    # lines-held errors but 0.45× and 0.54× the marginalised ones (meta keeps both).
    line_sigma = np.full(star.n_lines, np.nan)
    active = np.zeros(0, dtype=np.int64)
    if trained:
        active = active_lines(star, state.line_start["star"], lines.trainable, lines.learning_rate)
        if state.added_index is not None and "amplitude" in lines.trainable:
            # an added line has an error bar whether or not it moved
            active = np.union1d(active, state.added_index)
    if active.size and state.added_index is not None and trained:
        state.marginalised_uncertainties, line_sigma = _added_line_uncertainties(state, active)
    elif active.size:
        state.marginalised_uncertainties, line_sigma = marginal_uncertainties(
            model, state.jacobian, active, state.inv_sigma, state.good
        )
    state.n_active_lines = int(active.size)
    state.uncertainty_notes = warn_at_bounds(
        model, curvature, "vsini" in state.free, "resolving_power" in state.free
    )
    _explain_missing_errors(state, curvature)
    # Birge ratio: a misfit (χ²_red > 1) means the uncertainties understate the scatter
    # the data leave around the model, so the curvature errors are scaled by √χ²_red.
    chi2_red = state.chi2_reduced
    state.uncertainty_scale = math.sqrt(max(1.0, chi2_red)) if math.isfinite(chi2_red) else 1.0
    state.curvature_uncertainties = curvature
    if tell is not None:
        sigma = telluric_scale_uncertainties(model, state.jacobian, state.inv_sigma, state.good)
        state.telluric_scale_sigma = [v * state.uncertainty_scale for v in sigma]
    state.line_ln_amplitude_sigma = line_sigma * state.uncertainty_scale
    # Per-line velocities (line-by-line template matching at the fit) and their robust
    # weighted mean, a check of the global RV line by line (paper §8.1).
    started = time.perf_counter()
    state.line_velocity, state.line_velocity_sigma = line_velocities(
        model, state.data, state.inv_sigma, state.good
    )
    state.line_by_line = line_by_line_rv(state.line_velocity, state.line_velocity_sigma)
    state.line_by_line["seconds"] = time.perf_counter() - started


def _added_line_uncertainties(state: FitState, active: np.ndarray):
    """:func:`marginal_uncertainties` with the added lines that shrank below their start
    evaluated there instead. The derivatives are finite differences of the model in ln a:
    for a line of depth ≲ 1e-5 they drown in float32 rounding, while the model is linear
    in a at such depths, so σ(a) found at the start amplitude is σ(a) at the learnt one
    and σ(ln a) = σ(a)/a."""
    star = state.model.stellar
    index = torch.as_tensor(state.added_index, device=star.ln_amplitude.device)
    with torch.no_grad():
        learnt = star.ln_amplitude[index].detach().clone()
        start = state.line_start["star"]["ln_amplitude"][index].to(learnt)
        star.ln_amplitude[index] = torch.maximum(learnt, start)
        evaluated = star.ln_amplitude[index].detach().clone()
        try:
            out, line_sigma = marginal_uncertainties(
                state.model, state.jacobian, active, state.inv_sigma, state.good
            )
        finally:
            star.ln_amplitude[index] = learnt
    ratio = torch.exp((evaluated - learnt).double()).cpu().numpy()
    line_sigma = line_sigma.copy()
    line_sigma[state.added_index] *= ratio
    return out, line_sigma


def _explain_missing_errors(state: FitState, curvature: dict) -> None:
    """NaN, never 0, for a free parameter without an error bar, with the reason."""
    model, notes = state.model, state.uncertainty_notes
    fitted = [
        name
        for name in ("rv", "vsini", "resolving_power", "limb_darkening", "line_strength", "veiling")
        if name in state.free
    ]
    if state.n_dof <= 0:
        for name in fitted:
            curvature[name] = float("nan")
            notes[name] = (
                f"{state.n_good} good pixels for {state.n_free + state.n_line_dof} free "
                "parameters: nothing left to estimate an error from"
            )
    final_vsini = float(model.rotation.effective_vsini().detach())
    for name in fitted:
        if name in notes or math.isfinite(curvature.get(name, float("nan"))):
            continue
        notes[name] = "the χ² curvature gave no finite variance"
        hint = (
            " (is it degenerate with another free parameter, or does the model not "
            "depend on it?)"
        )
        if name == "vsini" and final_vsini < 0.5 * model.rotation.step_kms:
            notes[name] = (
                f"v sin i = {final_vsini:.3g} km/s is below half the model grid's step "
                f"({model.rotation.step_kms:g} km/s), where the rotation kernel is a delta: "
                "unresolved, consistent with 0"
            )
            hint = ""
        if name in ("line_strength", "veiling"):
            continue  # nuisance-like globals: the note says it, no warning
        warnings.warn(f"no uncertainty for {name}: {notes[name]}{hint}", UserWarning, stacklevel=4)


def check(state: FitState) -> None:
    """Per-order estimates, their agreement, the rest-frame coverage and the flags."""
    model, opts = state.model, state.options
    final_rv = float(model.rv.detach())
    star_lo, star_hi = forest_range(state.star0, state.star_clone)
    state.rest_frame_outside = warn_rest_frame_coverage(
        state.orders, final_rv, star_lo, star_hi, opts.relativistic, "the final"
    )
    values = {"rv": final_rv, "vsini": float(model.rotation.effective_vsini().detach())}
    state.order_columns = order_diagnostics(model, state.jacobian, values, state.order_indices)
    state.order_chi2, state.order_dof = order_agreement(state.order_columns, final_rv)
    flags = fit_flags(
        search=state.search, rv=final_rv, rv_max=opts.search.rv_max, n_dof=state.n_dof,
        n_good=state.n_good, n_free=state.n_free + state.n_line_dof,
        uncertainty_notes=state.uncertainty_notes, line_stage_undone=state.line_stage_undone,
        order_chi2=state.order_chi2, order_dof=state.order_dof,
        rest_frame_outside=state.rest_frame_outside, chi2_red=state.chi2_reduced,
        vsini=values["vsini"],
        resolution_kms=C_KMS / float(model.instrument.resolving_power.detach()),
        bounds=_bounds_of_free(state), vsini_capped=opts.search.vsini_max is not None,
    )  # fmt: skip
    flags.update(broad_line_flags(state))
    state.flags = flags
    if "rv_ambiguous" in state.flags:
        # A curvature error describes one basin; with a second of similar χ² the RV is
        # known only to within their distance: the error bar says so.
        search = state.search
        inner = [m for m in search.minima[1:] if search.rv[0] < m["rv"] < search.rv[-1]]
        state.rv_error_floor = abs(inner[0]["rv"] - search.minima[0]["rv"])
        state.uncertainty_notes["rv"] = (
            f"widened to {state.rv_error_floor:.1f} km/s, the distance between the search's "
            "two best minima (rv_ambiguous)"
        )


def broad_line_flags(state: FitState) -> dict:
    """``broad_lines_dominate`` (warned): a mask was asked for but could not be applied.

    A mask that was applied is not a flag (nothing about the result is suspect); what it
    did is in ``result.meta["broad_lines"]``.
    """
    info = state.broad_lines
    if not info or info["handling"] == "mask" or "vsini" not in state.free:
        return {}
    flags = {
        "broad_lines_dominate": (
            f"only {info['n_narrow_lines']} narrow line(s) deeper than 1 % lie outside the "
            f"{len(info['index'])} broad line(s) of the stellar clone, too few to mask them: "
            "v sin i is measured on the broad lines and absorbs any mismatch of their "
            "template shape (hydrogen wings); fix vsini, or fit more orders"
        )
    }
    warnings.warn(flags["broad_lines_dominate"], FitQualityWarning, stacklevel=4)
    return flags


def _bounds_of_free(state: FitState) -> dict:
    """Free globals with hard bounds: (value, lower, upper)."""
    model, out = state.model, {}
    if "line_strength" in state.free:
        lo, hi = model.LINE_STRENGTH_RANGE
        out["line_strength"] = (float(model.line_strength().detach()), lo, hi)
    if "veiling" in state.free:
        out["veiling"] = (float(model.effective_veiling().detach()), 0.0, model.MAX_VEILING)
    return out


def make_result(state: FitState) -> FitResult:
    """The :class:`FitResult`: numbers, the transfer-learned template, meta."""
    model, opts = state.model, state.options
    star = model.stellar
    template_forest = copy.deepcopy(star).cpu()
    template_forest.set_trainable(state.star0.trainable)
    clone = state.star_clone
    if clone is not None:
        template = CloneResult(
            template_forest, clone.wavelength, clone.target_flux, clone.continuum,
            clone.history, clone.initial, dict(clone.meta, transfer_learned=True),
        )  # fmt: skip
    else:
        c = template_forest.center_ref.numpy()
        wl = np.exp(np.arange(np.log(c.min()), np.log(c.max()), state.step_kms / C_KMS / 4))
        template = CloneResult(
            template_forest, wl, np.full_like(wl, np.nan), np.ones_like(wl),
            meta={"transfer_learned": True},
        )  # fmt: skip
    scale = state.uncertainty_scale
    uncertainties = {k: v * scale for k, v in state.curvature_uncertainties.items()}
    if state.rv_error_floor > 0 and "rv" in uncertainties:
        uncertainties["rv"] = max(uncertainties["rv"], state.rv_error_floor)
    meta = {
        # the observed object (the spectrum's meta or FITS OBJECT), None for arrays
        "object": state.object_name,
        "free": sorted(state.free),
        "line_strength": float(model.line_strength().detach()),
        "veiling": float(model.effective_veiling().detach()),
        "n_line_dof": state.n_line_dof,
        "n_dof": state.n_dof,
        "search": None if state.search is None else state.search.summary(),
        # the robust weighted mean of the lines' own velocities (km/s; paper §8.1)
        "line_by_line_rv": dict(state.line_by_line),
        "orders": state.order_columns,
        "order_rv_chi2": state.order_chi2,
        "order_rv_dof": state.order_dof,
        "line_stage_undone": state.line_stage_undone,
        "n_good_pixels": state.n_good,
        "prior_scale": opts.lines.prior_scale,
        "prior_weight": opts.lines.prior_weight,
        "trainable": list(opts.lines.trainable),
        "step_kms": state.step_kms,
        "step_kms_source": state.step_kms_source,
        "continuum_degree": int(model.continuum_coefficients.shape[1] - 1),
        "continuum_degree_source": "auto" if state.auto_degree else "given",
        "resolving_power_source": state.resolving_power_source,
        "n_clipped": state.n_clipped,
        "order_indices": state.order_indices,
        # uncertainties = curvature_uncertainties × uncertainty_scale (√max(1, χ²_red))
        "uncertainty_scale": scale,
        "curvature_uncertainties": state.curvature_uncertainties,
        # the same with the active lines' amplitudes marginalised (unscaled)
        "uncertainties_lines_marginalised": state.marginalised_uncertainties,
        "n_active_lines": state.n_active_lines,
        # why a fitted parameter has a NaN uncertainty (empty when none has)
        "uncertainty_notes": state.uncertainty_notes,
        # the instrumental kernel's floor at the end (lowered when R came near it)
        "resolving_power_floor": model.instrument.resolving_power_min,
        # good pixels outside the stellar clone's range in the rest frame, at the end
        "rest_frame_outside_fraction": state.rest_frame_outside,
        "flux_scale": [float(o.scale) for o in state.orders],
        # the unit of the data (and of every flux-like result); "" when none was given
        "flux_unit": "" if state.flux_unit is None else state.flux_unit.to_string(),
    }
    if state.common_modes:
        # whether the lines' common shift and broadening were held (hold_common_modes)
        meta["line_common_modes"] = bool(state.common_modes["held"])
    if state.broad_lines:
        # the broad intrinsic lines masked (broad_lines="mask"): rows, centres, widths
        meta["broad_lines"] = dict(state.broad_lines)
    if model.telluric is not None:
        # per molecule (one "telluric" entry for a single clone): the optical-depth scale
        # and its Birge-scaled curvature error, the globals and continua marginalised
        meta["telluric_scales"] = telluric_scale_summary(model, state.telluric_scale_sigma)
    if state.ceilings_raised:
        meta["vsini_ceilings_raised_from"] = list(state.ceilings_raised)
    if state.added_index is not None:
        added = state.added_lines
        # the user's lines (paper §8.4): rows of the template's forest, for the line table
        meta["added_lines"] = {
            "index": [int(i) for i in state.added_index],
            "wavelength": [float(w) for w in added.wavelength],
            "label": list(added.label) if added.has_label else None,
            "species": list(added.species) if added.has_species else None,
        }
    return FitResult(
        rv=float(model.rv.detach()),
        vsini=float(model.rotation.effective_vsini().detach()),
        resolving_power=float(model.instrument.resolving_power.detach()),
        limb_darkening=float(model.rotation.limb_darkening.detach()),
        uncertainties=uncertainties,
        chi2_reduced=state.chi2_reduced,
        forward_model=model,
        template=template,
        order_data=state.orders,
        history=state.history,
        telluric=model.telluric,
        initial_chi2_reduced=state.initial_chi2,
        stellar_clone=clone if clone is not None else state.star0,
        flags=state.flags,
        line_ln_amplitude_uncertainty=state.line_ln_amplitude_sigma,
        line_velocity=state.line_velocity,
        line_velocity_uncertainty=state.line_velocity_sigma,
        meta=meta,
    )


def telluric_scale_summary(model: ForwardModel, sigma: list) -> dict:
    """``{name: {"value": s, "uncertainty": σ}}`` for the telluric scale(s) of ``model``
    (the components' names, or ``"telluric"`` for a single clone)."""
    tell = model.telluric
    names = tell.names if isinstance(tell, ComponentForest) else ("telluric",)
    values = torch.exp(model.ln_telluric_scale.detach().double()).view(-1).cpu().tolist()
    sigma = list(sigma) or [float("nan")] * len(values)
    return {
        name: {"value": float(v), "uncertainty": float(e)}
        for name, v, e in zip(names, values, sigma)
    }


# ------------------------------------------------------------------------- fit
def run_model_stages(state: FitState) -> bool:
    """Stages 3–8 on the current start. False when v sin i pressed on a default ceiling
    (the caller raises it and runs them again)."""
    build_model(state)
    choose_continuum(state)
    clip(state)  # cosmic rays would bias the global stage: clip them first
    with torch.no_grad():
        state.initial_chi2 = float(state.chi2()) / max(state.n_good, 1)
    fit_globals(state)
    if state.options.global_epochs > 0 and vsini_on_default_ceiling(state):
        return False  # before the line stage's cost
    clip(state)  # again, now that the globals fit
    warn_clipped(state)
    train_lines(state)
    polish(state)
    undo_lines_if_worse(state)
    return not vsini_on_default_ceiling(state)


def fit(
    wavelength,
    flux=None,
    uncertainty=None,
    *,
    stellar,
    telluric=None,
    options: FitOptions | None = None,
    rv: float = 0.0,
    vsini: float | None = None,
    resolving_power: float | None = None,
    mask=None,
    limb_darkening: float = 0.6,
    free=None,
    fit_rv: bool | None = None,
    fit_vsini: bool | None = None,
    fit_resolving_power: bool | None = None,
    fit_limb_darkening: bool | None = None,
    fit_telluric_scale: bool | None = None,
    fit_telluric_shift: bool | None = None,
    fit_line_strength: bool | None = None,
    fit_veiling: bool | None = None,
    vsini_max: float | None = None,
    rv_search: float = 1000.0,
    rv_max: float = 500.0,
    clip_sigma: float | None = 8.0,
    outside: str = "error",
    continuum_degree: int | str = "auto",
    trainable=("amplitude",),
    telluric_trainable=("amplitude",),
    prior_scale: float = 5.0,
    prior_weight: float = 1.0,
    prior_ln_sigma: float | None = None,
    prior_ln_gamma: float | None = None,
    prior_center: float | None = None,
    prior_center_scaling: str = "uniform",
    hold_common_modes: bool = True,
    relativistic: bool = False,
    epochs: int = 300,
    global_epochs: int = 30,
    broad_lines: str = "keep",
    broad_fwhm_kms: float = 200.0,
    learning_rate: float = 0.02,
    rtol: float = 1e-6,
    step_kms: float | None = None,
    dtype: torch.dtype = torch.float32,
    device="auto",
    checkpoint=None,
    checkpoint_every: int = 50,
    checkpoint_seconds: float | None = None,
    resume=None,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = 1,
    cuda_graph: bool = True,
    add_lines=None,
) -> FitResult:
    """Transfer-learn stellar (and telluric) clones against an observed spectrum.

    Parameters
    ----------
    wavelength : array_like, Quantity, or list of them; or specutils spectra
        Pixel-centre wavelengths (vacuum), Å unless a Quantity; one 1-D array per order.
        Or, with ``flux`` left out, the observation itself: a specutils ``Spectrum``, a
        ``SpectrumList`` (e.g. muler's ``HPFSpectrumList``) or a list of spectra, one per
        order, whose uncertainties and masks are used (as ``spectrum.blase.fit`` does).
    flux : array_like or list of array_like, optional
        Observed flux per order (any normalisation; the continuum is fitted).
    uncertainty : array_like or list, optional
        1-σ flux uncertainties per pixel. Pixels with σ ≤ 0 or NaN are masked (with a
        warning that counts them). Without uncertainties a constant noise per order is
        estimated from the pixel-to-pixel scatter.
    stellar : CloneResult, LineForest or path
        The stellar clone (flattened units).
    telluric : CloneResult, LineForest, path, dict or list of pairs, optional
        A telluric clone (transmission), or one clone per molecule as a dict
        ``{name: clone}`` or a list of ``(name, clone)`` pairs (e.g. from
        :func:`~blase_specutils.cloning.clone_molecules`): a telluric model by molecule,
        ``∏_m T_m^{s_m}`` with one optical-depth scale per molecule (all freed by
        ``"telluric_scale"``; the shift is shared), reported in
        :attr:`FitResult.telluric_scales`.
    options : FitOptions, optional
        All the settings below as one frozen object (:class:`FitOptions`: the free set,
        the search, the line stage, the run); keywords given here besides it, at other
        than their defaults, override it.
    rv : float
        Initial radial velocity, km/s.
    vsini : float, optional
        Initial v sin i, km/s (default 5 km/s). When v sin i is fitted, starts below
        0.5 km/s begin at 0.5 km/s: the rotation kernel is flat in v sin i at 0, so a fit
        started there would never move.
    resolving_power : float, optional
        Initial (or, with ``fit_resolving_power=False``, fixed) resolving power R. Default:
        the nominal R of the instrument the spectrum names (HPF 55,000, IGRINS 45,000, …;
        see :mod:`blase_specutils.astro.instruments`), else 55,000. ``result.meta``
        records which (``"resolving_power_source"``).
    mask : array_like of bool or list, optional
        True for pixels to use. NaN fluxes are masked automatically.
    limb_darkening : float
        Linear limb-darkening coefficient ε.
    free : iterable of str, optional
        Which global parameters are free, as a set of names out of
        ``FREE_PARAMETERS`` (``"rv"``, ``"vsini"``, ``"resolving_power"``,
        ``"limb_darkening"``, ``"line_strength"``, ``"veiling"``, ``"telluric_scale"``,
        ``"telluric_shift"``). Default ``DEFAULT_FREE``: RV, v sin i, the stellar clone's
        global line strength (an optical-depth scale: a template hotter, cooler or of
        another metallicity than the star has lines too shallow or too deep), veiling
        (an additive continuum, paper §8.7) and the telluric scale. Everything else is
        held at its given value.
    fit_rv, fit_vsini, fit_resolving_power, fit_limb_darkening : bool, optional
        Overrides of ``free`` for one parameter each (True adds it, False removes it).
    fit_telluric_scale, fit_telluric_shift, fit_line_strength, fit_veiling : bool, optional
        The same for the telluric optical-depth scale, a small telluric velocity shift,
        the line strength and the veiling.
    vsini_max : float, optional
        Largest v sin i the rotation kernel can reach during the fit, km/s (default
        ``max(3 vsini, vsini + 50)``); it fixes the kernel length. When the default
        ceiling stops v sin i, the fit is rerun from that ceiling with a default one three
        times higher, up to 495 km/s from the default start (``meta`` lists the ceilings
        left behind in ``vsini_ceilings_raised_from``); a ceiling you give is kept, with
        a warning if v sin i ends on it. Not with ``checkpoint`` or ``resume``.
    rv_search : float
        Half-width of the initial grid search in RV around ``rv``, km/s (0: none). The
        search is joint in RV and v sin i (0–450 km/s, or up to ``vsini_max``) on the
        continuum-profiled χ² of every order, with an additive continuum per order so
        that a template's line depths do not bias it (:mod:`blase_specutils.core.search`):
        coarse steps of a third of the instrumental FWHM, refined in steps of the model
        grid. Its best and second-best minima are in ``result.meta["search"]``.
    rv_max : float
        Absolute RV beyond which the result is flagged (``result.flags``), km/s.
    clip_sigma : float or None
        After the global stage, mask pixels that lie above the fitted continuum and above
        the model by more than ``clip_sigma`` robust standard deviations of the normalised
        residuals (at least ``clip_sigma`` σ): cosmic rays, hot pixels, emission the
        absorption model cannot make. The count goes into a warning and
        ``result.meta["n_clipped"]``. ``None`` disables it.
    outside : {"error", "crop"}
        What to do with data beyond the clones' wavelength range: raise a ValueError
        that names the orders inside (default), or ``"crop"``: mask those pixels, leave out
        orders with none left (``result.meta["order_indices"]`` lists the orders fitted)
        and warn.
    continuum_degree : int or "auto"
        Degree of the per-order Chebyshev continuum (one degree for every order).
        ``"auto"`` (default) divides each order by the template at the grid-search RV and
        takes, from 2 to 8, the lowest degree beyond which no higher one fits the binned
        ratio significantly better (F test at 1 %, see ``envelope_degree``); the largest
        over the orders is used: 2 for continuum-normalised orders, higher for raw orders
        that still carry the blaze. ``result.meta["continuum_degree"]`` records it.
    trainable, telluric_trainable : iterable of str
        Line properties of the stellar and telluric clones that train in stage 3
        (subset of "center", "amplitude", "sigma", "gamma"; empty for none). The default,
        amplitudes only, is the paper's: training σ and γ lowers χ² on real stars but is
        degenerate with v sin i, and training centres is degenerate with the RV (use
        ``prior_center`` to hold them, e.g. 0.002 Å).
    prior_scale : float
        Λ of the L1 prior Σ|ln a − ln â|/Λ. The data term here is χ²/2 (residuals in units
        of the uncertainties), not the paper's unweighted sum of squares, so the same Λ is a
        much weaker prior at high SNR: the paper's balance corresponds to
        ``prior_weight ≈ 2/σ²`` for a typical per-pixel uncertainty σ (continuum units).
    prior_weight : float
        Overall weight of the prior relative to χ²/2.
    prior_ln_sigma, prior_ln_gamma : float, optional
        Widths of Gaussian priors on departures of ln σ and ln γ from the clone (applied
        when those properties train).
    prior_center : float, optional
        Width of a Gaussian prior on line-centre departures from the clone, Å.
    prior_center_scaling : {"uniform", "depth"}
        ``"uniform"``: every line's centre prior has width ``prior_center``. ``"depth"``:
        the width scales with the line's depth (``prior_center`` at depth 0.5, clipped to
        0.02–2 × that), holding weak lines' centres tighter than strong ones'.
    hold_common_modes : bool
        When centres or widths train, keep their departures free of a common part: after
        each step the information-weighted mean velocity shift of the centres and the
        mean change of ln σ and ln γ (over the lines in the data) are removed, so that a
        shift of every line stays with the RV and a common broadening with v sin i and R
        (WASP 69, every property training: without it the RV moved 0.10 km/s, 4.7 σ).
        ``False`` lets the lines take them.
    relativistic : bool
        Use the relativistic Doppler factor sqrt((1 + β)/(1 − β)) instead of 1 + β.
    epochs : int
        Epochs of the joint stage.
    global_epochs : int
        L-BFGS iterations (of up to 20 evaluations each) of the global-parameter stages.
    broad_lines : {"mask", "keep"}
        What to do with the stellar clone's broad intrinsic lines (at least 2 % deep,
        intrinsic FWHM above ``broad_fwhm_kms``: hydrogen in A stars, Paschen and
        Brackett lines), whose
        template shape rarely matches the star's and whose mismatch v sin i would absorb.
        ``"keep"`` (default) fits them like any line. ``"mask"`` leaves the pixels within
        1.5 FWHM of each, at the search's RV, out of every stage's χ² (the lines stay in
        the model); ``result.meta["broad_lines"]`` lists them and the pixels masked. When
        fewer than 10 narrow lines would be left (an
        A0V star's single near-infrared order) the broad lines are kept, since they are
        then all that measures the RV, and the result is flagged ``broad_lines_dominate``
        with a warning. A clone without broad lines fits exactly as with ``"keep"``.
    broad_fwhm_kms : float
        The intrinsic FWHM (km/s) above which a clone line is broad (default 200: between
        an unrotated template's metal lines, ≲ 20 km/s, and hot stars' hydrogen lines,
        500–2000 km/s).
    learning_rate : float
        Adam step size of the line parameters.
    rtol : float
        Stop the joint stage when the loss improved by less than ``rtol`` (relative) over
        30 epochs.
    step_kms : float, optional
        Velocity step of the fine model grid, km/s. Default: 0.5 km/s, or a third of the
        data's finest pixel (1st percentile of the pixel widths in velocity) where that
        is smaller, but not below 0.05 km/s; the fine grid is then averaged into the
        pixels, and a step comparable to a pixel misplaces flux within it (4000 pixels
        of 0.29 km/s: χ²_red 0.39 at the true parameters and S/N 300 with 0.5 km/s,
        0.003 with 0.1). The cost (grid length, line windows, kernels) grows as 1/step.
        A step coarser than half the finest pixel warns. ``meta`` records the step.
    dtype : torch.dtype
        Working dtype.
    device : {"auto", "cpu", "cuda"}
        Where to compute.
    checkpoint : path-like, optional
        Write checkpoints of the joint stage here (atomically).
    checkpoint_every : int
        Epochs between checkpoints.
    checkpoint_seconds : float, optional
        Also write a checkpoint when this many seconds passed since the last one.
    resume : path-like, optional
        Resume the joint stage from this checkpoint.
    seed : int
        Random seed.
    progress : bool
        Show progress bars.
    num_threads : int or None
        CPU threads while training (``None``: torch's setting).
    cuda_graph : bool
        On a CUDA device, replay each step of the joint stage as a captured CUDA graph
        (H200, WASP 69: 7.6 s → 2.6 s for the same result); falls back to eager training
        if capture fails. No effect on CPU.
    add_lines : QTable or Quantity, optional
        Lines the clone lacks (paper §8.4): a table with a ``wavelength`` column (a length
        Quantity, rest-frame vacuum) and optional ``label`` and ``species`` columns, or a
        length Quantity. Each is appended to the stellar forest with a single-line depth of
        1e-3 and the median σ and γ of its ten nearest clone lines, and its amplitude
        learns with its neighbours in the line stage (without the L1 prior, which would
        pull it back to that arbitrary start; its error comes from the Fisher matrix like
        the other trained lines'). ``result.line_table`` then has ``added`` (False for the
        clone's lines), ``label`` and ``species`` columns. Lines outside the data (at the
        initial ``rv``), within λ/R of a clone line or of one another, or without a length
        unit raise an error.

    Returns
    -------
    FitResult
    """
    given = dict(locals())
    base = options if options is not None else FitOptions()
    if not isinstance(base, FitOptions):
        raise TypeError(f"options must be a FitOptions, not {type(base).__name__}")
    keywords = {
        name: given[name]
        for name, parameter in _KEYWORDS.items()
        if options is None or not _same(given[name], parameter.default)
    }
    opts = base.replace_keywords(**keywords)
    with limit_threads(opts.run.num_threads):
        state = prepare(
            wavelength, flux, uncertainty, mask, stellar, telluric, opts, add_lines=add_lines
        )
        mask_broad_lines(state)  # at the starting RV, for the search
        search_start(state)
        mask_broad_lines(state)  # again at the search's RV
        while not run_model_stages(state):
            raise_vsini_ceiling(state)
        estimate_uncertainties(state)
        check(state)
        return make_result(state)


def _same(a, b) -> bool:
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:  # noqa: BLE001 (anything that cannot compare is "given")
        return False


#: fit()'s settings keywords (everything but the data, the clones and the mask).
_KEYWORDS = {
    name: parameter
    for name, parameter in inspect.signature(fit).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    and name not in ("stellar", "telluric", "options", "mask", "add_lines")
}
