"""Backend-agnostic formats of a stacked weight update ΔW (numpy and torch arrays alike)."""

from . import validate
from ._backend import BACKENDS, Ops, jax_x64_enabled, ops_for, ops_named
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
    "BACKENDS",
    "CP",
    "BudgetError",
    "BudgetPlan",
    "Comparison",
    "ComparisonRow",
    "LoRA",
    "Ops",
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
    "jax_x64_enabled",
    "ops_for",
    "ops_named",
    "rank_for_budget",
    "validate",
    "welore_ranks",
]
