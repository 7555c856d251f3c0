"""The astropy/specutils face of blase_specutils.

adapters
    specutils / muler spectra ⇄ plain arrays (units, air/vacuum, masks, uncertainties).
accessor
    The ``.blase`` accessor on :class:`specutils.Spectrum` and :class:`specutils.SpectrumList`.
templates
    Readers for PHOENIX, Sonora (Bobcat, Diamondback, Elf Owl), NASA PSG (a column per
    molecule), muler's templates (TelFit, PSG, PHOENIX 10 kK) and text tables.
clones
    :class:`CloneResult` and the ECSV line-table format.
models
    astropy.modeling facades (:class:`LineForestModel`, :class:`ExtrinsicModel`,
    :class:`BlaseFitter`) over the torch engine.
results
    Line tables with equivalent widths, result spectra, plots, ASDF save/read.

The names re-exported here (``CloneResult``, ``load_clone``, ``forest_from_table``,
``forest_to_table``) load :mod:`~blase_specutils.astro.clones`, and with it torch, on
first use, so that registering the ``.blase`` accessor (``accessor``, ``adapters``)
imports neither torch nor matplotlib.
"""

from importlib import import_module

__all__ = ["CloneResult", "forest_from_table", "forest_to_table", "load_clone"]

_FROM_CLONES = frozenset(__all__)


def __getattr__(name):
    if name in _FROM_CLONES:
        value = getattr(import_module(".clones", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
