"""Sphinx configuration of the tensorpeft documentation site.

Build: ``make docs`` (sphinx-build -W --keep-going into docs/_build/html). The build is offline:
no intersphinx, MathJax served from the site itself (see ``_ext/offline_mathjax.py``), plots and
tables computed from the library (``_ext/tensorpeft_plots.py``, ``_ext/tensorpeft_directives.py``),
and the API reference generated from every ``__all__`` (``_ext/tensorpeft_apigen.py``).
Check: ``make docs-check`` (headless Chromium, ``check_site.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))  # document the working tree, installed or not

import tensorpeft  # noqa: E402

project = "tensorpeft"
author = "the tensorpeft developers"
copyright = "the tensorpeft developers, Apache-2.0"
release = tensorpeft.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
    "myst_parser",
    "sphinx_copybutton",
    "offline_mathjax",
    "tensorpeft_apigen",
    "tensorpeft_directives",
]

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "_templates", "**/*.inc"]
templates_path = ["_templates"]
default_role = "obj"
nitpicky = False  # no intersphinx (offline): references to numpy/torch stay plain text
suppress_warnings = [
    # CHANGELOG.md is included as Markdown; links in it to repository files are not pages of the site.
    "myst.xref_missing",
    "myst.header",
]

# -- API reference -------------------------------------------------------------------------------
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_typehints = "signature"
autodoc_default_options = {"exclude-members": "__init__, __weakref__, __dict__, __module__"}
numpydoc_show_class_members = False  # members are documented in full by the class template
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- maths -----------------------------------------------------------------------------------------
# mathjax_path is set to the locally served bundle by offline_mathjax.
mathjax3_config = {
    "tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]},
    "svg": {"fontCache": "global"},
}

# -- plots (matplotlib's plot directive, run at build time) ----------------------------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 144)]
plot_rcparams = {"font.size": 10, "savefig.bbox": "tight"}
plot_apply_rcparams = True

# -- HTML ----------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"tensorpeft {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {
    "light_css_variables": {"color-brand-primary": "#1f5f9f", "color-brand-content": "#1f5f9f"},
    "dark_css_variables": {"color-brand-primary": "#7fb3e6", "color-brand-content": "#7fb3e6"},
    "navigation_with_keys": True,
}
pygments_style = "friendly"
pygments_dark_style = "monokai"
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
