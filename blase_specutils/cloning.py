"""Cloning: turn a precomputed synthetic spectrum into a trained line forest.

``clone(wavelength, flux)`` flattens the continuum (black body at ``teff`` when given,
then a smooth fit through continuum peaks), finds lines by prominence, starts every
line as a pseudo-Voigt with its width split evenly between Gaussian and Lorentzian
parts and its depth matched at the line centre, then tunes amplitude and widths (and
optionally centres) by gradient descent on the mean squared residual. A refinement pass
then adds the lines prominence cannot see (on the shoulder of a stronger line) where the
target dips below the trained model, and trains again.

Saturated transmissions (telluric bands whose lines reach zero) are cloned on their optical
depth instead: lines are found as peaks of ``τ = −ln T`` (floored, so never infinite) and the
forest is the log-flux mode ``exp(−Σ aV)`` of the paper's Appendix A, which can hold a core at
zero; see ``optical_depth`` in :func:`clone`.
"""

from __future__ import annotations

import inspect
import time
import warnings

import astropy.units as u
import numpy as np
import torch

from .astro.clones import CloneResult, forest_from_table, forest_to_table, load_clone
from .astro.inputs import (
    as_flux_array,
    ascending_angstrom,
    check_flag,
    check_grid,
    check_numbers,
    n_masked,
    unpack_spectra,
)
from .astro.templates import Template, read_psg
from .core.lineforest import SPEED_OF_LIGHT_KMS, LineForest
from .core.profiles import GAUSSIAN_FWHM_PER_SIGMA, pseudo_voigt_peak
from .core.train import TrainingHistory, optimize, resolve_device, thread_limited
from .prep.checks import check_spectrum
from .prep.continuum import flatten_continuum
from .prep.linefind import find_lines, find_optical_depth_lines

__all__ = [
    "clone",
    "clone_molecules",
    "load_clone",
    "CloneResult",
    "forest_from_table",
    "forest_to_table",
    "residual_lines",
    "envelope_poly_order",
]

#: An unflattened spectrum whose minimum is below this is cloned on its optical depth by
#: default (``clone(optical_depth=None)``): its lines saturate.
SATURATED_TRANSMISSION = 0.01

#: The numeric settings of :func:`clone` and what each must be (see
#: :func:`~blase_specutils.astro.inputs.check_numbers`: unit, low, low excluded, high, None
#: allowed, integer). ``prominence`` and ``tolerance`` are fractions in (0, 1).
CLONE_NUMBERS = {
    "prominence": (u.dimensionless_unscaled, 0.0, "both", 1.0, False, False),
    "tolerance": (u.dimensionless_unscaled, 0.0, "both", 1.0, False, False),
    "epochs": (None, 0, False, None, False, True),
    "learning_rate": (None, 0.0, True, None, False, False),
    "rtol": (None, 0.0, False, None, False, False),
    "patience": (None, 1, False, None, False, True),
    "relayout_every": (None, 0, False, None, False, True),
    "refine": (None, 0, False, None, False, True),
    "time_limit": (u.s, 0.0, True, None, True, False),
    "seed": (None, None, False, None, False, True),
    "num_threads": (None, 1, False, None, True, True),
    "max_optical_depth": (None, 0.0, True, None, False, False),
}

#: PSG columns :func:`clone_molecules` leaves out unless asked for: the total (the
#: molecules' product) and the smooth continua (Rayleigh scattering, collision-induced
#: absorption), which are no forests of lines.
PSG_NON_MOLECULES = ("Total", "Rayleigh", "CIA")

#: A found line is *broad* (``clone(broad_lines=None)``) when its FWHM exceeds
#: ``broad_fwhm_kms`` and it is at least this deep (continuum units): the hydrogen lines
#: of an A star, not the shallow wide blends a cool star's line finder also returns.
BROAD_MIN_DEPTH = 0.02

#: FWHM of a Voigt whose Gaussian and Lorentzian FWHM are equal, in units of either.
_EQUAL_SPLIT_FWHM_RATIO = (1 + 2.69269 + 2.42843 + 4.47163 + 0.07842 + 1) ** 0.2


