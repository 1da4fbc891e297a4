"""Sphinx configuration of the fabricmetrics documentation."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fabricmetrics  # noqa: E402

project = "fabricmetrics"
author = "fabricmetrics developers"
copyright = "2026, fabricmetrics developers"
release = fabricmetrics.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# scikit-learn's metadata-routing setters are not ours to document.
_SKLEARN_SETTERS = "set_fit_request, set_score_request, set_predict_request, set_predict_proba_request, set_output"
autodoc_default_options = {"show-inheritance": True, "exclude-members": _SKLEARN_SETTERS}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autosummary_generate = False

html_theme = "furo"
html_title = "fabricmetrics"

# The gallery runs every examples/plot_*.py and keeps its figures (with FABRICMETRICS_EXAMPLE_QUICK=1,
# as in CI, they use tiny settings). The other examples are scripts to start from a shell (several
# processes, command-line flags): the gallery shows them without running them, and their docstrings
# hold what a run prints.
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "within_subsection_order": "FileNameSortKey",
}
os.environ.setdefault("FABRICMETRICS_EXAMPLE_OUT", str(ROOT / "docs" / "_build" / "example_runs"))

nitpicky = False
suppress_warnings = ["myst.header", "config.cache"]
