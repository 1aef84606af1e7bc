"""Register tensorpeft with PEFT when ``peft`` is imported, without importing torch at ``import tensorpeft``.

``import tensorpeft`` must stay light (the maths core is numpy-only, ``tensorpeft --help`` imports no
torch), but ``peft.PeftModel.from_pretrained(base, dir)`` must know tensorpeft adapters "once tensorpeft
is imported". So: if ``peft`` is already imported, :func:`install` imports :mod:`tensorpeft.nn` (which
registers the method) at once; otherwise it puts a finder on ``sys.meta_path`` that waits for the
``peft`` import and registers right after ``peft`` has finished loading. The finder removes itself
after that one import and never changes what is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

__all__ = ["install"]

_TARGET = "peft"


def _register() -> None:
    # tensorpeft.nn registers at the end of its own import; if it is being imported right now (it imports
    # peft itself), it will register when it finishes.
    if "tensorpeft.nn" not in sys.modules:
        importlib.import_module("tensorpeft.nn")


class _Loader(importlib.abc.Loader):
    """Delegates to ``peft``'s own loader, then registers tensorpeft."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            _register()
        except Exception as exc:  # never break `import peft` because of tensorpeft
            import warnings

            warnings.warn(f"tensorpeft could not register with peft: {exc}", RuntimeWarning, stacklevel=2)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for ``peft`` it wraps the spec the other finders return."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        _uninstall()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def _uninstall() -> None:
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def install() -> None:
    """Register now if ``peft`` is loaded, else when it is (idempotent)."""
    if _TARGET in sys.modules:
        _register()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
