"""Generate the API reference from the packages' ``__all__``: nothing to list by hand.

For every public module (``tensorpeft``, the modules named in any ``__all__``, and the subpackages
the project plans: ``decomp``, ``nn``, ``testing``) a page ``api/generated/<module>.rst`` is written
before Sphinx reads the sources. It shows the module docstring and an autosummary of every name in the
module's ``__all__``; autosummary then writes one page per object (templates in ``_templates/``).

- A name re-exported from a deeper public module (``tensorpeft.get_peft_model`` defined in
  ``tensorpeft.nn``) is documented once, at its deepest public home, and linked from the others.
- A planned subpackage that is not importable yet (no ``__init__.py``, or no ``__all__``) gets a short
  placeholder page, so the table of contents never changes shape; it fills in by itself once it lands.
- A subpackage that *exists* but fails to import is an error: the build must not hide a broken module.

The coverage test in ``tests/docs/`` checks the result independently (every ``__all__`` name must be
in the built site's object inventory).
"""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

ROOT_PACKAGE = "tensorpeft"
# Subpackages the project plans; listed even before they exist so the reference keeps its shape.
PLANNED = ("tensorpeft.decomp", "tensorpeft.nn", "tensorpeft.testing", "tensorpeft.gallery")
OUT_DIR = Path("api") / "generated"
TOC_FILE = "modules.inc"


@dataclass
class ModuleInfo:
    """What the reference needs to know about one public module."""

    name: str
    module: ModuleType | None = None
    missing_reason: str = ""
    names: list[str] = field(default_factory=list)


