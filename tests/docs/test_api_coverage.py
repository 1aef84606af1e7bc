"""Every public name is documented, and the built API reference contains every public name.

"Public" means listed in the ``__all__`` of ``tensorpeft`` or of a public module reachable from it
(``tensorpeft.decomp``, ``tensorpeft.nn``, ``tensorpeft.testing``, ...). The rules, per kind of name:

- module: a docstring;
- function: a docstring with a ``Parameters`` section naming every parameter of its signature, a
  ``Returns`` (or ``Yields``) section when it returns a value, and an ``Examples`` section;
- class: a docstring with ``Examples``, and a ``Parameters`` section naming every constructor
  parameter — for records (dataclasses, named tuples, exceptions) ``Attributes`` may name them instead;
  every public method and property written in tensorpeft has a docstring;
- data (constants, strategies): nothing to check here; the reference shows their value.

Raises sections are not enforced: whether a function raises is not decidable from its source (most
validation is delegated), so reviewers check those. There is no list of tolerated gaps: every public
name must pass.

The reference itself is checked by building the site (slow: ``make test-slow``) and reading its object
inventory, as ``docs/check_site.py`` does for the site CI publishes.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "tensorpeft"
PLANNED = ("tensorpeft.decomp", "tensorpeft.nn", "tensorpeft.testing", "tensorpeft.gallery")


# ---------------------------------------------------------------------------------------- discovery
def public_modules() -> list[str]:
    """Importable public modules: the package, the planned subpackages, and every module in an ``__all__``."""
    seen: list[str] = []
    queue = [PACKAGE, *PLANNED]
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin in (None, "namespace"):
            continue  # planned but not written yet: nothing public to check
        seen.append(name)
        module = importlib.import_module(name)  # an existing module that fails to import fails the test
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if inspect.ismodule(obj) and obj.__name__.startswith(PACKAGE):
                queue.append(obj.__name__)
    return seen


def public_names() -> list[tuple[str, str, object]]:
    out = []
    for modname in public_modules():
        module = importlib.import_module(modname)
        for attr in getattr(module, "__all__", ()):
            out.append((modname, attr, getattr(module, attr)))
    return out


def public_objects() -> dict[str, object]:
    """One entry per documented object: re-exports and aliases are the same object, checked once.

    Its name is the one the reference uses: the deepest module that lists it, under its own ``__name__``.
    """
    best: dict[int, tuple[tuple[int, int], str, object]] = {}
    for modname, attr, obj in public_names():
        if not (inspect.isclass(obj) or callable(obj) or inspect.ismodule(obj)):
            continue  # data: documented by value
        key = (modname.count("."), int(getattr(obj, "__name__", attr) == attr))
        if id(obj) not in best or key > best[id(obj)][0]:
            best[id(obj)] = (key, f"{modname}.{attr}" if not inspect.ismodule(obj) else obj.__name__, obj)
    return {full: obj for _, full, obj in best.values()}


# ----------------------------------------------------------------------------------------- docstrings
SECTION = re.compile(r"^([A-Z][A-Za-z ]+)\n-{3,}\s*$", re.MULTILINE)


def sections(doc: str) -> dict[str, str]:
    """numpydoc sections of a docstring: title -> body."""
    doc = inspect.cleandoc(doc or "")
    matches = list(SECTION.finditer(doc))
    out = {}
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(doc)
        out[m.group(1).strip()] = doc[m.end() : end]
    return out


def documented_names(body: str) -> set[str]:
    """Names in a Parameters/Attributes section: unindented ``a, b : type`` lines."""
    names = set()
    for line in textwrap.dedent(body.strip("\n")).splitlines():
        if not line.strip() or line[0].isspace():
            continue
        head = line.split(" : ")[0].split(":")[0]
        names |= {n.strip().lstrip("*") for n in head.split(",") if n.strip()}
    return names


def signature_params(obj) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # builtins without a signature
        return []
    return [p.name for p in sig.parameters.values() if p.name not in ("self", "cls")]


def returns_value(func) -> bool:
    """Whether ``func``'s own source has a ``return <value>`` (or ``yield``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(func))))
    except (OSError, TypeError, SyntaxError):
        return False
    top = tree.body[0]
    for node in ast.walk(top):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and node is not top:
            continue
        if isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                return True
        if isinstance(node, ast.Yield | ast.YieldFrom):
            return True
    return False


