"""The installed version of tensorpeft, read once from the package metadata (a leaf: standard library only).

The package root re-exports it as ``tensorpeft.__version__``; code inside the package that records the
version (a saved adapter) imports it from here, not from the root, so that no module depends on the root.
"""

from importlib import metadata as _metadata

__all__ = ["__version__"]

try:  # one source of truth: the version in pyproject.toml, as installed
    __version__ = _metadata.version("tensorpeft")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"
