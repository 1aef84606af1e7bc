"""Adapter files: ``adapter_config.json`` + ``adapter_model.safetensors``, PEFT's layout, read strictly.

The JSON is the config's fields at top level, as PEFT writes a config (``peft_type`` ``"TENSORPEFT"``,
``format``, ``task_type``, ``target_modules``, ``rank``, ...), plus a ``"tensorpeft"`` entry: the
version, the plan of every stack (member layers, indices, shape, heads) and a SHA-256 of the tensors.
The safetensors file holds each factor as ``<stack>.<factor>`` in the format's layout, and PEFT's keys
for ``modules_to_save`` (``base_model.model.classifier.weight``, ...). Frozen factors (a format's
``frozen_names``, buffers of the stack) are saved like the others rather than regenerated from the seed:
the file alone reproduces the adapter exactly (a regeneration would tie it to the generator of the
library version that drew it), and a loaded constant goes through the same checks of name, shape,
dtype, finiteness and checksum as a trained factor. The cost is their size (VeRA: ``r (d_in + d_out)``
per stack). Files of tensorpeft before 0.1
(the config nested under ``"config"``) load too.

Two ways to write them: :func:`save_adapter` writes both files into a fresh hidden sibling directory
and swaps it into place in one step (:mod:`tensorpeft._safe_io`), so the directory always holds the
complete old adapter or the complete new one; ``PeftModel.save_pretrained`` (what ``Trainer`` calls)
writes the weights with PEFT's code and then the config through :meth:`AdapterConfig.save_pretrained`
(:func:`write_config`), whose checksum makes a weights file that does not belong to its config
detectable.

Loading treats both files as untrusted. Every argument is checked first; each file is opened once and
must be a regular file of bounded size (:data:`MAX_CONFIG_BYTES`, :data:`MAX_WEIGHTS_BYTES`); the JSON is
parsed strictly; a custom factory is imported only with ``trust_custom_factories``; the plans are checked
against the new base model and the tensors' names, shapes, checksum, dtypes
(:data:`LOADABLE_DTYPES`) and finiteness — all before the base model is touched, on
:func:`load_adapter`'s path and on PEFT's (``PeftModel.from_pretrained``: the tuner validates the
directory before it injects, see :func:`read_factors`). The checksum sits in the same directory as the
tensors, so it catches accidents, not tampering; the other checks do not rely on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .._safe_io import parse_json, read_capped, recover, write_directory_atomic, write_file_atomic
from .._version import __version__
from ._config import AdapterConfig
from ._factories import trusted_factories
from ._grouping import StackPlan, plan_stacks
from ._model import tuner_of

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load_adapter", "save_adapter"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_TYPE = "TENSORPEFT"
MAX_CONFIG_BYTES = 16 * 2**20
"""Largest ``adapter_config.json`` that is read (16 MiB)."""
MAX_WEIGHTS_BYTES = 16 * 2**30
"""Largest ``adapter_model.safetensors`` that is read (16 GiB)."""
LOADABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Dtypes adapter factors may have in a saved file; they are kept as saved, never converted."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_atomic(directory: Path, files: dict[str, bytes]) -> None:
    """Make ``directory`` hold ``files`` in one atomic step (:func:`tensorpeft._safe_io.write_directory_atomic`)."""
    write_directory_atomic(directory, files)


def check_directory_path(path) -> Path:
    """``path`` as a directory to read or write: a non-empty str or PathLike, no NUL, no existing file on the way.

    Raises TypeError/ValueError naming ``path``; used by save, load and :func:`~._export.export_lora`.
    """
    if isinstance(path, bytes) or not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike directory, got {path!r} ({type(path).__name__}).")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"`path` must be a str or os.PathLike directory, got {path!r} (bytes).")
    if not text or "\0" in text:
        raise ValueError(f"`path` must be a non-empty directory name without NUL characters, got {text!r}.")
    directory = Path(text)
    for parent in (directory, *directory.parents):
        try:
            is_file = parent.exists() and not parent.is_dir()
        except OSError as exc:  # e.g. a name too long for the file system
            raise ValueError(f"`path`={text!r} cannot be used as a directory: {exc}.") from None
        if is_file:
            raise ValueError(f"`path`={text!r} is not a directory: {str(parent)!r} is an existing file.")
    return directory


def check_factor(key: str, tensor: torch.Tensor, where: str) -> None:
    """Refuse dtypes the forward cannot run and non-finite values (``where`` names the file or model)."""
    if tensor.dtype not in LOADABLE_DTYPES:
        raise ValueError(
            f"tensor {key!r} of {where} has dtype {tensor.dtype}; adapter factors must be one of "
            f"{[str(d).removeprefix('torch.') for d in LOADABLE_DTYPES]}."
        )
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"tensor {key!r} of {where} has {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}; "
            "merging it would write them into the base weights."
        )


def adapter_tensors(model, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """``{"<stack>.<factor>": tensor}`` of one adapter (default: the active one), detached contiguous CPU copies.

    With a ``peft.PeftModel``, PEFT's ``modules_to_save`` tensors are included under PEFT's keys.
    """
    tuner = tuner_of(model)
    name = adapter_name or tuner._active_name
    out = {
        f"{stack_name}.{fname}": p.detach().cpu().contiguous().clone()
        for stack_name, stack in tuner.tensorpeft_stacks[name].items()
        for fname, p in stack.factors().items()
    }
    if model is not tuner and getattr(tuner.peft_config[name], "modules_to_save", None):
        from peft.utils import get_peft_model_state_dict

        for key, value in get_peft_model_state_dict(model, adapter_name=name).items():
            if key not in out:
                out[key] = value.detach().cpu().contiguous().clone()
    return out


def _meta(config, tensors: dict | None, plans) -> dict:
    """The JSON of ``config`` with the ``"tensorpeft"`` entry (raises before writing if not serializable)."""
    data = config.to_dict()
    data.pop("tensorpeft", None)
    data["inference_mode"] = True  # as PEFT: a saved adapter loads frozen unless asked otherwise
    entry = {"version": __version__}
    if plans is not None:
        entry["stacks"] = [plan.to_dict() for plan in plans]
    if tensors is not None:
        entry["sha256"] = _digest(tensors)
    data["tensorpeft"] = entry
    json.dumps(data)
    return data


def write_config(config, directory, auto_mapping=None) -> None:
    """``AdapterConfig.save_pretrained``: the config JSON, with plans and the checksum of the weights beside it.

    ``PeftModel.save_pretrained`` has written ``adapter_model.safetensors`` just before; its checksum
    goes into the JSON (no checksum if there is no such file). One file, written atomically.
    """
    directory = check_directory_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_NAME
    tensors = _read_tensors(weights) if weights.is_file() else None
    data = _meta(config, tensors, getattr(config, "_tp_plans", None))
    if auto_mapping is not None:
        data["auto_mapping"] = auto_mapping
    write_file_atomic(directory / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True).encode())


def save_adapter(model, path, adapter_name: str | None = None) -> None:
    """Save one adapter of ``model`` into directory ``path``, both files swapped in atomically.

    Parameters
    ----------
    model : peft.PeftModel or TensorPeftModel
        The model whose adapter factors, config and stack plans are saved (with a ``PeftModel``, also
        PEFT's ``modules_to_save``).
    path : str or PathLike
        Directory for ``adapter_config.json`` and ``adapter_model.safetensors`` (created if needed,
        swapped into place atomically; other files in it are kept).
    adapter_name : str, optional
        Which adapter (default: the active one).

    Raises
    ------
    TypeError, ValueError
        Before anything is written: a bad ``path``, a factor of a dtype outside
        :data:`LOADABLE_DTYPES` or with NaN/inf values, a config that cannot be saved.
    OSError
        From the file system; ``path`` then still holds its previous content.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> with tempfile.TemporaryDirectory() as path:
    ...     tp.nn.save_adapter(model, path)
    ...     sorted(os.listdir(path))
    ['adapter_config.json', 'adapter_model.safetensors']
    """
    path = check_directory_path(path)
    tuner = tuner_of(model)
    tuner._check_live()
    name = adapter_name or tuner._active_name
    if name not in tuner.tensorpeft_stacks:
        raise ValueError(
            f"`adapter_name`={name!r} is not an adapter of this model; it has {sorted(tuner.peft_config)}."
        )
    tensors = adapter_tensors(model, name)
    for key, tensor in tensors.items():
        check_factor(key, tensor, "the model")
    config = tuner.peft_config[name]
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(tuner.model, "name_or_path", None) or None
    meta = _meta(config, tensors, tuner._plans[name])
    payload = safetensors_bytes(tensors, metadata={"format": "pt"})
    write_directory_atomic(path, {WEIGHTS_NAME: payload, CONFIG_NAME: json.dumps(meta, indent=2).encode()})


def _read_meta(path: Path) -> dict:
    """The parsed JSON, normalized to ``{"config", "stacks", "sha256"}`` (``stacks``/``sha256`` may be None)."""
    file = path / CONFIG_NAME
    if not path.is_dir():
        raise ValueError(f"`path`={str(path)!r} is not a directory containing {CONFIG_NAME} and {WEIGHTS_NAME}.")
    try:
        meta = parse_json(read_capped(file, MAX_CONFIG_BYTES), file)
    except FileNotFoundError:
        raise ValueError(f"`path`={str(path)!r} has no {CONFIG_NAME}.") from None
    if not isinstance(meta, dict) or meta.get("peft_type") != PEFT_TYPE:
        got = meta.get("peft_type") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{file} must have `peft_type`={PEFT_TYPE!r} (a tensorpeft adapter), got {got!r}.")
    if "config" in meta:  # the layout before the PEFT integration: {"config": {...}, "stacks", "sha256"}
        for key, kind in (("config", dict), ("stacks", list), ("sha256", str)):
            if key not in meta:
                raise ValueError(f"{file} lacks the {key!r} entry; expected a file written by save_pretrained.")
            if not isinstance(meta[key], kind):
                raise ValueError(
                    f"field `{key}` of {file} must be a JSON {kind.__name__}, got {type(meta[key]).__name__}."
                )
        out = {"config": meta["config"], "stacks": meta["stacks"], "sha256": meta["sha256"]}
    else:
        config = {k: v for k, v in meta.items() if k != "tensorpeft"}
        entry = meta.get("tensorpeft", {})
        if not isinstance(entry, dict):
            raise ValueError(f"field `tensorpeft` of {file} must be a JSON object, got {type(entry).__name__}.")
        out = {"config": config, "stacks": entry.get("stacks"), "sha256": entry.get("sha256")}
        for key, kind in (("stacks", list), ("sha256", str)):
            if out[key] is not None and not isinstance(out[key], kind):
                raise ValueError(
                    f"field `tensorpeft.{key}` of {file} must be a JSON {kind.__name__}, got {type(out[key]).__name__}."
                )
    for k, entry in enumerate(out["stacks"] or []):
        if not isinstance(entry, dict):
            raise ValueError(f"field `stacks[{k}]` of {file} must be a JSON object, got {type(entry).__name__}.")
    if out["sha256"] is not None and not _SHA256.fullmatch(out["sha256"]):
        raise ValueError(f"field `sha256` of {file} must be 64 lowercase hex digits, got {out['sha256'][:80]!r}.")
    return out


def _read_config(meta: dict, file: Path, trusted) -> AdapterConfig:
    """The saved config; an error names the file (a custom factory is refused unless ``trusted``)."""
    data = dict(meta["config"])
    data.pop("auto_mapping", None)  # PEFT's hint for AutoPeftModel, re-derived on save
    try:
        return AdapterConfig.from_dict(data, trust_custom_factories=trusted)
    except (TypeError, ValueError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"the config in {file} is invalid: {exc}") from None  # flat or under `config`: both layouts


def read_config(path, trust_custom_factories=False) -> AdapterConfig:
    """``AdapterConfig.from_pretrained``: the strictly read config of directory ``path``.

    The config remembers ``path``, so that the tuner validates the weights there against the model
    before it injects anything (``PeftModel.from_pretrained`` builds the model from this config, then
    loads the weights).
    """
    trusted = trusted_factories(trust_custom_factories)
    path = check_directory_path(path)
    _finish_interrupted_save(path)
    config = _read_config(_read_meta(path), path / CONFIG_NAME, trusted)
    config._tp_source = path
    return config


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        data = read_capped(file, MAX_WEIGHTS_BYTES)
    except FileNotFoundError:
        raise ValueError(f"`path` has no {file.name} (expected {file}).") from None
    try:
        return safetensors_load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(f"{file} is corrupted or truncated and cannot be read as safetensors: {exc}.") from None


def is_factor_key(key: str) -> bool:
    """``<stack>.<factor>`` keys are tensorpeft's; PEFT's own (``modules_to_save``) start with ``base_model.``."""
    return key.count(".") == 1 and not key.startswith("base_model.")


def _check_tensors(tensors: dict, meta: dict, planned, file: Path) -> None:
    """Checksum, names, shapes, dtypes (one per stack) and finiteness of the loaded tensors."""
    if meta["sha256"] is not None and _digest(tensors) != meta["sha256"]:
        raise ValueError(f"{file} does not match the checksum recorded in {CONFIG_NAME}; the file is corrupted.")
    expected = {f"{plan.name}.{n}": s for plan, fmt in planned for n, s in fmt.factor_shapes.items()}
    ours = {k for k in tensors if is_factor_key(k)}
    missing, extra = sorted(set(expected) - ours), sorted(ours - set(expected))
    extra += sorted(k for k in tensors if not is_factor_key(k) and not k.startswith("base_model.model."))
    if missing or extra:
        raise ValueError(f"{file} has missing tensors {missing} and unexpected tensors {extra}.")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"tensor {key!r} of {file} has shape {tuple(tensors[key].shape)}; expected {shape}.")
    for key, tensor in tensors.items():
        check_factor(key, tensor, str(file))
    for plan, fmt in planned:
        dtypes = {str(tensors[f"{plan.name}.{n}"].dtype) for n in fmt.factor_names}
        if len(dtypes) > 1:
            raise ValueError(f"the factors of stack {plan.name!r} in {file} mix dtypes {sorted(dtypes)}.")


def check_state_dict(tensors: dict, stacks, where: str) -> None:
    """Names, shapes, dtypes and finiteness of ``<stack>.<factor>`` tensors against an adapter's live stacks.

    What ``PeftModel.load_adapter`` loads goes through this (the tuner's
    ``_remap_adapter_state_dict_for_load``) before ``load_state_dict`` copies anything.
    """
    expected = {f"{name}.{n}": tuple(p.shape) for name, stack in stacks.items() for n, p in stack.factors().items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{where} has missing tensors {missing} and unexpected tensors {extra}.")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"tensor {key!r} of {where} has shape {tuple(tensors[key].shape)}; expected {shape}.")
        check_factor(key, tensors[key], where)


def _shown(value, field: str):
    """A plan field for an error message: the first member names, the first row ranges, else the value."""
    if field == "members":
        return [n for n, _ in value][:4]
    if field == "rows" and value is not None:
        return [list(r) for r in value][:4]
    return value


def _compare_plans(saved, planned, file: Path, model_name: str) -> None:
    if saved is None:  # a config written without the model's plans: names and shapes are still checked
        return
    try:
        saved_plans = [StackPlan.from_dict(d) for d in saved]
    except ValueError as exc:
        raise ValueError(f"field `stacks` of {file} is invalid: {exc}") from None
    now = [plan for plan, _ in planned]
    if [p.name for p in saved_plans] != [p.name for p in now]:
        raise ValueError(
            f"{file} was saved with stacks {[p.name for p in saved_plans]}, but on this {model_name} the config "
            f"gives stacks {[p.name for p in now]}; the adapter belongs to another model."
        )
    for old, new in zip(saved_plans, now, strict=True):
        for field in ("out_features", "in_features", "stack", "heads", "members", "rows"):
            a, b = getattr(old, field), getattr(new, field)
            if a != b:
                shown_a, shown_b = (_shown(a, field), _shown(b, field))
                raise ValueError(
                    f"stack {old.name!r} of {file} has `{field}`={shown_a}, but the base {model_name} gives "
                    f"{shown_b}; the adapter was saved for a model of another shape."
                )


def _saved_module_state(model: nn.Module, name: str):
    """The parameter or persistent buffer ``name`` (``"classifier.weight"``) of the model's own modules, or None.

    Adapted layers count as their base layer and PEFT's ``modules_to_save`` wrappers as their original
    module, so the check is the same on a plain base and on a model being injected into.
    """
    from ._model import _plain_modules

    module_name, _, attr = name.rpartition(".")
    module = _plain_modules(model).get(module_name)
    module = getattr(module, "original_module", module)  # peft's ModulesToSaveWrapper
    if not isinstance(module, nn.Module):
        return None
    if attr in module._parameters:
        return module._parameters[attr]
    if attr in module._buffers and attr not in module._non_persistent_buffers_set:
        return module._buffers[attr]
    return None


def _check_saved_modules(tensors: dict, base_model: nn.Module, file: Path) -> None:
    """PEFT's ``modules_to_save`` tensors must name parameters of the base model, of their shapes."""
    for key, tensor in tensors.items():
        if is_factor_key(key):
            continue
        name = key.removeprefix("base_model.model.")
        param = _saved_module_state(base_model, name)
        if param is None:
            raise ValueError(f"tensor {key!r} of {file} names no parameter of {type(base_model).__name__}.")
        if tuple(param.shape) != tuple(tensor.shape):
            raise ValueError(
                f"tensor {key!r} of {file} has shape {tuple(tensor.shape)}; the model's is {tuple(param.shape)}."
            )


def read_factors(path: Path, planned, model: nn.Module) -> dict:
    """Read and check the weights of adapter directory ``path`` against ``planned``: ``{stack: {factor: tensor}}``.

    Called by the tuner before it injects (PEFT's ``from_pretrained``/``load_adapter`` path), so that a
    bad file leaves the model untouched; PEFT then loads the same file into the built stacks. The
    ``modules_to_save`` tensors are checked too (PEFT would copy a wrong shape only after injecting).
    """
    meta = _read_meta(path)
    _compare_plans(meta["stacks"], planned, path / CONFIG_NAME, type(model).__name__)
    tensors = _read_tensors(path / WEIGHTS_NAME)
    _check_tensors(tensors, meta, planned, path / WEIGHTS_NAME)
    _check_saved_modules(tensors, model, path / WEIGHTS_NAME)
    return _factors_on_devices(tensors, planned, model)


def _factors_on_devices(tensors, planned, model) -> dict:
    from ._model import _plain_modules

    modules = _plain_modules(model)
    factors = {}
    for plan, fmt in planned:
        device = modules[plan.members[0][0]].weight.device
        factors[plan.name] = {n: tensors[f"{plan.name}.{n}"].to(device) for n in fmt.factor_names}
    return factors


def _check_load_args(base_model, path, is_trainable, adapter_name, trust_custom_factories):
    """Validate every argument of :func:`load_adapter` before anything is read or touched."""
    from peft import PeftModel

    from ._layer import AdapterLinear
    from ._model import TensorPeftModel, _check_adapter_name

    if not isinstance(base_model, nn.Module):
        raise TypeError(f"`base_model` must be a torch.nn.Module, got {type(base_model).__name__}.")
    if isinstance(base_model, PeftModel | TensorPeftModel) or any(
        isinstance(m, AdapterLinear) for m in base_model.modules()
    ):
        raise TypeError(
            "`base_model` already has tensorpeft adapters; load onto a plain base model, or use "
            "model.load_adapter(path, adapter_name=...) to add one."
        )
    if not isinstance(is_trainable, bool):
        raise TypeError(f"`is_trainable` must be True or False, got {is_trainable!r} ({type(is_trainable).__name__}).")
    _check_adapter_name(adapter_name)
    return check_directory_path(path), trusted_factories(trust_custom_factories)


def _finish_interrupted_save(path: Path) -> None:
    try:
        recover(os.path.realpath(path))
    except OSError as exc:
        raise ValueError(f"`path`={str(path)!r} has an interrupted save that cannot be completed: {exc}.") from None


def load_adapter(
    base_model, path, is_trainable: bool = False, *, adapter_name: str = "default", trust_custom_factories=False
):
    """Validate everything, then wrap ``base_model`` with the saved adapter: a ``peft.PeftModel``.

    Parameters
    ----------
    base_model : nn.Module
        A model of the same architecture as the one saved; modified in place, and only once every
        check has passed.
    path : str or PathLike
        Directory written by :func:`save_adapter` or ``PeftModel.save_pretrained``.
    is_trainable : bool
        Whether the loaded factors require gradients; if not, the model is put in eval mode.
    adapter_name : str
        Name of the loaded adapter (``"default"``).
    trust_custom_factories : bool or list of (callable or str)
        For a :class:`CustomConfig` adapter: ``True`` imports and calls the factory the file names, a list
        allows only the factories in it (functions or ``"module:qualname"``). The default refuses it
        before importing anything. Built-in formats never need it.

    Returns
    -------
    peft.PeftModel
        The task subclass of the saved ``task_type`` (``PeftModel`` without one), as
        ``peft.PeftModel.from_pretrained`` returns.

    Raises
    ------
    TypeError, ValueError
        With ``base_model`` unchanged: a bad argument, a file that is not a regular file, too large,
        not strict JSON or not a tensorpeft adapter, an untrusted custom factory, plans that do not
        match ``base_model``, tensors of wrong names, shapes or checksum, a dtype outside
        :data:`LOADABLE_DTYPES`, mixed dtypes in a stack, NaN or inf values.

    Notes
    -----
    The factors keep the dtype they were saved in (float16, bfloat16, float32 or float64; anything
    else is refused, never converted) and are moved to the device of their stack's first layer.

    Examples
    --------
    >>> import tempfile
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> fresh = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> with tempfile.TemporaryDirectory() as path:
    ...     tp.nn.save_adapter(model, path)
    ...     loaded = tp.nn.load_adapter(fresh, path)
    >>> type(loaded).__name__, loaded.training, loaded.get_nb_trainable_parameters()
    ('PeftModel', False, (0, 616))
    """
    from peft import PeftModel
    from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING
    from peft.utils import set_peft_model_state_dict

    path, trusted = _check_load_args(base_model, path, is_trainable, adapter_name, trust_custom_factories)
    _finish_interrupted_save(path)
    meta = _read_meta(path)
    config = _read_config(meta, path / CONFIG_NAME, trusted)
    planned = plan_stacks(base_model, config)
    _compare_plans(meta["stacks"], planned, path / CONFIG_NAME, type(base_model).__name__)
    tensors = _read_tensors(path / WEIGHTS_NAME)
    _check_tensors(tensors, meta, planned, path / WEIGHTS_NAME)
    _check_saved_modules(tensors, base_model, path / WEIGHTS_NAME)

    config.inference_mode = not is_trainable
    config._tp_planned = planned
    config._tp_factors = _factors_on_devices(tensors, planned, base_model)
    cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)
    model = cls(base_model, config, adapter_name)
    saved_modules = {k: v for k, v in tensors.items() if not is_factor_key(k)}
    if saved_modules:
        ours = {k: v for k, v in tensors.items() if is_factor_key(k)}
        set_peft_model_state_dict(model, {**ours, **saved_modules}, adapter_name=adapter_name)
    if not is_trainable:
        model.eval()
    return model