def _is_planned_but_absent(name: str) -> str:
    """Why ``name`` is not there yet ("" if it is, or if it is not a planned subpackage)."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return f"``{name}`` does not exist yet"
    if spec.origin in (None, "namespace"):  # a directory without __init__.py
        return f"``{name}`` has no ``__init__.py`` yet"
    return ""


def collect_modules() -> list[ModuleInfo]:
    """Every public module to document, in reference order, importing each."""
    infos: dict[str, ModuleInfo] = {}
    queue = [ROOT_PACKAGE, *PLANNED]
    while queue:
        name = queue.pop(0)
        if name in infos:
            continue
        info = ModuleInfo(name)
        infos[name] = info
        absent = _is_planned_but_absent(name) if name in PLANNED else ""
        if absent:
            info.missing_reason = absent
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or ""
            if missing and not missing.startswith(ROOT_PACKAGE):
                # An optional third-party dependency of the module is not installed here.
                info.missing_reason = f"``{name}`` needs ``{missing}``, which is not installed in this build"
                logger.warning("%s is not importable: %s", name, exc)
                continue
            raise ExtensionError(f"public module {name} exists but fails to import: {exc}") from exc
        public = getattr(module, "__all__", None)
        if public is None:
            info.missing_reason = f"``{name}`` has no ``__all__`` yet"
            continue
        info.module = module
        info.names = list(public)
        for attr in info.names:
            obj = getattr(module, attr, None)
            if obj is None:
                raise ExtensionError(f"{name}.__all__ lists {attr!r}, which {name} does not define.")
            if inspect.ismodule(obj) and obj.__name__.startswith(ROOT_PACKAGE):
                queue.append(obj.__name__)
    return list(infos.values())


def canonical_names(infos: list[ModuleInfo]) -> dict[int, str]:
    """Map ``id(obj)`` of every public non-module object to its documented full name.

    An object listed in several ``__all__`` is documented under the deepest module, and within one
    module under the name that equals its ``__name__`` (so aliases such as ``LoTRConfig`` point to
    ``Tucker2Config``'s page instead of duplicating it).
    """
    best: dict[int, tuple[tuple[int, int], str]] = {}
    for info in infos:
        if info.module is None:
            continue
        depth = info.name.count(".")
        for attr in info.names:
            obj = getattr(info.module, attr)
            if inspect.ismodule(obj) or not _has_identity(obj):
                continue
            is_own_name = int(getattr(obj, "__name__", attr) == attr)
            key = (depth, is_own_name)
            current = best.get(id(obj))
            if current is None or key > current[0]:
                best[id(obj)] = (key, f"{info.name}.{attr}")
    return {k: v[1] for k, v in best.items()}


def _has_identity(obj) -> bool:
    """Classes and functions are documented once; plain values (strings, numbers) per name."""
    return inspect.isclass(obj) or inspect.isroutine(obj) or callable(obj)


def _kind(obj) -> str:
    if inspect.ismodule(obj):
        return "Modules"
    if inspect.isclass(obj):
        return "Classes"
    if inspect.isroutine(obj) or callable(obj):
        return "Functions"
    return "Data"


def _attribute_doc(module: ModuleType, attr: str) -> str:
    """The ``#:`` comment documenting a module-level value, if the source has one."""
    from sphinx.pycode import ModuleAnalyzer

    try:
        docs = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
    except Exception:  # no source available: the value is documented without a comment
        return ""
    return "\n".join(docs.get(("", attr), [])).strip()


def _heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def render_module_page(info: ModuleInfo, canonical: dict[int, str]) -> str:
    """The reST source of one module's reference page."""
    lines = [f".. _api-{info.name}:", "", _heading(f"``{info.name}``", "=")]
    if info.module is None:
        lines += [
            ".. note::",
            "",
            f"   {info.missing_reason}. Its reference appears on this page by itself once the module",
            "   is importable and defines ``__all__``.",
            "",
        ]
        return "\n".join(lines)

    lines += [f".. automodule:: {info.name}", "   :no-members:", "", f".. currentmodule:: {info.name}", ""]
    groups: dict[str, list[str]] = {"Modules": [], "Classes": [], "Functions": [], "Data": []}
    reexports: list[tuple[str, str]] = []
    for attr in info.names:
        obj = getattr(info.module, attr)
        kind = _kind(obj)
        if kind in ("Classes", "Functions"):
            home = canonical[id(obj)]
            if home != f"{info.name}.{attr}":
                reexports.append((attr, home))
                continue
        groups[kind].append(attr)

    for kind in ("Classes", "Functions"):
        if groups[kind]:
            lines += [_heading(kind, "-"), ".. autosummary::", "   :toctree: .", "   :nosignatures:", ""]
            lines += [f"   {attr}" for attr in sorted(groups[kind], key=str.lower)]
            lines.append("")
    if groups["Modules"]:
        lines += [_heading("Modules", "-")]
        for attr in groups["Modules"]:
            sub = getattr(info.module, attr).__name__
            summary = _first_line(getattr(info.module, attr).__doc__)
            lines += [f"- :ref:`{sub} <api-{sub}>` — {summary}" if summary else f"- :ref:`{sub} <api-{sub}>`"]
        lines.append("")
    if reexports:
        lines += [
            _heading("Re-exported names", "-"),
            f"These names are re-exported by ``{info.name}``; each is documented once, at its home module.",
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "",
            f"   * - ``{info.name}.<name>``",
            "     - documented as",
        ]
        for attr, home in sorted(reexports, key=lambda t: t[0].lower()):
            lines += [f"   * - ``{attr}``", f"     - :py:obj:`{home}`"]
        lines.append("")
    if groups["Data"]:
        lines += [_heading("Data", "-")]
        for attr in groups["Data"]:
            value = repr(getattr(info.module, attr))
            if len(value) > 80:
                value = value[:77] + "..."
            lines += [f".. py:data:: {attr}", f"   :value: {value}", ""]
            doc = _attribute_doc(info.module, attr)
            if doc:
                lines += [f"   {line}" for line in doc.splitlines()] + [""]
    return "\n".join(lines)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].strip() if (doc or "").strip() else ""


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def generate(srcdir: Path) -> list[ModuleInfo]:
    """Write the module pages and the reference's toctree; drop pages of names no longer public."""
    out = srcdir / OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    infos = collect_modules()
    canonical = canonical_names(infos)
    _CANONICAL.clear()
    _CANONICAL.update(canonical)
    keep = {TOC_FILE}
    for info in infos:
        _write_if_changed(out / f"{info.name}.rst", render_module_page(info, canonical))
        keep.add(f"{info.name}.rst")
    keep |= {f"{name}.rst" for name in canonical.values()}  # autosummary's pages
    toc = [".. toctree::", "   :maxdepth: 1", ""] + [f"   generated/{info.name}" for info in infos]
    _write_if_changed(out / TOC_FILE, "\n".join(toc) + "\n")
    # Stale pages (a name removed from __all__) would be orphans and fail the -W build.
    for path in out.iterdir():
        if path.is_file() and path.name not in keep:
            path.unlink()
    return infos