def is_record(cls) -> bool:
    return dataclasses.is_dataclass(cls) or issubclass(cls, tuple | BaseException)


def own_members(cls):
    """Public methods and properties defined in tensorpeft, including inherited ones."""
    for name, value in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        target = value.fget if isinstance(value, property) else value
        target = getattr(target, "__func__", target)
        if not (inspect.isfunction(target) or inspect.ismethod(target)):
            continue
        if (getattr(target, "__module__", "") or "").startswith(PACKAGE):
            yield name, value


def problems_of(obj) -> set[str]:
    """What the docstring of a public object lacks, as short labels."""
    if inspect.ismodule(obj):
        return set() if (obj.__doc__ or "").strip() else {"docstring"}
    is_class = inspect.isclass(obj)
    if not (is_class or callable(obj)):
        return set()  # data
    doc = inspect.getdoc(obj) if is_class else obj.__doc__
    if is_class and doc == inspect.getdoc(object):
        doc = None
    if not (doc or "").strip():
        return {"docstring"}
    found = sections(doc)
    missing = set()
    if "Examples" not in found and not (is_class and issubclass(obj, BaseException)):
        missing.add("Examples")
    params = signature_params(obj)
    if params:
        named = documented_names(found.get("Parameters", ""))
        if is_class and is_record(obj):
            named |= documented_names(found.get("Attributes", ""))
        if is_class:  # parameters documented once on a tensorpeft base class (the page links to it)
            for base in obj.__mro__[1:]:
                if base.__module__.startswith(PACKAGE):
                    named |= documented_names(sections(base.__doc__ or "").get("Parameters", ""))
        if not named:
            missing.add("Parameters")
        else:
            missing |= {f"parameter `{p}`" for p in params if p not in named}
    if not is_class and returns_value(obj) and not ({"Returns", "Yields"} & set(found)):
        missing.add("Returns")
    if is_class:
        missing |= {f"docstring of `{name}`" for name, value in own_members(obj) if not (value.__doc__ or "").strip()}
    return missing


OBJECTS = public_objects()


@pytest.mark.parametrize("full", sorted(OBJECTS))
def test_public_name_is_documented(full):
    missing = problems_of(OBJECTS[full])
    assert not missing, f"{full}: the docstring lacks {', '.join(sorted(missing))}"


def test_every_public_name_is_checked():
    """Each name of every ``__all__`` is covered by one documented object (aliases share one)."""
    covered = {id(obj) for obj in OBJECTS.values()}
    unchecked = [
        f"{mod}.{name}"
        for mod, name, obj in public_names()
        if (inspect.isclass(obj) or callable(obj) or inspect.ismodule(obj)) and id(obj) not in covered
    ]
    assert not unchecked
    assert any(full.startswith("tensorpeft.decomp.") for full in OBJECTS)


def test_the_checker_catches_gaps():
    def undocumented(a, b):
        return a

    def documented(a, *, b=1):
        """Add.

        Parameters
        ----------
        a, b : int
            Terms.

        Returns
        -------
        int

        Examples
        --------
        >>> documented(1)
        1
        """
        return a

    def no_return(a):
        """Side effect only.

        Parameters
        ----------
        a : int

        Examples
        --------
        >>> no_return(1)
        """

    assert problems_of(undocumented) == {"docstring"}
    assert problems_of(documented) == set()
    assert problems_of(no_return) == set()
    documented.__doc__ = documented.__doc__.replace("a, b : int", "a : int")
    assert problems_of(documented) == {"parameter `b`"}


# ------------------------------------------------------------------------------------------ reference
@pytest.mark.slow
def test_built_reference_lists_every_public_name(tmp_path):
    """Build the site (no MathJax fetch) and find every public name in its object inventory."""
    for dist in ("sphinx", "numpydoc", "furo", "myst_parser", "sphinx_copybutton", "matplotlib"):
        pytest.importorskip(dist, reason="the docs extra is not installed (pip install -e .[docs])")
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b", "html", "-D", "tensorpeft_mathjax=0"]
    cmd += ["-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        check_site = importlib.import_module("check_site")
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert check_site.check_reference(out) == []
    # Built without MathJax (no fetch in the test suite): its script is the one link allowed to dangle.
    assert [p for p in check_site.check_links(out) if "_static/mathjax/" not in p] == []
