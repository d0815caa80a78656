"""Sphinx configuration of the documentation site (docs/).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``; the
examples run with ``-b doctest`` (both in ``tests/test_docs_site.py``).
Pages are MyST Markdown; the API reference is autodoc over the package's
Google-style docstrings (napoleon).
"""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The examples register models and strategies of their own: never write them
# into (or read) the shared config-section snapshot under ~/.cache.
os.environ["MTREC_SECTION_CACHE"] = "0"

project = "mtrec-jax"
author = "mtrec-jax authors"
copyright = "mtrec-jax authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Docstrings write `name` for code; render it as code, not as a citation.
default_role = "code"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

myst_heading_anchors = 3

doctest_global_setup = """
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
"""

html_theme = "furo"
html_title = "mtrec-jax"
