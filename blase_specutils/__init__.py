"""blase_specutils: the blasé method for specutils spectra.

Clone a precomputed synthetic spectrum into a forest of tunable Voigt lines,
then transfer-learn that clone against a real échelle spectrum.

Public API
----------
clone
    Turn a synthetic spectrum (wavelength, flux) into a trained line forest.
load_clone
    Read a clone written by ``CloneResult.save``.
CloneResult
    A trained clone: line table, emulator, flattened target, continuum.
fit
    Transfer-learn stellar (and telluric) clones against observed spectra.
FitResult
    RV, v sin i, R with uncertainties, the semi-empirical template, spectra.
read_fit
    Read a fit written by ``FitResult.write`` (one ASDF file).
read_template, read_psg, read_sonora
    Read a synthetic spectrum (PHOENIX, Sonora, PSG/TelFit, two-column text, muler
    templates) into a ``Template`` for ``clone``.
correct_tellurics
    Divide a science spectrum by the telluric clone learned on an A0V standard's fit.
LineForestModel, ExtrinsicModel, BlaseFitter
    astropy.modeling facades over the torch engine (unit-aware RV, v sin i, R).
datasets
    Example data (PHOENIX, HPF, IGRINS, WASP 69) with checksums and a cache.
batch
    Clone or fit many spectra at once on dask.distributed (``batch.run``).

Importing the package registers the ``.blase`` accessor on
``specutils.Spectrum`` and ``specutils.SpectrumList``.

Layers (imports only point down): ``core`` (PyTorch + numpy, no astropy),
``prep`` (numpy/scipy), ``astro`` (the astropy/specutils face), then the
workflows ``cloning`` and ``fitting`` and the command line ``cli``. The public
names above are loaded on first use, so ``blase_specutils.core`` can be imported
on a compute node that has only torch and numpy.
"""

from importlib import import_module

from ._version import __version__

__all__ = [
    "__version__",
    "clone",
    "load_clone",
    "CloneResult",
    "fit",
    "FitResult",
    "read_fit",
    "correct_tellurics",
    "read_template",
    "read_psg",
    "read_sonora",
    "LineForestModel",
    "ExtrinsicModel",
    "BlaseFitter",
    "datasets",
    "batch",
]

_LAZY = {
    "clone": ("cloning", "clone"),
    "load_clone": ("cloning", "load_clone"),
    "CloneResult": ("cloning", "CloneResult"),
    "fit": ("fitting", "fit"),
    "FitResult": ("fitting", "FitResult"),
    "read_fit": ("astro.results", "read_fit"),
    "correct_tellurics": ("astro.telluric_correction", "correct_tellurics"),
    "read_template": ("astro.templates", "read_template"),
    "read_psg": ("astro.templates", "read_psg"),
    "read_sonora": ("astro.templates", "read_sonora"),
    "LineForestModel": ("astro.models", "LineForestModel"),
    "ExtrinsicModel": ("astro.models", "ExtrinsicModel"),
    "BlaseFitter": ("astro.models", "BlaseFitter"),
    "datasets": ("datasets", None),
    "batch": ("batch", None),
}


def __getattr__(name):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = import_module(f".{module_name}", __name__)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


try:  # Register the `.blase` accessor wherever specutils is installed (always, for users).
    import specutils as _specutils  # noqa: F401
except ImportError:  # a bare compute node: the torch core stays importable
    pass
else:
    from .astro import accessor as _accessor  # noqa: F401
