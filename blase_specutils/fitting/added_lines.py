"""Lines from a user list (paper §8.4): lines the clone lacks, inserted into the forest.

``fit(..., add_lines=table)`` reads the rest-frame vacuum wavelengths (and optional
``label`` / ``species``) of lines the template does not have, refuses lines outside the
data or within a resolution element of another line, and appends them to a copy of the
stellar forest. Each starts shallow (single-line depth :data:`START_DEPTH`) with the
median σ and γ of its nearest clone lines, and its amplitude learns in the line stage
with its neighbours. The L1 prior on Δ ln a is not applied to added lines: it pulls ln a
back to its start, which for an added line is an arbitrary tiny value, so a real line
would pay a penalty for every e-fold it grows; without it, an added line's amplitude is
set by the data alone (an unsupported one stays near zero, its σ from the Fisher matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import astropy.units as u
import numpy as np
import torch
from astropy.table import Table

from ..core.lineforest import LineForest
from ..core.profiles import pseudo_voigt_peak

__all__ = ["AddedLines", "START_DEPTH", "N_NEIGHBOURS", "read_added_lines", "insert_lines"]

C_KMS = 299792.458
#: Single-line depth at which an added line starts.
START_DEPTH = 1e-3
#: Clone lines whose median σ and γ an added line starts with.
N_NEIGHBOURS = 10


@dataclass
class AddedLines:
    """The checked user list: rest-frame vacuum wavelengths (Å), labels and species."""

    wavelength: np.ndarray
    label: list
    species: list
    has_label: bool
    has_species: bool


def read_added_lines(add_lines) -> AddedLines:
    """Check ``add_lines`` (a Table/QTable with a ``wavelength`` column, or a Quantity).

    Raises
    ------
    TypeError
        For plain numbers (no length unit), or anything but a table or a Quantity.
    ValueError
        For a table without a ``wavelength`` column, an empty list, or non-finite values.
    """
    labels = species = None
    if isinstance(add_lines, Table):
        if "wavelength" not in add_lines.colnames:
            raise ValueError(
                "add_lines needs a 'wavelength' column (vacuum, with a length unit); it has "
                f"{add_lines.colnames}"
            )
        column = add_lines["wavelength"]
        unit = getattr(column, "unit", None)
        if unit is None:
            raise TypeError(
                "add_lines['wavelength'] has no unit: give it a length unit (e.g. u.AA)"
            )
        wavelength = u.Quantity(column, unit, copy=True)
        if "label" in add_lines.colnames:
            labels = [str(v) for v in add_lines["label"]]
        if "species" in add_lines.colnames:
            species = [str(v) for v in add_lines["species"]]
    elif isinstance(add_lines, u.Quantity):
        wavelength = add_lines
    else:
        raise TypeError(
            "add_lines must be an astropy QTable with a 'wavelength' column (a length "
            f"Quantity) or a length Quantity, not {type(add_lines).__name__} (plain numbers "
            "have no wavelength unit)"
        )
    if not wavelength.unit.is_equivalent(u.AA):
        raise TypeError(f"add_lines wavelengths must have a length unit, not {wavelength.unit}")
    values = np.atleast_1d(wavelength.to_value(u.AA)).astype(np.float64).ravel()
    if values.size == 0:
        raise ValueError("add_lines is empty")
    if not np.all(np.isfinite(values)):
        raise ValueError("add_lines wavelengths must be finite")
    n = values.size
    return AddedLines(
        wavelength=values,
        label=labels if labels is not None else [""] * n,
        species=species if species is not None else [""] * n,
        has_label=labels is not None,
        has_species=species is not None,
    )


def _describe(added: AddedLines, i: int) -> str:
    name = added.label[i] or added.species[i]
    return f"{added.wavelength[i]:.3f} Å" + (f" ({name})" if name else "")


def insert_lines(
    forest: LineForest,
    added: AddedLines,
    orders,
    *,
    rv: float,
    resolving_power: float,
) -> LineForest:
    """A new forest: ``forest``'s lines (parameters copied exactly) then the added ones.

    Parameters
    ----------
    forest : LineForest
        The stellar clone (not modified).
    added : AddedLines
        From :func:`read_added_lines`.
    orders : list
        The fit's orders (``wavelength`` and ``good`` arrays): every added line, Doppler
        shifted by ``rv``, must fall within the good pixels of one of them.
    rv : float
        Velocity (km/s) at which the range is checked (the fit's initial RV).
    resolving_power : float
        R: lines closer than c/R to a clone line or to each other are refused.

    Raises
    ------
    ValueError
        An added line outside the data, or within a resolution element of another line.
    """
    wl = added.wavelength
    observed = wl * (1.0 + rv / C_KMS)
    for i, w in enumerate(observed):
        inside = any(
            o.good.any()
            and o.wavelength[o.good].min() <= w <= o.wavelength[o.good].max()
            for o in orders
        )
        if not inside:
            spans = ", ".join(
                f"{o.wavelength[o.good].min():.2f}–{o.wavelength[o.good].max():.2f} Å"
                for o in orders
                if o.good.any()
            )
            raise ValueError(
                f"add_lines: the line at {_describe(added, i)} (observed at {w:.3f} Å for "
                f"rv = {rv:g} km/s) lies outside the data ({spans})"
            )
    with torch.no_grad():
        centres = (forest.center_ref + forest.center_shift.double()).cpu().numpy()
        sigma = torch.exp(forest.ln_sigma.double()).cpu().numpy()
        gamma = torch.exp(forest.ln_gamma.double()).cpu().numpy()
    element = wl / resolving_power  # c/R in wavelength
    for i in range(wl.size):
        gap = np.abs(centres - wl[i])
        j = int(np.argmin(gap))
        if gap[j] < element[i]:
            raise ValueError(
                f"add_lines: the line at {_describe(added, i)} is {gap[j]:.4f} Å from the "
                f"clone line at {centres[j]:.4f} Å, within a resolution element "
                f"(λ/R = {element[i]:.4f} Å at R = {resolving_power:g}): it duplicates it"
            )
        for k in range(i):
            if abs(wl[k] - wl[i]) < element[i]:
                raise ValueError(
                    f"add_lines: the lines at {_describe(added, k)} and "
                    f"{_describe(added, i)} lie within a resolution element "
                    f"(λ/R = {element[i]:.4f} Å at R = {resolving_power:g}) of each other"
                )
    n_near = min(N_NEIGHBOURS, centres.size)
    new_sigma = np.empty(wl.size)
    new_gamma = np.empty(wl.size)
    for i in range(wl.size):
        near = np.argsort(np.abs(centres - wl[i]), kind="stable")[:n_near]
        new_sigma[i] = np.median(sigma[near])
        new_gamma[i] = np.median(gamma[near])
    peak = pseudo_voigt_peak(
        torch.as_tensor(new_sigma, dtype=torch.float64),
        torch.as_tensor(new_gamma, dtype=torch.float64),
    ).numpy()
    new_amplitude = START_DEPTH / peak
    n = forest.n_lines
    with torch.no_grad():
        emission = (forest.sign < 0).cpu().numpy()
        grown = LineForest(
            np.concatenate([forest.center_ref.cpu().numpy(), wl]),
            np.concatenate([torch.exp(forest.ln_amplitude.double()).cpu().numpy(), new_amplitude]),
            np.concatenate([sigma, new_sigma]),
            np.concatenate([gamma, new_gamma]),
            emission=np.concatenate([emission, np.zeros(wl.size, bool)]),
            mode=forest.mode,
            profile=forest.profile,
            trainable=forest.trainable,
            dtype=forest.dtype,
            device=forest.ln_amplitude.device,
        )
        # the clone's lines exactly as they were (no exp/log round trip)
        for name in ("center_shift", "ln_amplitude", "ln_sigma", "ln_gamma"):
            getattr(grown, name)[:n] = getattr(forest, name)
        grown.center_ref[:n] = forest.center_ref
    grown.relativistic = forest.relativistic
    grown.max_half_width = forest.max_half_width
    forest.copy_wings_into(grown, np.arange(n))
    return grown


def grown_initial(initial: dict | None, grown: LineForest, n_clone: int) -> dict | None:
    """A clone's ``initial`` per-line arrays extended over the added lines: their starting
    values where the forest has them, ``found_in_pass`` −1 (no pass found them), else NaN."""
    if initial is None:
        return None
    props = grown.line_properties()
    n_added = grown.n_lines - n_clone
    out = {}
    for key, value in initial.items():
        array = np.asarray(value)
        if array.shape != (n_clone,):
            out[key] = value
            continue
        if key in props:
            extra = props[key][n_clone:]
        elif key == "found_in_pass":
            extra = np.full(n_added, -1)
        else:
            extra = np.full(n_added, np.nan)
        unit = getattr(value, "unit", None)
        if unit is not None:
            out[key] = np.concatenate([u.Quantity(value).value, extra]) * unit
        else:
            out[key] = np.concatenate([array, np.asarray(extra, dtype=array.dtype)])
    return out
