"""The factory of a :class:`CustomConfig`: its saved name, finding it again, and trusting it when loading.

A factory is saved as ``"module:qualname"``. Built-in formats of :mod:`tensorpeft.decomp` are found there
by name, never imported from a path; any other factory is code to import and run, refused when it comes
from a file unless the caller opted in (``trust_custom_factories``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from .. import decomp

__all__ = ["PUBLIC_FORMATS", "builtin_factory", "check_trusted", "factory_path", "resolve_factory", "trusted_factories"]

PUBLIC_FORMATS = "tensorpeft.decomp"
GALLERY = "tensorpeft.gallery"


def builtin_factory(path: str):
    """The built-in format class a factory string names, found without importing anything; else None.

    ``"tensorpeft.decomp:LoRA"`` (the public name written since) and the private module paths older files
    hold (``"tensorpeft.decomp._lora:LoRA"``) name a public :mod:`tensorpeft.decomp` format; they are looked
    up there by name, never imported from the path. ``"tensorpeft.gallery:krona"`` names a factory of
    :data:`tensorpeft.gallery.GALLERY`, looked up in that registry (nothing else under the gallery resolves).
    """
    module, _, qualname = path.partition(":")
    if module == GALLERY:  # the package's gallery: only the names its registry lists, looked up there
        from .. import gallery

        return next((entry.factory for entry in gallery.GALLERY if entry.name == qualname), None)
    if module != PUBLIC_FORMATS and not module.startswith(f"{PUBLIC_FORMATS}."):
        return None
    obj = getattr(decomp, qualname, None) if qualname in decomp.__all__ else None
    if isinstance(obj, type) and issubclass(obj, decomp.TensorNetwork) and obj is not decomp.TensorNetwork:
        return obj
    return None


def factory_path(factory) -> str:
    """The ``"module:qualname"`` a factory is saved as (a built-in format: its public name)."""
    if isinstance(factory, type) and builtin_factory(f"{PUBLIC_FORMATS}:{factory.__name__}") is factory:
        return f"{PUBLIC_FORMATS}:{factory.__name__}"  # the public name, never a private module path
    name = getattr(factory, "__name__", None)
    if isinstance(name, str) and builtin_factory(f"{GALLERY}:{name}") is factory:
        return f"{GALLERY}:{name}"
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or "<" in qualname:
        raise ValueError(
            f"`factory` must be an importable module-level function so the config can be saved, got {factory!r}."
        )
    return f"{module}:{qualname}"


def trusted_factories(value, name: str = "trust_custom_factories") -> bool | frozenset:
    """Normalize the loading opt-in: ``True``/``False``, or an allow-list of factories (callables or paths)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise TypeError(
            f"`{name}` must be a bool or a list of factories (functions or 'module:qualname' strings), "
            f"got {value!r} ({type(value).__name__})."
        )
    allowed = set()
    for k, item in enumerate(value):
        if isinstance(item, str):
            module, _, qualname = item.partition(":")
            if not module or not qualname:
                raise ValueError(f"`{name}[{k}]` must be a 'module:qualname' string, got {item!r}.")
            allowed.add(item)
        elif callable(item):
            try:
                allowed.add(factory_path(item))
            except ValueError:
                raise ValueError(f"`{name}[{k}]` must be a module-level function, got {item!r}.") from None
        else:
            raise TypeError(f"`{name}[{k}]` must be a function or a 'module:qualname' string, got {item!r}.")
    return frozenset(allowed)


def check_trusted(path, trusted: bool | frozenset) -> None:
    """Refuse a factory read from a file unless it is built in or the caller opted in."""
    if not isinstance(path, str) or builtin_factory(path) is not None or trusted is True:
        return  # not a string: the constructor raises the TypeError
    if trusted and path in trusted:
        return
    raise ValueError(
        f"`factory`={path!r} of this CustomConfig names code to import and run, and the config comes from "
        "untrusted data; nothing was imported. If you trust its source, pass `trust_custom_factories=True`, "
        f"or allow this factory only with `trust_custom_factories=[{path!r}]` (or the function itself)."
    )


def resolve_factory(path: str) -> Callable:
    """The callable a ``"module:qualname"`` string names: a built-in format by name, else imported."""
    module, _, qualname = path.partition(":")
    if not module or not qualname:
        raise ValueError(f"`factory` must be a callable or a 'module:qualname' string, got {path!r}.")
    builtin = builtin_factory(path)
    if builtin is not None:
        return builtin
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"`factory`={path!r} cannot be imported: {exc}.") from None
    if not callable(obj):
        raise TypeError(f"`factory`={path!r} is not callable.")
    return obj
