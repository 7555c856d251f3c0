"""What a fit frees and how it runs: the free-parameter set and the checked numbers."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import astropy.units as u
import torch

from ..astro.inputs import check_numbers
from ..core.lineforest import SPEED_OF_LIGHT_KMS
from .broad_lines import DEFAULT_BROAD_FWHM_KMS

C_KMS = SPEED_OF_LIGHT_KMS


KMS = u.km / u.s


#: Every global parameter :func:`fit` can free.
FREE_PARAMETERS = frozenset(
    {
        "rv",
        "vsini",
        "resolving_power",
        "limb_darkening",
        "line_strength",
        "veiling",
        "telluric_scale",
        "telluric_shift",
    }
)


#: The global parameters free by default.
#: The global parameters free by default. The clone's line strength and veiling are not:
#: free, they let rotation and depth trade against each other on single orders of a
#: template far from the star (IGRINS CPD-57 1131: line strength 10–14 with v sin i 300,
#: or 0 with nothing left of the lines) and moved WASP 69's RV by 65 m/s (2.4σ). The
#: start's search absorbs depth mismatch on its own (an additive term per order); free
#: them for veiled stars: ``free=DEFAULT_FREE | {"line_strength", "veiling"}``.
DEFAULT_FREE = frozenset({"rv", "vsini", "telluric_scale"})


def free_parameters(free=None, **overrides) -> frozenset:
    """The set of free global parameters from ``free`` and per-parameter overrides.

    Parameters
    ----------
    free : iterable of str, optional
        Names out of :data:`FREE_PARAMETERS` (default :data:`DEFAULT_FREE`).
    **overrides : bool or None
        ``name=True`` adds ``name``, ``False`` removes it, ``None`` leaves it.

    Raises
    ------
    ValueError
        An unknown name.
    """
    if free is None:
        chosen = set(DEFAULT_FREE)
    else:
        chosen = {free} if isinstance(free, str) else set(free)
    unknown = sorted(str(n) for n in chosen - FREE_PARAMETERS)
    if unknown:
        raise ValueError(
            f"unknown free parameter(s) {unknown}; choose from {sorted(FREE_PARAMETERS)}"
        )
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in FREE_PARAMETERS:
            raise ValueError(f"unknown parameter {name!r}")
        if value:
            chosen.add(name)
        else:
            chosen.discard(name)
    return frozenset(chosen)


def check_velocity_limits(rv: float, rv_search: float, rv_max: float) -> None:
    """Velocities must stay well below the speed of light (clear errors, early)."""
    for name, value in (("rv", abs(rv)), ("rv_max", rv_max)):
        if value >= C_KMS:
            raise ValueError(
                f"{name} = {value:g} km/s is at or beyond the speed of light ({C_KMS:g} km/s)"
            )
    if abs(rv) + rv_search >= C_KMS / 3.0:
        raise ValueError(
            f"the RV search reaches {abs(rv) + rv_search:g} km/s (|rv| + rv_search), beyond "
            f"c/3 = {C_KMS / 3:g} km/s where Doppler shifts of a clone stop making sense; "
            "narrow rv_search"
        )


def check_rotation_limits(vsini: float | None, vsini_max: float | None) -> None:
    """A v sin i start and ceiling below the speed of light, the start under the ceiling."""
    for name, value in (("vsini", vsini), ("vsini_max", vsini_max)):
        if value is not None and value >= C_KMS:
            raise ValueError(
                f"{name} = {value:g} km/s is at or beyond the speed of light ({C_KMS:g} km/s)"
            )
    if vsini is not None and vsini_max is not None and vsini > vsini_max:
        raise ValueError(
            f"the starting vsini ({vsini:g} km/s) is above vsini_max ({vsini_max:g} km/s), "
            "the ceiling v sin i can reach; raise vsini_max or start lower"
        )


#: The numeric arguments of :func:`fit` and what each must be: (unit a Quantity may
#: carry, smallest value, whether the smallest value itself is excluded, largest value,
#: None allowed, integer). Checked by :func:`check_fit_numbers` before any work.
FIT_NUMBERS = {
    "rv": (KMS, None, False, None, False, False),
    "vsini": (KMS, 0.0, False, None, True, False),
    "resolving_power": (u.dimensionless_unscaled, 0.0, True, None, True, False),
    "limb_darkening": (u.dimensionless_unscaled, 0.0, False, 1.0, False, False),
    "vsini_max": (KMS, 0.0, True, None, True, False),
    "rv_search": (KMS, 0.0, False, None, False, False),
    "rv_max": (KMS, 0.0, True, None, False, False),
    "clip_sigma": (None, 0.0, True, None, True, False),
    "prior_scale": (None, 0.0, True, None, False, False),
    "prior_weight": (None, 0.0, False, None, False, False),
    "prior_ln_sigma": (None, 0.0, True, None, True, False),
    "prior_ln_gamma": (None, 0.0, True, None, True, False),
    "prior_center": (u.AA, 0.0, True, None, True, False),
    "epochs": (None, 0, False, None, False, True),
    "global_epochs": (None, 0, False, None, False, True),
    "learning_rate": (None, 0.0, True, None, False, False),
    "rtol": (None, 0.0, False, None, False, False),
    "step_kms": (KMS, 0.0, True, None, True, False),
    "checkpoint_every": (None, 1, False, None, False, True),
    "checkpoint_seconds": (None, 0.0, True, None, True, False),
    "seed": (None, None, False, None, False, True),
    "num_threads": (None, 1, False, None, True, True),
    "broad_fwhm_kms": (KMS, 0.0, True, None, False, False),
}


def check_fit_numbers(values: dict) -> dict:
    """Check the numeric arguments of :func:`fit` that ``values`` holds; plain numbers out.

    Every entry of ``values`` named in ``FIT_NUMBERS`` must be finite and within its
    range (velocities may be Quantities, converted to km/s; ``prior_center`` to Å);
    anything else raises a ValueError that names the argument. Entries not in the table
    are returned unchanged. Used by :func:`fit` and by ``spectrum.blase.fit`` before
    they do any work, so a NaN start or a negative epoch count fails at once instead of
    deep inside the solver (or, worse, not at all). The checks themselves are
    :func:`~blase_specutils.astro.inputs.check_numbers` (shared with ``clone``).
    """
    return check_numbers(values, FIT_NUMBERS)


@dataclass(frozen=True)
class SearchOptions:
    """Where the fit looks for the star before any gradient step.

    Attributes
    ----------
    rv_search : float
        Half-width of the joint RV × v sin i grid search around the starting RV, km/s
        (0: no RV search).
    rv_max : float
        |RV| beyond which the result is flagged, km/s.
    vsini_max : float or None
        Ceiling of v sin i, km/s (None: set from the search's v sin i and raised when
        v sin i presses on it).
    step_kms : float or None
        Velocity step of the fine model grid, km/s (None: from the pixels).
    """

    rv_search: float = 1000.0
    rv_max: float = 500.0
    vsini_max: float | None = None
    step_kms: float | None = None


@dataclass(frozen=True)
class LineOptions:
    """How the lines learn (the joint stage) and the prior that holds them.

    Attributes
    ----------
    trainable, telluric_trainable : tuple of str
        Line properties that train ("center", "amplitude", "sigma", "gamma").
    prior_scale, prior_weight : float
        Λ of the L1 prior on ln-amplitude departures and its overall weight.
    prior_ln_sigma, prior_ln_gamma, prior_center : float or None
        Widths of Gaussian priors on departures of ln σ, ln γ and the centres (Å).
    prior_center_scaling : {"uniform", "depth"}
        ``"depth"``: each line's centre-prior width is ``prior_center`` × its depth / 0.5
        (clipped to 0.02–2 ×), so weak lines, whose centres the data barely constrain
        and which otherwise absorb their neighbours' mismatch, are held tighter than
        strong ones.
    hold_common_modes : bool
        Keep the trained centres' and widths' departures free of a common shift (the
        information-weighted mean velocity shift of the centres, the mean change of ln σ
        and of ln γ over the lines in the data are removed after each step), so a shift
        of every line stays with the RV and a common broadening with v sin i and R (see
        :mod:`~blase_specutils.fitting.common_modes`). No effect when only amplitudes train.
    epochs : int
        Epochs of the joint stage.
    learning_rate : float
        Adam step size of the line parameters.
    rtol : float
        Relative loss change over 30 epochs below which the stage stops.
    """

    trainable: tuple = ("amplitude",)
    telluric_trainable: tuple = ("amplitude",)
    prior_scale: float = 5.0
    prior_weight: float = 1.0
    prior_ln_sigma: float | None = None
    prior_ln_gamma: float | None = None
    prior_center: float | None = None
    prior_center_scaling: str = "uniform"
    hold_common_modes: bool = True
    epochs: int = 300
    learning_rate: float = 0.02
    rtol: float = 1e-6


#: Accepted values of ``LineOptions.prior_center_scaling``.
PRIOR_CENTER_SCALINGS = ("uniform", "depth")
#: The line depth whose centre-prior width is ``prior_center`` under depth scaling, and
#: the range the depth factor is clipped to.
PRIOR_CENTER_REFERENCE_DEPTH = 0.5
PRIOR_CENTER_FACTOR_RANGE = (0.02, 2.0)


@dataclass(frozen=True)
class RunOptions:
    """Where and how the computation runs (nothing here changes the answer's meaning).

    Attributes
    ----------
    dtype : torch.dtype
        Working dtype.
    device : str or torch.device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    seed : int
        Random seed.
    progress : bool
        Progress bars.
    num_threads : int or None
        CPU threads while training (None: torch's setting).
    cuda_graph : bool
        Replay the joint stage's steps as CUDA graphs on a GPU.
    checkpoint, resume : path-like or None
        Checkpoint file of the joint stage, and one to resume from.
    checkpoint_every : int
        Epochs between checkpoints.
    checkpoint_seconds : float or None
        Also checkpoint after this many seconds.
    """

    dtype: object = torch.float32
    device: object = "auto"
    seed: int = 0
    progress: bool = True
    num_threads: int | None = 1
    cuda_graph: bool = True
    checkpoint: object = None
    checkpoint_every: int = 50
    checkpoint_seconds: float | None = None
    resume: object = None


@dataclass(frozen=True)
class FitOptions:
    """Everything :func:`blase_specutils.fit` takes besides the data and the clones.

    The free global parameters are data (a set of names, as astropy's
    ``Parameter.fixed``), not booleans; the search, the line stage and the run are
    grouped. ``fit``'s keywords override these (:meth:`replace_keywords`).

    Attributes
    ----------
    free : frozenset of str
        The free global parameters, out of :data:`FREE_PARAMETERS`.
    rv, vsini, resolving_power, limb_darkening : float or None
        Starting (or, when not free, fixed) values.
    continuum_degree : int or "auto"
        Chebyshev degree of the per-order continuum.
    clip_sigma : float or None
        Upward outliers beyond this many robust σ are masked.
    outside : {"error", "crop"}
        What to do with data beyond the clones.
    relativistic : bool
        Relativistic Doppler factor.
    global_epochs : int
        L-BFGS iterations of each global stage.
    broad_lines : {"mask", "keep"}
        Broad intrinsic lines of the stellar clone (at least 2 % deep, intrinsic FWHM
        above ``broad_fwhm_kms``: hydrogen in A stars, Paschen and Brackett lines): ``"keep"``
        (default) fits them like any line; ``"mask"`` removes the pixels within 1.5 FWHM of
        each (at the search's RV) from every stage's χ², so a template's mismatched
        hydrogen wings cannot drive v sin i; the lines stay in the model.
    broad_fwhm_kms : float
        Intrinsic FWHM (km/s) above which a clone line is broad.
    search, lines, run : SearchOptions, LineOptions, RunOptions
        The grouped settings.
    """

    free: frozenset = DEFAULT_FREE
    rv: float = 0.0
    vsini: float | None = None
    resolving_power: float | None = None
    limb_darkening: float = 0.6
    continuum_degree: object = "auto"
    clip_sigma: float | None = 8.0
    outside: str = "error"
    relativistic: bool = False
    global_epochs: int = 30
    broad_lines: str = "keep"
    broad_fwhm_kms: float = DEFAULT_BROAD_FWHM_KMS
    search: SearchOptions = field(default_factory=SearchOptions)
    lines: LineOptions = field(default_factory=LineOptions)
    run: RunOptions = field(default_factory=RunOptions)

    def replace_keywords(self, **keywords) -> FitOptions:
        """A copy with ``fit``'s flat keywords applied (each to the group that holds it);
        ``fit_<name>=True/False`` add or remove ``<name>`` from :attr:`free`."""
        top, groups = {}, {"search": {}, "lines": {}, "run": {}}
        booleans = {}
        for name, value in keywords.items():
            if name.startswith("fit_") and name[4:] in FREE_PARAMETERS:
                booleans[name[4:]] = value
            elif name == "free":
                top["free"] = free_parameters(value)
            elif name in _GROUP_OF:
                groups[_GROUP_OF[name]][name] = value
            elif name in {f.name for f in fields(self)}:
                top[name] = value
            else:
                raise TypeError(f"fit() got an unexpected keyword argument {name!r}")
        free = free_parameters(top.pop("free", self.free), **booleans)
        changed = {
            group: replace(getattr(self, group), **values)
            for group, values in groups.items()
            if values
        }
        return replace(self, free=free, **top, **changed)


_GROUP_OF = {
    **{f.name: "search" for f in fields(SearchOptions)},
    **{f.name: "lines" for f in fields(LineOptions)},
    **{f.name: "run" for f in fields(RunOptions)},
}
