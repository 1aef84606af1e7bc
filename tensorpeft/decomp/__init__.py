"""Backend-agnostic formats of a stacked weight update ΔW (numpy and torch arrays alike)."""

from ._cp import CP
from ._lora import LoRA
from ._network import TensorNetwork
from ._orthogonal import OrthogonalProjection
from ._ranks import BudgetError, Comparison, ComparisonRow, compare, rank_for_budget
from ._tt import TensorTrain, balanced_modes
from ._tucker2 import Tucker2
from ._welore import Spectrum, WeLoreMatrix, WeLoreResult, welore_ranks

__all__ = [
    "CP",
    "BudgetError",
    "Comparison",
    "ComparisonRow",
    "LoRA",
    "OrthogonalProjection",
    "Spectrum",
    "TensorNetwork",
    "TensorTrain",
    "Tucker2",
    "WeLoreMatrix",
    "WeLoreResult",
    "balanced_modes",
    "compare",
    "rank_for_budget",
    "welore_ranks",
]
