"""save_pretrained / from_pretrained: ``adapter_config.json`` + ``adapter_model.safetensors``.

The JSON holds the config, the plan of every stack (member layers, indices, shape, heads) and a
SHA-256 of the tensor payload; the safetensors file holds each factor as ``<stack>.<factor>`` in the
format's layout. A save writes both files into a fresh hidden sibling directory and swaps it into
place in one step (:mod:`tensorpeft._safe_io`), so the directory always holds the complete old adapter or the
complete new one, with any other files the user keeps there.

Loading treats both files as untrusted. Every argument is checked first; each file is opened once and
must be a regular file of bounded size (:data:`MAX_CONFIG_BYTES`, :data:`MAX_WEIGHTS_BYTES`); the JSON is
parsed strictly; a custom factory is imported only with ``trust_custom_factories``; the plans are checked
against the new base model and the tensors' names, shapes, checksum, dtypes
(:data:`LOADABLE_DTYPES`) and finiteness — all before the base model is touched. The checksum sits in the
same directory as the tensors, so it catches accidents, not tampering; the other checks do not rely on it.
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

from .._safe_io import parse_json, read_capped, recover, write_directory_atomic
from .._version import __version__
from ._config import AdapterConfig
from ._factories import trusted_factories
from ._grouping import StackPlan, plan_stacks

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


def _check_factor(key: str, tensor: torch.Tensor, where: str) -> None:
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


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    """``{"<stack>.<factor>": tensor}``, detached contiguous CPU copies."""
    return {
        f"{name}.{fname}": p.detach().cpu().contiguous().clone()
        for name, stack in model.tensor_adapters.items()
        for fname, p in stack.factors().items()
    }


def save_adapter(model, path) -> None:
    """Save ``model``'s adapter into directory ``path`` (see the module docstring).

    Parameters
    ----------
    model : TensorPeftModel
        The model whose adapter factors, config and stack plans are saved.
    path : str or PathLike
        Directory for ``adapter_config.json`` and ``adapter_model.safetensors`` (created if needed,
        swapped into place atomically; other files in it are kept).

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
    tensors = adapter_tensors(model)
    for key, tensor in tensors.items():
        _check_factor(key, tensor, "the model")
    meta = {
        "peft_type": PEFT_TYPE,
        "tensorpeft_version": __version__,
        "base_model_class": type(model.base_model).__name__,
        "config": model.peft_config.to_dict(),  # raises before anything is written if not serializable
        "stacks": [plan.to_dict() for plan in model.plans],
        "sha256": _digest(tensors),
    }
    payload = safetensors_bytes(tensors, metadata={"format": "pt"})
    write_directory_atomic(path, {WEIGHTS_NAME: payload, CONFIG_NAME: json.dumps(meta, indent=2).encode()})


def _read_meta(path: Path) -> dict:
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
    for key, kind in (("config", dict), ("stacks", list), ("sha256", str)):
        if key not in meta:
            raise ValueError(f"{file} lacks the {key!r} entry; expected a file written by save_pretrained.")
        if not isinstance(meta[key], kind):
            raise ValueError(f"field `{key}` of {file} must be a JSON {kind.__name__}, got {type(meta[key]).__name__}.")
    for k, entry in enumerate(meta["stacks"]):
        if not isinstance(entry, dict):
            raise ValueError(f"field `stacks[{k}]` of {file} must be a JSON object, got {type(entry).__name__}.")
    if not _SHA256.fullmatch(meta["sha256"]):
        raise ValueError(f"field `sha256` of {file} must be 64 lowercase hex digits, got {meta['sha256'][:80]!r}.")
    return meta


def _read_config(meta: dict, file: Path, trusted) -> AdapterConfig:
    """The saved config; an error names the file (a custom factory is refused unless ``trusted``)."""
    try:
        return AdapterConfig.from_dict(meta["config"], trust_custom_factories=trusted)
    except (TypeError, ValueError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"field `config` of {file} is invalid: {exc}") from None


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        data = read_capped(file, MAX_WEIGHTS_BYTES)
    except FileNotFoundError:
        raise ValueError(f"`path` has no {file.name} (expected {file}).") from None
    try:
        return safetensors_load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(f"{file} is corrupted or truncated and cannot be read as safetensors: {exc}.") from None


