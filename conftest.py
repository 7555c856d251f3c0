"""Repository-wide pytest setup: headless matplotlib and Triton's interpreter.

Tests and the doctested pages under ``docs/`` find the example data the way a user's
code does (:mod:`blase_specutils.datasets`): in the folder named by
``BLASE_SPECUTILS_DATA`` when it is set (``.ci/run`` and ``tox.ini`` set it to
``../shared/data``), otherwise downloaded once, checksum-verified, into the astropy
cache. Nothing here invents a default folder.
"""

import os

import matplotlib

matplotlib.use("Agg")
# The Triton kernels are checked on the CPU through Triton's interpreter; the variable
# must be set before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
