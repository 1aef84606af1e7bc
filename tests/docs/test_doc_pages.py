"""Run the code on every page of the documentation site as doctests.

Each ``.rst`` page under ``docs/`` is one test: its ``>>>`` examples run in order in one namespace, as a
reader would type them. Two reST comments, invisible on the site, steer a page:

``.. doctest-requires: tensorpeft.get_peft_model tensorpeft.TensorPeftModel``
    The examples from here to the next ``doctest-requires`` (``none`` ends the section) need these public
    names; if one does not exist the page fails, naming it (a removed or renamed public name must not
    turn a tutorial into a skip).
``.. doctest-mark: slow``
    The page runs only with ``-m slow`` (``make test-slow``).
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
SKIP_DIRS = {"_build", "_templates", "_ext", "_static", "generated"}
REQUIRES = re.compile(r"^\.\. doctest-requires:[ \t]*(.*)$", re.MULTILINE)
MARK = re.compile(r"^\.\. doctest-mark:[ \t]*(\S+)[ \t]*$", re.MULTILINE)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _pages() -> list[Path]:
    pages = [p for p in DOCS.rglob("*.rst") if not SKIP_DIRS & set(p.relative_to(DOCS).parts)]
    return sorted(p for p in pages if ">>>" in p.read_text(encoding="utf-8"))


def _params():
    for page in _pages():
        marks = [getattr(pytest.mark, m) for m in MARK.findall(page.read_text(encoding="utf-8"))]
        yield pytest.param(page, id=page.relative_to(DOCS).as_posix(), marks=marks)


def missing(names: list[str]) -> list[str]:
    """The dotted names among ``names`` that cannot be imported or looked up."""
    out = []
    for name in names:
        parts = name.split(".")
        obj = None
        for k in range(len(parts), 0, -1):  # longest importable module prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:k]))
            except ImportError:
                continue
            try:
                for attr in parts[k:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                obj = None
            break
        if obj is None:
            out.append(name)
    return out


def sections(text: str) -> list[tuple[int, list[str], str]]:
    """``(first line number, required names, text)`` of the page's parts between requires-markers."""
    out, start, names, line = [], 0, [], 0
    for m in REQUIRES.finditer(text):
        out.append((line, names, text[start : m.start()]))
        line = text.count("\n", 0, m.end())
        start = m.end()
        names = [] if m.group(1).strip() in ("", "none") else m.group(1).split()
    out.append((line, names, text[start:]))
    return out


@pytest.mark.parametrize("page", list(_params()))
def test_page_examples(page: Path):
    text = page.read_text(encoding="utf-8")
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    globs = {"__name__": f"docs.{page.stem}"}
    report: list[str] = []
    ran = 0
    for line, names, chunk in sections(text):
        test = parser.get_doctest(chunk, globs, page.stem, str(page), line)
        if not test.examples:
            continue
        absent = missing(names)
        if absent:
            pytest.fail(f"{page.name}: examples from line {line + 1} need {', '.join(absent)}, which do not exist")
        runner.run(test, out=report.append, clear_globs=False)
        globs = test.globs  # DocTest copies the namespace: carry it on to the next section
        ran += len(test.examples)
    result = runner.summarize(verbose=False)
    if result.failed:
        pytest.fail("".join(report), pytrace=False)
    assert ran > 0, f"{page} has examples but none ran"


def test_every_page_with_code_is_collected():
    assert len(_pages()) >= 8, [p.name for p in _pages()]


def test_sections_split_at_markers():
    text = "a\n.. doctest-requires: x.y z\nb\n.. doctest-requires: none\nc\n"
    assert [(names, chunk.strip()) for _, names, chunk in sections(text)] == [
        ([], "a"),
        (["x.y", "z"], "b"),
        ([], "c"),
    ]
    assert missing(["tensorpeft.decomp.LoRA", "tensorpeft.decomp.NoSuchThing", "no_such_module.x"]) == [
        "tensorpeft.decomp.NoSuchThing",
        "no_such_module.x",
    ]