def _check_tensors(tensors: dict, meta: dict, planned, file: Path) -> None:
    """Checksum, names, shapes, dtypes (one per stack) and finiteness of the loaded tensors."""
    if _digest(tensors) != meta["sha256"]:
        raise ValueError(f"{file} does not match the checksum recorded in {CONFIG_NAME}; the file is corrupted.")
    expected = {f"{plan.name}.{n}": s for plan, fmt in planned for n, s in fmt.factor_shapes.items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{file} has missing tensors {missing} and unexpected tensors {extra}.")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"tensor {key!r} of {file} has shape {tuple(tensors[key].shape)}; expected {shape}.")
        _check_factor(key, tensors[key], str(file))
    for plan, fmt in planned:
        dtypes = {str(tensors[f"{plan.name}.{n}"].dtype) for n in fmt.factor_names}
        if len(dtypes) > 1:
            raise ValueError(f"the factors of stack {plan.name!r} in {file} mix dtypes {sorted(dtypes)}.")


def _compare_plans(saved: list[dict], planned, file: Path, model_name: str) -> None:
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
        for field in ("out_features", "in_features", "stack", "heads", "members"):
            a, b = getattr(old, field), getattr(new, field)
            if a != b:
                shown_a = a if field != "members" else [n for n, _ in a][:4]
                shown_b = b if field != "members" else [n for n, _ in b][:4]
                raise ValueError(
                    f"stack {old.name!r} of {file} has `{field}`={shown_a}, but the base {model_name} gives "
                    f"{shown_b}; the adapter was saved for a model of another shape."
                )


def _check_load_args(cls, base_model, path, is_trainable, trust_custom_factories):
    """Validate every argument of :func:`load_adapter` before anything is read or touched."""
    from ._model import TensorPeftModel

    if not (isinstance(cls, type) and issubclass(cls, TensorPeftModel)):
        raise TypeError(f"`cls` must be TensorPeftModel or a subclass, got {cls!r}.")
    if not isinstance(base_model, nn.Module):
        raise TypeError(f"`base_model` must be a torch.nn.Module, got {type(base_model).__name__}.")
    if isinstance(base_model, TensorPeftModel):
        raise TypeError("`base_model` is already a TensorPeftModel; load the adapter onto a plain base model.")
    if not isinstance(is_trainable, bool):
        raise TypeError(f"`is_trainable` must be True or False, got {is_trainable!r} ({type(is_trainable).__name__}).")
    return check_directory_path(path), trusted_factories(trust_custom_factories)


def _finish_interrupted_save(path: Path) -> None:
    try:
        recover(os.path.realpath(path))
    except OSError as exc:
        raise ValueError(f"`path`={str(path)!r} has an interrupted save that cannot be completed: {exc}.") from None


def load_adapter(cls, base_model, path, is_trainable: bool = False, *, trust_custom_factories=False):
    """Validate everything, then wrap ``base_model`` with the saved factors (see the module docstring).

    Parameters
    ----------
    cls : type
        The model class to build, :class:`TensorPeftModel` or a subclass.
    base_model : nn.Module
        A model of the same architecture as the one saved; modified in place, and only once every
        check has passed.
    path : str or PathLike
        Directory written by :func:`save_adapter`.
    is_trainable : bool
        Whether the loaded factors require gradients; if not, the model is put in eval mode.
    trust_custom_factories : bool or list of (callable or str)
        For a :class:`CustomConfig` adapter: ``True`` imports and calls the factory the file names, a list
        allows only the factories in it (functions or ``"module:qualname"``). The default refuses it
        before importing anything. Built-in formats never need it.

    Returns
    -------
    TensorPeftModel
        ``cls(base_model, config, factors=...)`` with the saved config and factors.

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
    ...     loaded = tp.nn.load_adapter(tp.nn.TensorPeftModel, fresh, path)
    >>> loaded.training, loaded.get_nb_trainable_parameters()
    (False, (0, 616))
    """
    path, trusted = _check_load_args(cls, base_model, path, is_trainable, trust_custom_factories)
    _finish_interrupted_save(path)
    meta = _read_meta(path)
    config = _read_config(meta, path / CONFIG_NAME, trusted)
    planned = plan_stacks(base_model, config)
    _compare_plans(meta["stacks"], planned, path / CONFIG_NAME, type(base_model).__name__)
    tensors = _read_tensors(path / WEIGHTS_NAME)
    _check_tensors(tensors, meta, planned, path / WEIGHTS_NAME)

    modules = dict(base_model.named_modules())
    factors = {}
    for plan, fmt in planned:
        device = modules[plan.members[0][0]].weight.device
        factors[plan.name] = {n: tensors[f"{plan.name}.{n}"].to(device) for n in fmt.factor_names}
    model = cls(base_model, config, factors=factors, trainable=is_trainable, _planned=planned)
    if not is_trainable:
        model.eval()
    return model
