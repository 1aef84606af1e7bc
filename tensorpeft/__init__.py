"""tensorpeft: tensor-decomposition weight updates for parameter-efficient fine-tuning.

``tensorpeft.decomp`` needs numpy only. The PEFT layer (``tensorpeft.nn``, which needs torch) is
imported on first access to one of its names, e.g. ``tp.get_peft_model``.
"""

from . import _peft_hook
from . import decomp as decomp
from ._version import __version__ as __version__

_peft_hook.install()  # tensorpeft registers with PEFT as soon as peft is (or already was) imported

# Public names of tensorpeft.nn, resolved lazily (PEP 562) so that `import tensorpeft` needs no torch. Every
# config (a name ending in "Config", one per format, listed once in tensorpeft/nn/_config.py) is one too.
_NN_NAMES = (
    "ExportReport",
    "RankPruner",
    "TensorPeftModel",
    "compress_low_rank",
    "get_peft_model",
)


def _nn():
    import importlib

    return importlib.import_module(".nn", __name__)


def __getattr__(name: str):
    if name == "nn":
        return _nn()
    if name in _NN_NAMES or (name.endswith("Config") and not name.startswith("_")):
        nn = _nn()
        if name in nn.__all__:
            return getattr(nn, name)
    if name == "__all__":  # computed on demand: the configs come from tensorpeft.nn
        return ["__version__", "decomp", "nn", *_NN_NAMES, *_nn()._config_names]
    raise AttributeError(f"module 'tensorpeft' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), "__version__", "decomp", "nn", *_NN_NAMES})
