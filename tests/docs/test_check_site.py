"""The site checker (docs/check_site.py) catches what it claims to: broken links, raw LaTeX, TeX errors."""

from __future__ import annotations

import importlib
import shutil
import sys
import zlib
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def check_site():
    sys.path.insert(0, str(DOCS))
    try:
        yield importlib.import_module("check_site")
    finally:
        sys.path.remove(str(DOCS))


def write(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!DOCTYPE html><html><head></head><body>{body}</body></html>", encoding="utf-8")
    return path


def test_links_and_fragments(tmp_path, check_site):
    write(tmp_path / "index.html", '<a href="guide/b.html#here">ok</a> <a href="https://example.org/x">ext</a>')
    write(
        tmp_path / "guide" / "b.html",
        '<h1 id="here">B</h1><a href="#here">self</a> <a href="../index.html">up</a>'
        ' <a href="c.html">missing page</a> <a href="../index.html#nowhere">missing id</a>'
        ' <script src="../_static/gone.js"></script> <img src="../_static/ok.png">',
    )
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "ok.png").write_bytes(b"png")
    problems = check_site.check_links(tmp_path)
    assert len(problems) == 3, problems
    assert any("c.html" in p and "does not exist" in p for p in problems)
    assert any("no id 'nowhere'" in p for p in problems)
    assert any("gone.js" in p for p in problems)


def test_parse_counts_math_and_errors(check_site):
    page = check_site.parse(
        '<p>text <span class="math notranslate">\\(x\\)</span></p><div class="math">\\[y\\]</div>'
        "<pre>\\(in code\\)</pre><mjx-container></mjx-container>"
        '<svg><g data-mml-node="mtext" fill="red"></g><g data-mml-node="merror"></g></svg>'
    )
    assert page.math_elements == 2
    assert page.mathjax_containers == 1
    assert len(page.mathjax_errors) == 2
    text = "".join(page.text)
    assert "\\(x\\)" in text
    assert "in code" not in text


def test_read_inventory(tmp_path, check_site):
    body = "tensorpeft.decomp.LoRA py:class 1 api/x.html#$ -\nguide std:doc -1 guide.html Guide\n"
    header = b"# Sphinx inventory version 2\n# Project: p\n# Version: 1\n# The remainder is compressed\n"
    (tmp_path / "objects.inv").write_bytes(header + zlib.compress(body.encode()))
    assert check_site.read_inventory(tmp_path / "objects.inv") == {"tensorpeft.decomp.LoRA"}


def _mathjax_bundle() -> Path | None:
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        offline_mathjax = importlib.import_module("offline_mathjax")
    except ImportError:  # the docs extra (sphinx) is not installed
        return None
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    bundle = offline_mathjax.cache_root() / "mathjax" / offline_mathjax.BUNDLE
    return bundle if bundle.is_file() else None


@pytest.mark.slow
def test_browser_sees_rendered_and_raw_maths(tmp_path, check_site):
    """Headless Chromium: MathJax renders maths, and raw or broken LaTeX is reported."""
    browser = next((shutil.which(b) for b in check_site.BROWSERS if shutil.which(b)), None)
    bundle = _mathjax_bundle()
    if browser is None or bundle is None:
        pytest.skip("needs Chromium and the cached MathJax bundle (run `make docs-check` once)")
    shutil.copy(bundle, tmp_path / "mathjax.js")
    script = '<script defer src="mathjax.js"></script>'
    good = write(tmp_path / "good.html", f'{script}<span class="math">\\(\\Delta W = B A\\)</span>')
    bad = write(tmp_path / "bad.html", f'{script}<span class="math">\\(\\nosuchmacro x\\)</span>')
    raw = write(tmp_path / "raw.html", '<span class="math">\\(x^2\\)</span>')
    assert check_site.check_math_page(browser, tmp_path, good) == []
    assert any("undefined TeX macro" in p for p in check_site.check_math_page(browser, tmp_path, bad))
    problems = check_site.check_math_page(browser, tmp_path, raw)
    assert any("0 rendered" in p for p in problems) and any("raw LaTeX" in p for p in problems)
