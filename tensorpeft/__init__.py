"""tensorpeft: tensor-decomposition weight updates for parameter-efficient fine-tuning.

``tensorpeft.decomp`` needs numpy only. The PEFT layer (``tensorpeft.nn``, which needs torch) is
imported on first access to one of its names, e.g. ``tp.get_peft_model``.
"""

from . import decomp
from ._version import __version__

# Public names of tensorpeft.nn, resolved lazily (PEP 562) so that `import tensorpeft` needs no torch.
_NN_NAMES = (
    "AdapterConfig",
    "CPConfig",
    "CustomConfig",
    "ExportReport",
    "LoRA2Config",
    "LoRAConfig",
    "LoRTAConfig",
    "LoTRConfig",
    "OrthogonalConfig",
    "RankPruner",
    "TTLoRAConfig",
    "TensorPeftModel",
    "TensorTrainConfig",
    "Tucker2Config",
    "compress_low_rank",
    "get_peft_model",
)

__all__ = ["__version__", "decomp", "nn", *_NN_NAMES]


def __getattr__(name: str):
    if name == "nn" or name in _NN_NAMES:
        import importlib

        nn = importlib.import_module(".nn", __name__)
        return nn if name == "nn" else getattr(nn, name)
    raise AttributeError(f"module 'tensorpeft' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
