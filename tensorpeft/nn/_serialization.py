"""save_pretrained / from_pretrained: ``adapter_config.json`` + ``adapter_model.safetensors``.

The JSON holds the config, the plan of every stack (member layers, indices, shape, heads) and a
SHA-256 of the tensor payload; the safetensors file holds each factor as ``<stack>.<factor>`` in the
format's layout. Files are written to temporary names in the target directory and renamed into place,
so a failure never leaves a half-written adapter. Loading validates everything — JSON, config, plans
against the new base model, tensor names, shapes and checksum — before the base model is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from ._config import AdapterConfig
from ._grouping import StackPlan, plan_stacks

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load_adapter", "save_adapter"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_TYPE = "TENSORPEFT"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_atomic(directory: Path, files: dict[str, bytes]) -> None:
    """Write every file to a temporary name in ``directory``, then rename them all into place."""
    directory.mkdir(parents=True, exist_ok=True)
    temps = {}
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            temps[name] = tmp
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for name, tmp in temps.items():
            os.replace(tmp, directory / name)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


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
        written atomically).

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
    from .. import __version__

    tensors = adapter_tensors(model)
    meta = {
        "peft_type": PEFT_TYPE,
        "tensorpeft_version": __version__,
        "base_model_class": type(model.base_model).__name__,
        "config": model.peft_config.to_dict(),  # raises before anything is written if not serializable
        "stacks": [plan.to_dict() for plan in model.plans],
        "sha256": _digest(tensors),
    }
    payload = safetensors_bytes(tensors, metadata={"format": "pt"})
    write_atomic(Path(path), {WEIGHTS_NAME: payload, CONFIG_NAME: json.dumps(meta, indent=2).encode()})


def _read_meta(path: Path) -> dict:
    file = path / CONFIG_NAME
    if not path.is_dir():
        raise ValueError(f"`path`={str(path)!r} is not a directory containing {CONFIG_NAME} and {WEIGHTS_NAME}.")
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"`path`={str(path)!r} has no {CONFIG_NAME}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}.") from None
    if not isinstance(meta, dict) or meta.get("peft_type") != PEFT_TYPE:
        got = meta.get("peft_type") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{file} must have `peft_type`={PEFT_TYPE!r} (a tensorpeft adapter), got {got!r}.")
    for key in ("config", "stacks", "sha256"):
        if key not in meta:
            raise ValueError(f"{file} lacks the {key!r} entry; expected a file written by save_pretrained.")
    return meta


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ValueError(f"`path` has no {file.name} (expected {file}).")
    try:
        with safe_open(str(file), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{file} is corrupted or truncated and cannot be read as safetensors: {exc}.") from None


def _compare_plans(saved: list[dict], planned, file: Path, model_name: str) -> None:
    saved_plans = [StackPlan.from_dict(d) for d in saved]
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


def load_adapter(cls, base_model, path, is_trainable: bool = False):
    """Validate everything, then wrap ``base_model`` with the saved factors (see the module docstring).

    Parameters
    ----------
    cls : type
        The model class to build, :class:`TensorPeftModel` or a subclass.
    base_model : nn.Module
        A model of the same architecture as the one saved; modified in place.
    path : str or PathLike
        Directory written by :func:`save_adapter`.
    is_trainable : bool
        Whether the loaded factors require gradients; if not, the model is put in eval mode.

    Returns
    -------
    TensorPeftModel
        ``cls(base_model, config, factors=...)`` with the saved config and factors.

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
    path = Path(path)
    meta = _read_meta(path)
    config = AdapterConfig.from_dict(meta["config"])
    planned = plan_stacks(base_model, config)
    _compare_plans(meta["stacks"], planned, path / CONFIG_NAME, type(base_model).__name__)

    tensors = _read_tensors(path / WEIGHTS_NAME)
    if _digest(tensors) != meta["sha256"]:
        raise ValueError(
            f"{path / WEIGHTS_NAME} does not match the checksum recorded in {CONFIG_NAME}; the file is corrupted."
        )
    expected = {f"{plan.name}.{n}": s for plan, fmt in planned for n, s in fmt.factor_shapes.items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path / WEIGHTS_NAME} has missing tensors {missing} and unexpected tensors {extra}.")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"tensor {key!r} of {path / WEIGHTS_NAME} has shape {tuple(tensors[key].shape)}; expected {shape}."
            )

    modules = dict(base_model.named_modules())
    factors = {}
    for plan, fmt in planned:
        device = modules[plan.members[0][0]].weight.device
        factors[plan.name] = {n: tensors[f"{plan.name}.{n}"].to(device) for n in fmt.factor_names}
    model = cls(base_model, config, factors=factors, trainable=is_trainable)
    if not is_trainable:
        model.eval()
    return model
