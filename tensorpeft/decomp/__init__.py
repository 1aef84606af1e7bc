"""Backend-agnostic formats of a stacked weight update ΔW (numpy, torch and jax arrays alike)."""

from . import validate
from ._comparison import Comparison, ComparisonRow, compare
from ._cp import CP
from ._lora import LoRA
from ._network import TensorNetwork
from ._orthogonal import OrthogonalProjection
from ._ranks import BudgetError, BudgetPlan, rank_for_budget
from ._sum import Sum
from ._tt import TensorTrain, balanced_modes
from ._tucker2 import Tucker2
from ._welore import Spectrum, WeLoreMatrix, WeLoreResult, welore_ranks

__all__ = [
    "CP",
    "BudgetError",
    "BudgetPlan",
    "Comparison",
    "ComparisonRow",
    "LoRA",
    "OrthogonalProjection",
    "Spectrum",
    "Sum",
    "TensorNetwork",
    "TensorTrain",
    "Tucker2",
    "WeLoreMatrix",
    "WeLoreResult",
    "balanced_modes",
    "compare",
    "rank_for_budget",
    "validate",
    "welore_ranks",
]
