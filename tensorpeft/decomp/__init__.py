"""Backend-agnostic formats of a stacked weight update ΔW (numpy and torch arrays alike)."""

from ._cp import CP
from ._lora import LoRA
from ._network import TensorNetwork
from ._orthogonal import OrthogonalProjection
from ._tt import TensorTrain, balanced_modes
from ._tucker2 import Tucker2

__all__ = [
    "CP",
    "LoRA",
    "OrthogonalProjection",
    "TensorNetwork",
    "TensorTrain",
    "Tucker2",
    "balanced_modes",
]