def envelope_poly_order(span_angstrom: float) -> int:
    """Chebyshev order of the envelope continuum of a clone with broad lines.

    One order per 300 Å, between 1 and 15. The tops of a broad line's wings are as smooth
    as a continuum, so an envelope free to bend on the ±100 Å scale of the wings bends into
    them: on a 400 Å spectrum with one 20 Å-wide Lorentzian and a tilted continuum, order 2
    leaves the continuum 1.1 % off and the clone at 0.45 % RMS, order 1 0.17 % and 0.13 %
    (on PHOENIX 10,000 K over 8626–8798 Å: 0.22 % at order 2, 0.24 % at order 1).

    Parameters
    ----------
    span_angstrom : float
        Wavelength span of the spectrum, Å.

    Returns
    -------
    int
    """
    return int(min(15, max(1, span_angstrom // 300.0)))


def initial_line_parameters(depth, fwhm, *, mode: str = "linear"):
    """Amplitude, σ and γ that reproduce a line's measured depth and FWHM.

    The width is split evenly between the Gaussian and Lorentzian parts (equal
    Gaussian and Lorentzian FWHM ``w``; the pseudo-Voigt FWHM is then
    ``w · (1 + 2.69269 + 2.42843 + 4.47163 + 0.07842 + 1)^(1/5)``), and the amplitude
    is chosen so the single line reaches the measured depth at its centre:
    ``a V(0) = depth`` (linear mode) or ``a V(0) = −ln(1 − depth)`` (log mode).

    Parameters
    ----------
    depth : numpy.ndarray
        Line depth below the continuum, in (0, 1).
    fwhm : numpy.ndarray
        Measured full width at half maximum, Å.
    mode : {"linear", "log"}
        Forest mode.

    Returns
    -------
    amplitude, sigma, gamma : numpy.ndarray
        Å each.
    """
    depth = np.clip(np.asarray(depth, dtype=np.float64), 1e-6, 1 - 1e-4)
    w = np.asarray(fwhm, dtype=np.float64) / _EQUAL_SPLIT_FWHM_RATIO
    sigma = w / GAUSSIAN_FWHM_PER_SIGMA
    gamma = 0.5 * w
    peak = pseudo_voigt_peak(torch.as_tensor(sigma), torch.as_tensor(gamma)).numpy()
    strength = depth if mode == "linear" else -np.log1p(-depth)
    return strength / peak, sigma, gamma


def residual_lines(wavelength, target, model, existing_center, *, prominence: float):
    """Lines the trained forest misses: dips of the target below the model.

    Prominence finds a line only where it makes a local minimum of the spectrum, so a
    weaker line on the shoulder of a stronger one (closer than about one FWHM) is not
    found; the stronger line then widens to cover both and leaves a residual of several
    per cent (up to 11 % on the PHOENIX Z band). Those lines show up after training as
    dips of ``target`` below ``model``. A dip becomes a new line when it lies at least
    ``prominence`` below the model (continuum units, the same threshold as the first
    search) and is a local minimum of the residual with half that prominence, and is
    more than 1.5 pixels from every existing centre (a dip at a centre is that line's
    own shape, which training adjusts).

    Parameters
    ----------
    wavelength, target, model : numpy.ndarray
        Grid (Å), flattened target and trained model on it.
    existing_center : numpy.ndarray
        Centres of the forest's lines (Å).
    prominence : float
        Threshold (continuum units).

    Returns
    -------
    center, depth, fwhm : numpy.ndarray
        The new lines (Å; ``depth`` is the fraction of the model's flux they remove,
        ``1 − target/model`` at the dip, so ``∏(1 − aV)`` stays multiplicative).

    Raises
    ------
    ValueError
        Mismatched lengths, NaN or infinite values, unsorted or duplicated wavelengths,
        non-finite centres, or ``prominence`` outside (0, 1).
    """
    wavelength, target = check_spectrum(wavelength, target, "target")
    _, model = check_spectrum(wavelength, model, "model")
    existing_center = np.asarray(existing_center, dtype=np.float64).ravel()
    if not np.all(np.isfinite(existing_center)):
        raise ValueError("existing_center contains NaN or inf")
    if not (np.isfinite(prominence) and 0 < prominence < 1):
        raise ValueError(f"prominence must lie in (0, 1), got {prominence!r}")
    residual = model - target
    try:
        dips = find_lines(wavelength, 1.0 - residual, prominence=0.5 * prominence)
    except ValueError:  # no local minimum at all
        empty = np.empty(0)
        return empty, empty, empty
    index = np.asarray(dips.pixel_index)
    step = np.interp(dips.center, wavelength, np.gradient(wavelength))
    existing = np.sort(existing_center)
    if existing.size:
        k = np.clip(np.searchsorted(existing, dips.center), 1, max(existing.size - 1, 1))
        nearest = np.minimum(
            np.abs(dips.center - existing[k - 1]),
            np.abs(dips.center - existing[k % existing.size]),
        )
    else:  # no lines yet: every dip is new
        nearest = np.full(dips.center.size, np.inf)
    keep = (residual[index] >= prominence) & (nearest > 1.5 * step)
    floor = np.maximum(model[index], 1e-3)
    depth = np.clip(residual[index] / floor, prominence, 0.9)
    return dips.center[keep], depth[keep], np.asarray(dips.fwhm)[keep]


# ---------------------------------------------------------------------------
# The workflow
# ---------------------------------------------------------------------------


def _check_teff(teff, wavelength: np.ndarray) -> float | None:
    """``teff`` as a float, or a ValueError that says what is wrong with it."""
    if teff is None:
        return None
    if isinstance(teff, u.Quantity):
        teff = teff.to_value(u.K, equivalencies=u.temperature())
    if isinstance(teff, (bool, np.bool_)) or not isinstance(teff, (int, float, np.number)):
        raise ValueError(f"teff must be a temperature in K (a number), got {teff!r}")
    teff = float(teff)
    if not (np.isfinite(teff) and teff > 0):
        raise ValueError(f"teff must be a positive temperature in K, got {teff}")
    # x = hc/(λkT) at the bluest pixel: beyond ~700 the black body underflows to zero.
    x_max = 1.4387769e8 / (float(wavelength[0]) * teff)
    if x_max > 700.0:
        raise ValueError(
            f"teff = {teff:g} K is too cold for a black body at {wavelength[0]:.0f} Å "
            "(it underflows to zero there); give the model's temperature, or leave teff out"
        )
    return teff


@thread_limited
def clone(
    wavelength,
    flux=None,
    *,
    prominence: float = 0.01,
    teff: float | None = None,
    flatten: bool | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    mode: str = "linear",
    profile: str = "pseudo_voigt",
    trainable=("center", "amplitude", "sigma", "gamma"),
    emission: bool = False,
    epochs: int = 300,
    learning_rate: float = 0.05,
    optimizer: str = "adam",
    rtol: float = 1e-4,
    patience: int = 25,
    tolerance: float = 1e-4,
    relayout_every: int = 100,
    refine: int = 1,
    time_limit: float | None = None,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = 1,
    cuda_graph: bool = True,
    optical_depth: bool | None = None,
    max_optical_depth: float = 20.0,
    broad_lines: bool | None = None,
    broad_fwhm_kms: float = 200.0,
    wing_correction: bool = False,
) -> CloneResult:
    """Clone a synthetic spectrum into a trained forest of pseudo-Voigt lines.

    Parameters
    ----------
    wavelength : astropy.units.Quantity or array_like, Template or specutils.Spectrum
        Native wavelength grid (any spectral unit as a Quantity, else Å); strictly
        increasing, finite. Or, with ``flux`` left out, the synthetic spectrum itself: a
        :class:`~blase_specutils.astro.templates.Template` (from ``read_template``) or a
        specutils ``Spectrum`` (its good pixels, in vacuum).
    flux : astropy.units.Quantity or array_like, optional
        Flux at native resolution (any unit; non-negative, finite).
    prominence : float
        Line-finding prominence threshold in continuum units, in (0, 1).
    teff : float, optional
        Effective temperature, K: divide by a black body before the continuum fit.
    flatten : bool, optional
        Flatten the continuum. Default: True, except for a ``Template`` of kind
        ``"telluric"`` (a transmission is already at 1).
    device : {"auto", "cpu", "cuda"} or torch.device
        Where to train.
    dtype : torch.dtype
        float32 (default; offsets are formed in float64 so this is safe) or float64.
    mode : {"linear", "log"}
        ∏(1 − aV) or exp(−Σ aV).
    profile : {"pseudo_voigt", "voigt"}
        Line shape.
    trainable : iterable of str
        Which of "center", "amplitude", "sigma", "gamma" train. Centres train by default
        (sub-pixel moves, learning rate scaled to mÅ): on the PHOENIX Y band this lowers the
        native-resolution RMS from 0.94 % to 0.74 % and removes a 15–30 m/s RV bias that
        blended, asymmetric features otherwise leave in transfer learning. Pass
        ``("amplitude", "sigma", "gamma")`` for the published setting.
    emission : bool
        Also find emission lines (peaks above the continuum).
    epochs : int
        Maximum training epochs.
    learning_rate : float
        Adam step size on ln a, ln σ, ln γ (and Å on centres).
    optimizer : {"adam", "lbfgs"}
        Optimiser.
    rtol, patience : float, int
        Stop when the loss improved by less than ``rtol`` over ``patience`` epochs.
    tolerance : float
        Wing truncation tolerance of the sparse windows (continuum units).
    relayout_every : int
        Re-size windows from the current widths every this many epochs.
    refine : int
        Refinement passes after training: each adds a line at every dip of the target
        at least ``prominence`` below the trained model (lines on the shoulder of a
        stronger one, which prominence cannot find; see :func:`residual_lines`) and
        trains again for ``epochs // 2``. 0 for the published algorithm.
    time_limit : float, optional
        Stop training after this many seconds (all passes together).
    seed : int
        Random seed (training is deterministic on CPU for a given seed).
    progress : bool
        Show a progress bar.
    num_threads : int or None
        CPU threads while training (``None``: torch's setting); see
        :func:`blase_specutils.core.train.optimize`.
    cuda_graph : bool
        On a CUDA device, replay each training step as a captured CUDA graph (re-captured
        after every re-layout); no effect on CPU.
    optical_depth : bool, optional
        Clone a saturated transmission on its optical depth: find lines as peaks of
        ``τ = −ln max(T, exp(−max_optical_depth))`` (prominence in units of τ; see
        :func:`~blase_specutils.prep.linefind.find_optical_depth_lines`), start each line
        from the optical depth it adds, and train the log-flux forest ``exp(−Σ aV)``
        (``mode`` is then ``"log"`` whatever it says) on the same loss as always, the
        squared residual of the transmission. Prominence on the transmission finds nothing
        inside a trough of saturated lines, and the product ``∏(1 − aV)`` has to push
        ``aV`` to its clip there: on muler's PSG ``Total`` over 17,500–18,200 Å (45 % of
        the pixels below 1 %) the flux search leaves an RMS of 31 % and residuals of 1.0,
        this one 0.30 % and 0.042 (H₂O: 19 % → 0.21 %; see
        ``benchmarks/bench_telluric_clone.py``). Beyond both ends the spectrum counts as
        transparent, so a trough that runs off the edge is a line too. Default (None):
        True when the spectrum is not flattened (a telluric ``Template``, or
        ``flatten=False``) and its minimum is below :data:`SATURATED_TRANSMISSION` (1 %);
        flattened (stellar) spectra keep the prominence search on the flux.
    max_optical_depth : float
        The optical depth the transmission is floored at for ``optical_depth`` (> 0; 20
        means ``T ≥ 2e-9``): deeper cores are cut flat. Lower, a trough of blended lines
        flattens into a few broad lines and the clone degrades (PSG band above: 0.30 % RMS
        at 20 and 40, 0.49 % at 10, 7.5 % at 6).
    broad_lines : bool, optional
        Treat the spectrum as one with broad lines (the hydrogen lines of an A star):
        flatten with the upper envelope of the continuum anchors (``method="envelope"`` of
        :func:`~blase_specutils.prep.continuum.flatten_continuum`, of the low order of
        :func:`envelope_poly_order`) instead of the robust fit, whose continuum runs through the
        middle of wings that cover most of the anchor windows, and let line windows grow
        to the whole cloned range (:attr:`LineForest.max_half_width`) so Lorentzian wings
        are never cut off. Default (None): True when the first line search, on the usual
        flattening, finds a line broader than ``broad_fwhm_kms`` and at least
        :data:`BROAD_MIN_DEPTH` (2 %) deep, and the spectrum is flattened (a stellar
        model, not a transmission). On the PHOENIX 10,000 K model over HPF order 5
        (8626–8798 Å, Paschen 12 to 14) the RMS falls from 3.5 % to 0.2 %; see
        ``benchmarks/bench_broad_hydrogen.py``. False: the behaviour before.
    broad_fwhm_kms : float
        FWHM above which a found line counts as broad, km/s (> 0).
    wing_correction : bool
        With ``broad_lines``, give each broad line the wing correction of the method
        paper's Appendix C.4 (:meth:`LineForest.set_wings`: ``V · G``, ``G`` going from 1 in
        the core to ``e^α`` in the far wings, starting at ``α = 0``, ``λt`` = one FWHM, ``b``
        = half of one) and train ``α``, ``λt``, ``b`` with the other parameters. Off by
        default: on PHOENIX 10,000 K it changes little once the continuum is the envelope
        (8626–8798 Å: 0.24 % RMS either way, Paschen 14 0.22 % → 0.11 %; 9903–10091 Å:
        0.26 % → 0.29 %), so the shape of the pseudo-Voigt is not what limits these clones.

    Returns
    -------
    CloneResult
    """
    if isinstance(refine, (bool, np.bool_)) or not isinstance(refine, (int, np.integer)):
        raise ValueError(f"refine must be a non-negative integer, got {refine!r}")
    if refine < 0:
        raise ValueError(f"refine must be a non-negative integer, got {refine!r}")
    if not (isinstance(tolerance, (int, float, np.floating)) and 0 < tolerance < 1):
        raise ValueError(f"tolerance must be in (0, 1) (continuum units), got {tolerance!r}")
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    numbers = check_numbers(
        {
            "prominence": prominence,
            "tolerance": tolerance,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "rtol": rtol,
            "patience": patience,
            "relayout_every": relayout_every,
            "refine": refine,
            "time_limit": time_limit,
            "seed": seed,
            "num_threads": num_threads,
            "max_optical_depth": max_optical_depth,
        },
        CLONE_NUMBERS,
    )
    prominence, tolerance, learning_rate = (
        numbers["prominence"],
        numbers["tolerance"],
        numbers["learning_rate"],
    )
    rtol, time_limit, max_optical_depth = (
        numbers["rtol"],
        numbers["time_limit"],
        numbers["max_optical_depth"],
    )
    for name in ("emission", "progress", "cuda_graph"):
        check_flag(locals()[name], name)
    if flatten is not None:
        check_flag(flatten, "flatten")
    if flux is None and isinstance(wavelength, Template):
        if flatten is None:
            flatten = wavelength.kind != "telluric"
        wavelength, flux = wavelength.wavelength, wavelength.flux
    flatten = True if flatten is None else bool(flatten)
    if flux is None:
        orders = unpack_spectra(wavelength, None, None, None, "clone")
        if len(orders[0]) != 1:
            raise ValueError(
                f"clone takes one spectrum, got {len(orders[0])} orders "
                "(clone a synthetic spectrum, or one order)"
            )
        (wavelength,), (flux,), _, (good,), _ = orders
        wavelength, flux = wavelength[good], flux[good]
    if (n_masked(wavelength) or n_masked(flux)) and np.shape(wavelength) == np.shape(flux):
        # numpy masked arrays: the masked samples are dropped (as a spectrum's bad pixels)
        keep = ~(np.ma.getmaskarray(wavelength) | np.ma.getmaskarray(flux))
        wavelength, flux = np.ma.getdata(wavelength[keep]), np.ma.getdata(flux[keep])
    wl, reversed_axis = ascending_angstrom(wavelength, "wavelength")
    flux_unit = flux.unit.to_string() if isinstance(flux, u.Quantity) else ""
    fl = as_flux_array(flux, "flux", size=wl.size)
    if reversed_axis:  # an increasing frequency or wavenumber axis
        fl = fl[::-1].copy()
    check_grid(wl, min_size=16)
    if np.any(fl < 0):
        raise ValueError(
            f"flux has {int(np.sum(fl < 0))} negative values; "
            "a synthetic spectrum must be non-negative"
        )
    if not 0 < prominence < 1:
        raise ValueError(f"prominence must be in (0, 1), got {prominence}")
    teff = _check_teff(teff, wl)
    if mode not in ("linear", "log"):
        raise ValueError(f"mode must be 'linear' or 'log', not {mode!r}")
    check_flag(wing_correction, "wing_correction")
    if broad_lines is not None and not isinstance(broad_lines, (bool, np.bool_)):
        raise ValueError(f"broad_lines must be True, False or None, got {broad_lines!r}")
    if (
        isinstance(broad_fwhm_kms, (bool, np.bool_))
        or not isinstance(broad_fwhm_kms, (int, float, np.number))
        or not (np.isfinite(broad_fwhm_kms) and broad_fwhm_kms > 0)
    ):
        raise ValueError(f"broad_fwhm_kms must be a FWHM in km/s > 0, got {broad_fwhm_kms!r}")
    torch.manual_seed(seed)
    dev = resolve_device(device)
    span = float(wl[-1] - wl[0])

    def flattened(method: str) -> tuple[np.ndarray, np.ndarray]:
        if not flatten:
            return fl.copy(), np.ones_like(fl)
        order = envelope_poly_order(span) if method == "envelope" else None
        cont = flatten_continuum(wl, fl, teff=teff, method=method, poly_order=order)
        return np.asarray(cont.flat_flux), np.asarray(cont.continuum)

    target, continuum = flattened("peaks")
    on_optical_depth = _use_optical_depth(optical_depth, flatten, target, max_optical_depth)

    def search(target: np.ndarray):
        if on_optical_depth:
            return find_optical_depth_lines(
                wl, target, prominence=prominence, max_optical_depth=max_optical_depth
            )
        return find_lines(wl, target, prominence=prominence)

    if on_optical_depth:
        mode = "log"  # exp(−Σ aV) holds a saturated core; ∏(1 − aV) clips there
    found = search(target)
    n_broad = _count_broad(found, broad_fwhm_kms)
    if broad_lines is None:  # stellar spectra only: a telluric clone keeps its windows
        broad_lines = flatten and n_broad > 0
    if broad_lines and flatten:
        # the robust continuum runs through broad wings: take the upper envelope instead
        target, continuum = flattened("envelope")
        found = search(target)
        n_broad = _count_broad(found, broad_fwhm_kms)
    too_wide = np.nonzero(2.0 * np.asarray(found.fwhm) > span)[0]
    if too_wide.size:
        k = int(too_wide[np.argmax(np.asarray(found.fwhm)[too_wide])])
        raise ValueError(
            f"the spectrum spans only {span:.4g} Å, narrower than the window of the line at "
            f"{found.center[k]:.3f} Å (FWHM {found.fwhm[k]:.3g} Å, window ≥ 2 FWHM): "
            "clone a wider range"
        )
    center = np.asarray(found.center)
    depth = np.asarray(found.depth)
    fwhm = np.asarray(found.fwhm)
    is_emission = np.zeros(center.size, dtype=bool)
    if emission:
        # Emission lines are measured against the continuum alone: with the absorption
        # lines cut off at 1, the stretches of continuum between them are no longer peaks
        # (prominent against the troughs beside them) and an emission line's width is
        # taken at half its height above the continuum, not half the depth of a trough.
        try:
            up = find_lines(wl, 2.0 - np.maximum(target, 1.0), prominence=prominence)
        except ValueError:
            up = None
        if up is not None:
            rises = np.asarray(up.depth) >= prominence
            center = np.concatenate([center, np.asarray(up.center)[rises]])
            depth = np.concatenate([depth, np.asarray(up.depth)[rises]])
            fwhm = np.concatenate([fwhm, np.asarray(up.fwhm)[rises]])
            is_emission = np.concatenate([is_emission, np.ones(int(rises.sum()), bool)])
            order = np.argsort(center)
            center, depth, fwhm, is_emission = (
                center[order],
                depth[order],
                fwhm[order],
                is_emission[order],
            )
    step = np.gradient(wl)
    fwhm = np.maximum(fwhm, 2.0 * np.interp(center, wl, step))
    amplitude, sigma, gamma = initial_line_parameters(depth, fwhm, mode=mode)
    forest = LineForest(
        center,
        amplitude,
        sigma,
        gamma,
        emission=is_emission,
        mode=mode,
        profile=profile,
        trainable=trainable,
        dtype=dtype,
        device=dev,
    )
    if broad_lines:  # windows may reach across the whole range: no wing is cut off
        forest.max_half_width = max(span, forest.max_half_width)
        broad = _broad_mask(center, fwhm, depth, broad_fwhm_kms)
        if wing_correction and broad.any():
            trainable = (*forest.trainable, "wing")
            forest.set_trainable(trainable)
            forest.set_wings(broad, alpha=0.0, offset=fwhm, scale=0.5 * fwhm)
    initial = _starting_values(center, amplitude, sigma, gamma, fwhm, depth, found_in_pass=0)
    target_t = torch.as_tensor(target, dtype=dtype, device=dev)

    started = time.perf_counter()

    def train(forest: LineForest, epochs: int, description: str) -> TrainingHistory:
        state = {"layout": forest.make_layout(wl, tolerance=tolerance)}

        def loss_fn():
            return torch.mean((forest(state["layout"]) - target_t) ** 2)

        def after_step(epoch: int) -> None:
            forest.clamp_()
            if relayout_every and epoch % relayout_every == 0:
                state["layout"] = forest.make_layout(wl, tolerance=tolerance)

        groups = [
            {"params": [p], "lr": learning_rate * (0.05 if name == "center_shift" else 1.0)}
            for name, p in forest.named_parameters()
            if p.requires_grad
        ]
        return optimize(
            forest,
            loss_fn,
            epochs=epochs,
            learning_rate=learning_rate,
            param_groups=groups,
            optimizer=optimizer,
            rtol=rtol,
            patience=patience,
            progress=progress,
            description=description,
            after_step=after_step,
            # one budget for all passes
            time_limit=None if time_limit is None else time_limit - elapsed(),
            num_threads=num_threads,
            cuda_graph=cuda_graph,
            graph_key=lambda: id(state["layout"]),
        )

    def elapsed() -> float:
        return time.perf_counter() - started

    def model_on_grid(forest: LineForest) -> np.ndarray:
        with torch.no_grad():
            layout = forest.make_layout(wl, tolerance=tolerance)
            return forest(layout).double().cpu().numpy()

    history = TrainingHistory()
    added = []
    if epochs > 0:
        history = train(forest, epochs, f"cloning {forest.n_lines} lines")
        for refinement in range(1, refine + 1):
            if history.stop_reason == "time_limit":
                break
            model = model_on_grid(forest)
            new_center, new_depth, new_fwhm = residual_lines(
                wl, target, model, forest.line_properties()["center"], prominence=prominence
            )
            if new_center.size == 0:
                break
            new_fwhm = np.maximum(new_fwhm, 2.0 * np.interp(new_center, wl, step))
            forest, initial = _with_lines(
                forest, initial, new_center, new_depth, new_fwhm, trainable, dev, refinement
            )
            added.append(int(new_center.size))
            more = train(
                forest,
                max(epochs // 2, 1),
                f"cloning {forest.n_lines} lines (+{new_center.size} from the residual)",
            )
            history = TrainingHistory(
                loss=history.loss + more.loss,
                epochs=history.epochs + more.epochs,
                wall_time=history.wall_time + more.wall_time,
                stop_reason=more.stop_reason,
            )
    meta = {
        "prominence": float(prominence),
        "teff": None if teff is None else float(teff),
        "flattened": bool(flatten),
        "wavelength_min": float(wl[0]),
        "wavelength_max": float(wl[-1]),
        "n_pixels": int(wl.size),
        "tolerance": float(tolerance),
        "seed": int(seed),
        # the unit of the input flux (and of `continuum`); "" when none was given
        "flux_unit": flux_unit,
        # lines added by each refinement pass (dips of the target below the model)
        "lines_added": added,
        # lines found on τ = −ln T and trained in log mode (saturated transmissions)
        "optical_depth": bool(on_optical_depth),
        "max_optical_depth": float(max_optical_depth) if on_optical_depth else None,
        # broad lines (FWHM > broad_fwhm_kms, >= BROAD_MIN_DEPTH deep) and their handling
        "broad_lines": bool(broad_lines),
        "n_broad_lines": int(n_broad),
        "broad_fwhm_kms": float(broad_fwhm_kms),
        "continuum_method": ("envelope" if broad_lines else "peaks") if flatten else "none",
        "wing_correction": bool(forest.has_wings),
    }
    result = CloneResult(forest, wl, target, continuum, history, initial, meta)
    result._model_flux = model_on_grid(forest)
    return result


def _broad_mask(center, fwhm, depth, broad_fwhm_kms: float) -> np.ndarray:
    """Which lines are broad: FWHM > ``broad_fwhm_kms`` and depth >= 2 %."""
    fwhm_kms = np.asarray(fwhm, dtype=np.float64) / np.asarray(center) * SPEED_OF_LIGHT_KMS
    return (fwhm_kms > broad_fwhm_kms) & (np.asarray(depth) >= BROAD_MIN_DEPTH)


def _count_broad(found, broad_fwhm_kms: float) -> int:
    """How many found lines are broad (:func:`_broad_mask`)."""
    return int(np.sum(_broad_mask(found.center, found.fwhm, found.depth, broad_fwhm_kms)))


def _use_optical_depth(optical_depth, flatten: bool, target: np.ndarray, max_depth) -> bool:
    """Whether to clone on the optical depth (see ``optical_depth`` in :func:`clone`)."""
    if optical_depth is None:
        optical_depth = (not flatten) and float(np.min(target)) < SATURATED_TRANSMISSION
    elif not isinstance(optical_depth, (bool, np.bool_)):
        raise ValueError(f"optical_depth must be True, False or None, got {optical_depth!r}")
    if optical_depth and not (
        isinstance(max_depth, (int, float, np.number))
        and not isinstance(max_depth, (bool, np.bool_))
        and np.isfinite(max_depth)
        and max_depth > 0
    ):
        raise ValueError(
            f"max_optical_depth must be a finite optical depth > 0 (e.g. 20), got {max_depth!r}"
        )
    return bool(optical_depth)


def _with_lines(forest, initial, center, depth, fwhm, trainable, device, refinement):
    """A new forest: the trained lines of ``forest`` plus new ones, sorted by centre.

    The trained lines keep their current properties (centres at their trained position);
    the new ones start from their measured depth and width like the first search's. The
    ``initial`` table of starting values grows with them, the new lines marked as found
    in pass ``refinement``.
    """
    now = forest.line_properties()
    amplitude, sigma, gamma = initial_line_parameters(depth, fwhm, mode=forest.mode)
    merged = {
        "center": np.concatenate([now["center"], center]),
        "amplitude": np.concatenate([now["amplitude"], amplitude]),
        "sigma": np.concatenate([now["sigma"], sigma]),
        "gamma": np.concatenate([now["gamma"], gamma]),
        "emission": np.concatenate([now["emission"], np.zeros(center.size, bool)]),
    }
    order = np.argsort(merged["center"], kind="stable")
    grown = LineForest(
        merged["center"][order],
        merged["amplitude"][order],
        merged["sigma"][order],
        merged["gamma"][order],
        emission=merged["emission"][order],
        mode=forest.mode,
        profile=forest.profile,
        trainable=trainable,
        dtype=forest.dtype,
        device=device,
    )
    grown.relativistic = forest.relativistic
    grown.max_half_width = forest.max_half_width
    # where each trained line went in the sorted forest
    forest.copy_wings_into(grown, np.argsort(order)[: forest.n_lines])
    fresh = _starting_values(center, amplitude, sigma, gamma, fwhm, depth, refinement)
    initial = {k: np.concatenate([initial[k], fresh[k]])[order] for k in initial}
    return grown, initial


def _starting_values(center, amplitude, sigma, gamma, fwhm, depth, found_in_pass: int) -> dict:
    """A clone's ``initial`` table for new lines: where training started (Å; depth
    dimensionless) and the pass that found them (0: prominence; k: k-th refinement)."""
    return {
        "center": center,
        "amplitude": amplitude,
        "sigma": sigma,
        "gamma": gamma,
        "fwhm": fwhm,
        "depth": depth,
        "found_in_pass": np.full(np.size(center), found_in_pass, dtype=np.int64),
    }


def clone_molecules(
    path_or_name="psg",
    molecules=None,
    *,
    wavelength_range=None,
    min_absorption: float = 1e-3,
    **clone_options,
) -> dict[str, CloneResult]:
    """Clone each molecule of a NASA PSG transmittance file: a telluric model by molecule.

    Each molecule's transmission (a column read by
    :func:`~blase_specutils.astro.templates.read_psg`) is cloned on its own with
    :func:`clone` (not flattened; saturated ones on their optical depth), so that
    ``fit(..., telluric=clone_molecules(...))`` fits one optical-depth scale per molecule
    (``∏_m T_m^{s_m}``): water and O₂ (or CH₄ and CO₂) columns vary independently.

    Parameters
    ----------
    path_or_name : str or os.PathLike
        A PSG file, or muler's packaged one (``"psg"``, the default).
    molecules : str or sequence of str, optional
        Columns to clone; default every column but :data:`PSG_NON_MOLECULES` (``Total``,
        ``Rayleigh``, ``CIA``).
    wavelength_range : (float, float) or astropy.units.Quantity, optional
        Range to clone, Å (vacuum) when plain numbers; default the whole file.
    min_absorption : float
        A molecule whose deepest absorption in the range is below this (its minimum
        transmission above ``1 − min_absorption``; 0.999 by default) is skipped: it has no
        lines worth a scale. In [0, 1).
    **clone_options
        Passed to :func:`clone` (``prominence``, ``epochs``, ``device``, ``progress`` …);
        ``flatten`` is always False (a transmission is at 1 already).

    Returns
    -------
    dict of str to CloneResult
        One clone per molecule kept, in the file's column order; each clone's
        ``meta["molecule"]`` names it and ``meta["min_transmission"]`` is the deepest
        transmission in the range.

    Raises
    ------
    ValueError
        If ``min_absorption`` is not in [0, 1), a molecule is not in the file, or no
        molecule absorbs more than ``min_absorption`` in the range (the message gives
        each one's deepest absorption).
    """
    if "flatten" in clone_options:
        raise TypeError("clone_molecules always clones unflattened transmissions: no flatten")
    threshold = float(min_absorption)
    if not (0.0 <= threshold < 1.0):
        raise ValueError(f"min_absorption must be in [0, 1), got {min_absorption}")
    if isinstance(wavelength_range, u.Quantity):
        wavelength_range = tuple(
            wavelength_range.to_value(u.AA, equivalencies=u.spectral()).tolist()
        )
    wavelength, columns = read_psg(path_or_name, molecules, wavelength_range=wavelength_range)
    if molecules is None:
        columns = {k: v for k, v in columns.items() if k not in PSG_NON_MOLECULES}
    depths = {name: float(1.0 - np.min(t)) if t.size else 0.0 for name, t in columns.items()}
    kept = [name for name, depth in depths.items() if depth > threshold]
    if not kept:
        listed = ", ".join(f"{name} {depth:.2g}" for name, depth in depths.items())
        raise ValueError(
            f"no molecule absorbs more than min_absorption = {threshold:g} in this range "
            f"(deepest absorption: {listed or 'no columns'})"
        )
    # a molecule shallower than the line finder's prominence has no line to find
    prominence = float(clone_options.get("prominence", inspect.signature(clone).parameters[
        "prominence"].default))  # fmt: skip
    out, skipped = {}, {}
    for name in kept:
        if depths[name] < prominence:
            skipped[name] = depths[name]
            continue
        result = clone(wavelength, columns[name], flatten=False, **clone_options)
        result.meta["molecule"] = name
        result.meta["min_transmission"] = float(np.min(columns[name]))
        out[name] = result
    if skipped:
        listed = ", ".join(f"{name} {depth:.2g}" for name, depth in skipped.items())
        message = (
            f"molecules absorbing less than the clone's prominence {prominence:g} have no "
            f"lines to find and are left out (deepest absorption: {listed})"
        )
        if not out:
            raise ValueError(message + "; lower prominence to clone them")
        warnings.warn(message, UserWarning, stacklevel=2)
    return out
