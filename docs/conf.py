"""Sphinx configuration for blase_specutils (offline: no intersphinx)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

from blase_specutils import __version__  # noqa: E402

project = "blase_specutils"
author = "blase_specutils developers"
copyright = "2025, blase_specutils developers"  # noqa: A001
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
]

autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc docstrings carry the types and units
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

templates_path = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "alabaster"
html_static_path = []
