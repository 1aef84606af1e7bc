"""PEFT layer: tensor-decomposition adapters injected into torch / transformers models.

Thin torch modules over :mod:`tensorpeft.decomp`: a config says which linear layers to adapt and with
which format; matched layers are grouped into stacks that share factors; each stack is one
:class:`AdapterStack` owning the factor parameters; each adapted layer becomes an
:class:`AdapterLinear` that adds its slice of the stack's update, applied factored.

Files, one concern each: ``_config`` (configs), ``_selector`` (the ``target_modules`` /
``exclude_modules`` arguments), ``_factories`` (a custom config's factory: saved name, import, trust),
``_linear`` (plain linear layers: which adapt, shape, weight), ``_targets`` (matching), ``_grouping``
(stacks and their plans), ``_init`` (zero / SVD initialization), ``_kernels`` (factored forward per
format), ``_stack``, ``_layer``, ``_model`` (the wrapper), ``_serialization`` (save/load, on the
root's ``_safe_io``: bounded reads, atomic writes), ``_export`` (PEFT LoRA export), ``_pruning`` (LoRA²'s rank pruner),
``_compress`` (WeLore compression).
"""

from ._compress import LowRankLinear, compress_low_rank
from ._config import (
    AdapterConfig,
    CPConfig,
    CustomConfig,
    LoRA2Config,
    LoRAConfig,
    LoRTAConfig,
    LoTRConfig,
    OrthogonalConfig,
    TensorTrainConfig,
    TTLoRAConfig,
    Tucker2Config,
)
from ._export import ExportReport, export_lora
from ._grouping import StackPlan, plan_stacks
from ._layer import AdapterLinear
from ._model import TensorPeftModel, get_peft_model
from ._pruning import RankPruner
from ._serialization import load_adapter, save_adapter
from ._stack import AdapterStack

__all__ = [
    "AdapterConfig",
    "AdapterLinear",
    "AdapterStack",
    "CPConfig",
    "CustomConfig",
    "ExportReport",
    "LoRA2Config",
    "LoRAConfig",
    "LoRTAConfig",
    "LoTRConfig",
    "LowRankLinear",
    "OrthogonalConfig",
    "RankPruner",
    "StackPlan",
    "TTLoRAConfig",
    "TensorPeftModel",
    "TensorTrainConfig",
    "Tucker2Config",
    "compress_low_rank",
    "export_lora",
    "get_peft_model",
    "load_adapter",
    "plan_stacks",
    "save_adapter",
]
