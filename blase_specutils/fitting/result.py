"""The result of :func:`blase_specutils.fit`: one class, with flags saying when to distrust it."""

from __future__ import annotations

from dataclasses import dataclass, field

import astropy.units as u
import numpy as np
import torch

from ..cloning import CloneResult
from ..core.forward import ForwardModel
from ..core.lineforest import SPEED_OF_LIGHT_KMS, LineForest
from ..core.train import TrainingHistory
from .options import KMS

C_KMS = SPEED_OF_LIGHT_KMS


class FitQualityWarning(UserWarning):
    """The fit may be wrong: see ``result.flags`` for the reasons."""


@dataclass
class FitResult:
    """Result of :func:`fit`.

    Attributes
    ----------
    rv, vsini : `~astropy.units.Quantity`
        Radial velocity and projected rotational velocity (km/s). Plain floats given to
        the constructor are taken as km/s; ``result.rv.to_value("km/s")`` gives a float.
    resolving_power, limb_darkening : `~astropy.units.Quantity`
        Instrumental resolving power and linear limb darkening (dimensionless, so they
        also work as plain numbers: ``float(result.resolving_power)``).
    rv_uncertainty, vsini_uncertainty, resolving_power_uncertainty : `~astropy.units.Quantity`
        Their 1-σ uncertainties, in the same units (NaN when held fixed or undefined).
    uncertainties : dict
        1-σ uncertainties of every global parameter as plain floats in the units of
        :attr:`parameters` (km/s for velocities; NaN if not fitted), from
        the curvature of χ² multiplied by the Birge ratio ``√max(1, χ²_red)``: a fit that
        leaves more scatter than the data's uncertainties allow (a template mismatch,
        underestimated noise) gets proportionally larger error bars instead of the
        photon-noise ones (WASP 69, χ²_red ≈ 40: ×6). The unscaled values are in
        ``meta["curvature_uncertainties"]``, the factor in ``meta["uncertainty_scale"]``.
    chi2_reduced : float
        χ² per degree of freedom at the end of the fit.
    forward_model : ForwardModel
        The trained torch forward model.
    template : CloneResult
        The transfer-learned stellar clone at native resolution (no RV, rotation or
        instrument), savable like any clone.
    initial_chi2_reduced : float
        χ² per pixel after the RV search, before any training.
    meta : dict
        How the fit ran: ``n_good_pixels``, ``prior_scale``, ``prior_weight``,
        ``trainable``, ``step_kms``, ``continuum_degree`` (the Chebyshev degree used,
        chosen or given: ``continuum_degree_source`` is ``"auto"`` or ``"given"``),
        ``resolving_power_source`` (``"given"``,
        ``"nominal for <instrument>"`` or ``"default"``), ``n_clipped`` (pixels masked by
        ``clip_sigma``), ``order_indices`` (input orders fitted, see ``outside``),
        ``uncertainty_scale`` and ``curvature_uncertainties`` (see ``uncertainties``),
        ``rest_frame_outside_fraction`` (good pixels outside the stellar clone's range in
        the star's rest frame at the final RV; above 5 % a warning says so).
    """

    rv: float
    vsini: float
    resolving_power: float
    limb_darkening: float
    uncertainties: dict
    chi2_reduced: float
    forward_model: ForwardModel
    template: CloneResult
    order_data: list = field(repr=False, default_factory=list)
    history: TrainingHistory = field(repr=False, default_factory=TrainingHistory)
    telluric: LineForest | None = field(repr=False, default=None)
    initial_chi2_reduced: float = float("nan")
    meta: dict = field(default_factory=dict)
    stellar_clone: CloneResult | LineForest | None = field(repr=False, default=None)
    flags: dict = field(default_factory=dict)
    #: Per line of the template: σ of ln a from the Fisher matrix with the globals and the
    #: continua marginalised, Birge-scaled (NaN for lines the L1 prior held at the clone's).
    line_ln_amplitude_uncertainty: np.ndarray | None = field(repr=False, default=None)
    #: Per line of the template: its own velocity (km/s, the fit's RV plus the line's
    #: trained centre shift plus a line-by-line template-matching step) and its error
    #: (NaN for lines outside the data or shallower than 1 %).
    line_velocity: np.ndarray | None = field(repr=False, default=None)
    line_velocity_uncertainty: np.ndarray | None = field(repr=False, default=None)

    def __post_init__(self) -> None:
        # Quantities at the astropy boundary; a Quantity given is converted, a float is
        # taken in the documented unit.
        self.rv = u.Quantity(self.rv, KMS, dtype=float)
        self.vsini = u.Quantity(self.vsini, KMS, dtype=float)
        self.resolving_power = u.Quantity(self.resolving_power, u.one, dtype=float)
        self.limb_darkening = u.Quantity(self.limb_darkening, u.one, dtype=float)

    @property
    def line_by_line_rv(self) -> u.Quantity:
        """The line-by-line RV: the robust weighted mean of the lines' own velocities
        (``line_table["velocity"]``), km/s; its error, the number of lines kept and
        rejected and their χ²_red are in ``meta["line_by_line_rv"]``."""
        return u.Quantity((self.meta.get("line_by_line_rv") or {}).get("rv", np.nan), KMS)

    @property
    def line_by_line_rv_uncertainty(self) -> u.Quantity:
        """1-σ error of :attr:`line_by_line_rv`, km/s (χ²-scaled)."""
        info = self.meta.get("line_by_line_rv") or {}
        return u.Quantity(info.get("rv_uncertainty", np.nan), KMS)

    @property
    def converged(self) -> bool:
        """True when nothing in :attr:`flags` says the result may be wrong."""
        return not self.flags

    @property
    def orders(self):
        """One row per fitted order (QTable): its RV and v sin i (one Gauss–Newton step
        from the joint solution with the lines and the other orders held), their
        uncertainties (scaled by the order's own √χ²_red), χ²_red and good pixels."""
        from astropy.table import QTable

        columns = self.meta.get("orders") or {}
        table = QTable()
        units = {
            "wavelength_min": u.AA,
            "wavelength_max": u.AA,
            "rv": KMS,
            "rv_uncertainty": KMS,
            "vsini": KMS,
            "vsini_uncertainty": KMS,
        }
        for name, values in columns.items():
            unit = units.get(name)
            table[name] = values if unit is None else np.asarray(values, dtype=float) * unit
        return table

    def __repr__(self) -> str:
        # The forward model and template hold thousands of lines: summarise them.
        def with_error(name: str, value: float, digits: int) -> str:
            error = self.uncertainties.get(name, float("nan"))
            value = float(value.value)
            if error is None or not np.isfinite(error):
                return f"{value:.{digits}f}"
            return f"{value:.{digits}f} ± {error:.{digits}f}"

        n_lines = self.forward_model.stellar.n_lines
        return (
            f"FitResult(rv={with_error('rv', self.rv, 4)} km/s, "
            f"vsini={with_error('vsini', self.vsini, 3)} km/s, "
            f"resolving_power={with_error('resolving_power', self.resolving_power, 0)}, "
            f"chi2_reduced={self.chi2_reduced:.3f} (initial {self.initial_chi2_reduced:.3f}), "
            f"n_orders={len(self.order_data)}, n_lines={n_lines}, "
            f"converged={self.converged}, "
            f"continuum_degree={self.meta.get('continuum_degree', '?')}"
            f"{' (auto)' if self.meta.get('continuum_degree_source') == 'auto' else ''}, "
            f"telluric={'yes' if self.telluric is not None else 'no'})"
        )

    # -------------------------------------------------------- astropy face
    @property
    def spectrum(self):
        """The semi-empirical template at native resolution, a :class:`specutils.Spectrum`."""
        from ..astro import results

        return results.template_spectrum(self.template)

    @property
    def spectra(self) -> dict:
        """Data, model, residual, continuum, telluric and telluric-corrected spectra."""
        from ..astro import results

        return results.fit_spectra(self)

    @property
    def data(self):
        """The observed spectrum (a Spectrum, or SpectrumList for several orders)."""
        return self.spectra["data"]

    @property
    def model(self):
        """The forward model at the data pixels (Spectrum or SpectrumList)."""
        return self.spectra["model"]

    @property
    def residual_spectrum(self):
        """Data − model (Spectrum or SpectrumList)."""
        return self.spectra["residual"]

    @property
    def line_table(self):
        """Every line of the transfer-learned template with equivalent widths (QTable);
        ``*_init`` columns hold the input clone's values."""
        from ..astro import results

        return results.line_table(self, initial=self.stellar_clone)

    @property
    def parameters(self):
        """RV, v sin i, R, ε with units and uncertainties, and χ²_red (one-row QTable)."""
        from ..astro import results

        return results.fit_parameters(self)

    def plot(self, **kwargs):
        """Data, model (and tellurics) with residuals below (a matplotlib Figure)."""
        from ..astro import results

        return results.plot_fit(self, **kwargs)

    def write(self, path, *, overwrite: bool = False):
        """Save everything to one ASDF file; read it back with :func:`blase_specutils.read_fit`."""
        from ..astro import results

        return results.write_fit(self, path, overwrite=overwrite)

    # ------------------------------------------------------------------ arrays
    def _per_order(self, values: np.ndarray):
        parts = np.split(values, np.cumsum([len(o.wavelength) for o in self.order_data])[:-1])
        return parts[0] if len(parts) == 1 else parts

    def _flux_scale(self) -> np.ndarray:
        """Per pixel: the order's flux level, to turn fitted units back into the data's."""
        return np.concatenate([np.full(len(o.wavelength), o.scale) for o in self.order_data])

    @property
    def rv_uncertainty(self) -> u.Quantity:
        """1-σ uncertainty of :attr:`rv` (km/s; NaN if held or undefined)."""
        return u.Quantity(self.uncertainties.get("rv", float("nan")), KMS)

    @property
    def vsini_uncertainty(self) -> u.Quantity:
        """1-σ uncertainty of :attr:`vsini` (km/s; NaN if held or undefined)."""
        return u.Quantity(self.uncertainties.get("vsini", float("nan")), KMS)

    @property
    def resolving_power_uncertainty(self) -> u.Quantity:
        """1-σ uncertainty of :attr:`resolving_power` (dimensionless)."""
        return u.Quantity(self.uncertainties.get("resolving_power", float("nan")), u.one)

    @property
    def wavelength(self):
        """Data wavelengths, Å (array, or list per order)."""
        return self._per_order(np.concatenate([o.wavelength for o in self.order_data]))

    @property
    def flux(self):
        """Observed flux (masked pixels hold 0), in the units given."""
        flux = np.concatenate([o.flux for o in self.order_data])
        return self._per_order(flux * self._flux_scale())

    @property
    def uncertainty(self):
        """1-σ uncertainty of the flux (given, or estimated from the scatter)."""
        sigma = np.concatenate([o.sigma for o in self.order_data])
        return self._per_order(sigma * self._flux_scale())

    @property
    def good(self):
        return self._per_order(np.concatenate([o.good for o in self.order_data]))

    @property
    def model_flux(self):
        """Forward model at the data pixels (array, or list per order), in the data's units."""
        with torch.no_grad():
            model = self.forward_model().double().cpu().numpy()
        return self._per_order(model * self._flux_scale())

    @property
    def continuum_flux(self):
        """Fitted per-order continuum at the data pixels, in the data's units."""
        with torch.no_grad():
            continuum = self.forward_model.continuum().double().cpu().numpy()
        return self._per_order(continuum * self._flux_scale())

    @property
    def telluric_flux(self):
        """Telluric transmission seen by the instrument at the data pixels (1 if none)."""
        with torch.no_grad():
            t = self.forward_model.telluric_fine()
            if t is None:
                n = sum(len(o.wavelength) for o in self.order_data)
                return self._per_order(np.ones(n))
            return self._per_order(
                self.forward_model.averager(self.forward_model.instrument(t)).double().cpu().numpy()
            )

    @property
    def telluric_corrected_flux(self):
        """Data divided by the observed telluric transmission and the continuum."""
        flux = np.concatenate([o.flux for o in self.order_data]) * self._flux_scale()
        tell = self.telluric_flux
        tell = np.concatenate(tell) if isinstance(tell, list) else tell
        cont = self.continuum_flux
        cont = np.concatenate(cont) if isinstance(cont, list) else cont
        good = np.concatenate([o.good for o in self.order_data])
        out = np.where(good, flux / (tell * cont), np.nan)
        return self._per_order(out)

    @property
    def residual(self):
        """Data − model (NaN at masked pixels), in the data's units."""
        data = np.concatenate([o.flux for o in self.order_data])
        good = np.concatenate([o.good for o in self.order_data])
        with torch.no_grad():
            model = self.forward_model().double().cpu().numpy()
        return self._per_order(np.where(good, (data - model) * self._flux_scale(), np.nan))

    def residual_rms_over_noise(self) -> float:
        """RMS of (data − model)/σ over good pixels (≈ 1 at photon noise)."""
        r = self.residual
        r = np.concatenate(r) if isinstance(r, list) else r
        s = np.concatenate([o.sigma for o in self.order_data]) * self._flux_scale()
        good = np.concatenate([o.good for o in self.order_data])
        return float(np.sqrt(np.mean((r[good] / s[good]) ** 2)))
