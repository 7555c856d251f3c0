"""blase_specutils: the blasé method for specutils spectra.

Clone a precomputed synthetic spectrum into a forest of tunable Voigt lines,
then transfer-learn that clone against a real échelle spectrum.

Public API
----------
clone
    Turn a synthetic spectrum (wavelength, flux) into a trained line forest.
load_clone
    Read a clone written by ``CloneResult.save``.
fit
    Transfer-learn stellar (and telluric) clones against observed spectra.
datasets
    Example data (PHOENIX, HPF, IGRINS, WASP 69) with checksums and a cache.

Importing the package registers the ``.blase`` accessor on
``specutils.Spectrum`` and ``specutils.SpectrumList``.

Layers (imports only point down): ``core`` (PyTorch + numpy), ``prep``
(numpy/scipy), ``astro`` (astropy/specutils face), then the workflows
``cloning`` and ``fitting`` and the command line ``cli``.
"""

from ._version import __version__
from .cloning import CloneResult, clone, load_clone
from .fitting import FitResult, fit
from . import datasets
from .astro import accessor as _accessor  # noqa: F401  (registers `.blase`)

__all__ = [
    "__version__",
    "clone",
    "load_clone",
    "CloneResult",
    "fit",
    "FitResult",
    "datasets",
]
