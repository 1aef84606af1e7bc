"""tensorpeft: tensor-decomposition weight updates for parameter-efficient fine-tuning."""

from . import decomp

__version__ = "0.1.0.dev0"
__all__ = ["__version__", "decomp"]
