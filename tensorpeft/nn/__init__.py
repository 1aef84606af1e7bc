"""PEFT layer: tensor-decomposition adapters injected into torch / transformers models.

Thin torch modules over :mod:`tensorpeft.decomp`: a config says which linear layers to adapt and with
which format; matched layers are grouped into stacks that share factors; each stack is one
:class:`AdapterStack` owning the factor parameters; each adapted layer becomes an
:class:`AdapterLinear` that adds its slice of the stack's update, applied factored.

Files, one concern each: ``_config`` (configs), ``_fields`` (checks of config fields),
``_selector`` (the ``target_modules`` / ``exclude_modules`` arguments), ``_factories`` (a custom
config's factory: saved name, import, trust), ``_linear`` (plain linear layers: which adapt, shape,
weight), ``_targets`` (matching), ``_grouping`` (stacks and their plans), ``_init`` (zero / SVD
initialization), ``_kernels`` (factored forward per format), ``_stack``, ``_layer`` (PEFT's tuner
layer), ``_model`` (PEFT's tuner), ``_peft_registry`` (the ``PeftType.TENSORPEFT`` member and
``register_peft_method``), ``_serialization`` (save/load, on the root's ``_safe_io``: bounded reads,
atomic writes), ``_export`` (servable LoRA export), ``_pruning`` (LoRA²'s rank pruner), ``_compress``
(WeLore compression).
"""

from ._compress import LowRankLinear, compress_low_rank
from ._config import *  # noqa: F403 - one config per format; the list is _config.__all__
from ._config import __all__ as _config_names
from ._export import ExportReport, export_lora
from ._grouping import StackPlan, plan_stacks
from ._layer import BASE, AdapterLinear
from ._model import TensorPeftModel, get_peft_model
from ._peft_registry import register as _register
from ._pruning import RankPruner
from ._serialization import load_adapter, save_adapter
from ._stack import AdapterStack

_register()  # tensorpeft's configs and tuner become PEFT's method TENSORPEFT

__all__ = [
    *_config_names,
    "BASE",
    "AdapterLinear",
    "AdapterStack",
    "ExportReport",
    "LowRankLinear",
    "RankPruner",
    "StackPlan",
    "TensorPeftModel",
    "compress_low_rank",
    "export_lora",
    "get_peft_model",
    "load_adapter",
    "plan_stacks",
    "save_adapter",
]