def _on_config_inited(app, config) -> None:
    generate(Path(app.srcdir))


_CANONICAL: dict[int, str] = {}  # id(obj) -> documented name, filled by generate()
_SECTION = re.compile(r"^([A-Z][A-Za-z ]+)\n-{3,}\s*$", re.MULTILINE)


def _parameter_names(doc: str | None) -> set[str]:
    """Names documented in the ``Parameters`` section of a numpydoc docstring."""
    doc = inspect.cleandoc(doc or "")
    matches = list(_SECTION.finditer(doc))
    for k, m in enumerate(matches):
        if m.group(1).strip() != "Parameters":
            continue
        end = matches[k + 1].start() if k + 1 < len(matches) else len(doc)
        body = textwrap.dedent(doc[m.end() : end].strip("\n"))
        heads = [line.split(" : ")[0] for line in body.splitlines() if line.strip() and not line[0].isspace()]
        return {n.strip().lstrip("*") for head in heads for n in head.split(",") if n.strip()}
    return set()


def _point_to_inherited_parameters(app, what, name, obj, options, lines) -> None:
    """Under a class whose constructor takes parameters documented on a public base class, say where.

    ``Tucker2Config`` documents only its own fields; ``alpha``, ``dropout``, ... are documented once, on
    ``AdapterConfig``. Runs after numpydoc (priority 600), appending one paragraph that links there.
    """
    if what != "class" or not inspect.isclass(obj):
        return
    try:
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
    except (TypeError, ValueError):
        return
    undocumented = [p for p in params if p not in _parameter_names(obj.__doc__)]
    for base in obj.__mro__[1:]:
        home = _CANONICAL.get(id(base))
        if not undocumented or home is None:
            continue
        inherited = [p for p in undocumented if p in _parameter_names(base.__doc__)]
        if inherited:
            names = ", ".join(f"``{p}``" for p in inherited)
            lines += ["", f"Further parameters ({names}) are those of :class:`~{home}`.", ""]
            undocumented = [p for p in undocumented if p not in inherited]


def _defining_module(obj) -> str | None:
    """Module that defines a class member (function, property, classmethod), if it can be told."""
    target = obj
    if isinstance(target, property):
        target = target.fget
    target = getattr(target, "__func__", target)
    target = inspect.unwrap(target) if callable(target) else target
    module = getattr(target, "__module__", None)
    return module if isinstance(module, str) else None


def _skip_foreign_inherited(app, what, name, obj, skip, options):
    """Document only members written in tensorpeft: not the hundred methods of ``torch.nn.Module``.

    Class pages use ``:inherited-members:`` so that, e.g., ``Tucker2`` shows ``apply`` and ``fit``
    inherited from ``TensorNetwork``; members that come from a third-party base class are left to that
    library's documentation (their docstrings are not written for this site's reST either).
    """
    if what != "class" or skip:
        return None
    module = _defining_module(obj)
    if module is not None and not module.startswith(ROOT_PACKAGE):
        return True
    return None


def setup(app):
    app.connect("config-inited", _on_config_inited)
    app.connect("autodoc-skip-member", _skip_foreign_inherited)
    app.connect("autodoc-process-docstring", _point_to_inherited_parameters, priority=600)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
