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
"""

from .clones import CloneResult, forest_from_table, forest_to_table, load_clone  # noqa: F401
