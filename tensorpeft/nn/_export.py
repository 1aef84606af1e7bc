"""export_lora: any tensorpeft adapter as a standard PEFT LoRA adapter directory.

Every slice is a LoRA product ``B A`` given by its format (``format.lora_factors``, see
``docs/guide/protocol.rst``): Tucker-2 ``(A G_s)(Bᵀ)`` (or ``(A)(G_s Bᵀ)`` when ``r_out < r_in``), CP
``(out ⊙ heads ⊙ c_s)(inᵀ)``, LoRA² ``(U1 U2 diag λ)(V2 V1)``. A tensor train ordered input modes then
output modes has slice rank at most the bond between the two halves, so it is exported exactly at that
rank from the SVD of the slice. ``rank=k`` truncates every slice to its best rank-``k`` approximation
(SVD of the product via two QRs, no dense matrix for the structured formats).

The scaling is folded into ``lora_B`` and the PEFT config sets ``lora_alpha = r`` (per-module ranks in
``rank_pattern`` / ``alpha_pattern`` when they differ), so PEFT's ``scaling`` is exactly 1.
"""

from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass, field

import torch
from safetensors.torch import save as safetensors_bytes

from ._serialization import CONFIG_NAME, WEIGHTS_NAME, check_directory_path, write_atomic

__all__ = ["ExportReport", "export_lora", "lora_factors"]


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_lora` wrote.

    Attributes
    ----------
    path : str
        The adapter directory.
    ranks : dict[str, int]
        LoRA rank of each module.
    errors : dict[str, float]
        ``‖scaling·ΔW − B A‖_F / ‖scaling·ΔW‖_F`` of each module, measured in float64 on the written
        (fp32) factors: round-off for exact exports, the truncation error otherwise.

    Examples
    --------
    >>> import tempfile
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> with tempfile.TemporaryDirectory() as path:
    ...     report = tp.nn.export_lora(model, path)
    >>> report.ranks, report.max_error < 1e-6
    ({'0': 2, '2': 2}, True)
    """

    path: str
    ranks: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        """Largest relative error over the modules."""
        return max(self.errors.values(), default=0.0)


def lora_factors(stack, index: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B (out, R), A (R, in))`` in float64 with ``B A = scaling · ΔW[index]``.

    The format's own :meth:`~tensorpeft.decomp.TensorNetwork.lora_factors` (exact closed forms for LoRA,
    Tucker-2, CP and LoRA²; the SVD of the slice at :attr:`~tensorpeft.decomp.TensorNetwork.slice_rank`
    for tensor trains and custom networks), on float64 copies, with the scaling folded into ``B``.
    """
    f = {n: p.detach().to(torch.float64) for n, p in stack.factors().items()}
    B, A = stack.format.lora_factors(f, index)
    return B * stack.scaling, A


def truncate(B: torch.Tensor, A: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors of ``B A`` (QR of both sides, SVD of the small core)."""
    if rank >= B.shape[1]:
        return B, A
    qb, rb = torch.linalg.qr(B)
    qa, ra = torch.linalg.qr(A.T)
    u, sv, vt = torch.linalg.svd(rb @ ra.T)
    root = sv[:rank].sqrt()
    return qb @ (u[:, :rank] * root), (root[:, None] * vt[:rank]) @ qa.T


def _relative_error(reference: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> float:
    ref = float(torch.linalg.matrix_norm(reference))
    err = float(torch.linalg.matrix_norm(reference - B.to(torch.float64) @ A.to(torch.float64)))
    return err / ref if ref > 0 else err


def _check_model(model) -> None:
    """``model`` must be a live :class:`TensorPeftModel`."""
    from ._model import TensorPeftModel

    if not isinstance(model, TensorPeftModel):
        raise TypeError(f"`model` must be a TensorPeftModel, got {type(model).__name__}.")
    if model._unloaded:
        raise ValueError("`model` was unloaded (merge_and_unload/unload); it has no adapter left to export.")


def _check_rank(rank) -> int | None:
    """``None`` or a positive int."""
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"`rank` must be a positive integer or None, got {rank!r} ({type(rank).__name__}).")
    if rank < 1:
        raise ValueError(f"`rank` must be a positive integer or None, got {rank!r}.")
    return int(rank)


def export_lora(model, path, rank: int | None = None) -> ExportReport:
    """Write a PEFT LoRA adapter that ``peft.PeftModel.from_pretrained(base, path)`` loads.

    Parameters
    ----------
    model : TensorPeftModel
    path : str or PathLike
        Directory for ``adapter_config.json`` and ``adapter_model.safetensors`` (written atomically).
    rank : int, optional
        Truncate every module to at most this LoRA rank. Default: the exact rank of each format
        (LoRA r; Tucker-2 min(r_out, r_in); CP R; LoRA² r; TT the middle bond; custom min(out, in)).

    Returns
    -------
    ExportReport
        Per-module ranks and relative errors.

    Raises
    ------
    TypeError, ValueError
        Before anything is written: ``model`` is not a live TensorPeftModel, ``path`` is not a str or
        PathLike, is empty or lies under an existing file, or ``rank`` is not a positive integer.

    Notes
    -----
    The exported LoRA is fp32 with PEFT scaling 1 (the tensorpeft scaling is folded into ``lora_B``).
    ``fan_in_fan_out`` is set when every adapted layer is a transformers ``Conv1D`` (GPT-2); PEFT warns
    and fixes it per layer for a model mixing ``Conv1D`` and ``nn.Linear`` targets.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> with tempfile.TemporaryDirectory() as path:
    ...     report = tp.nn.export_lora(model, path, rank=1)
    ...     sorted(os.listdir(path))
    ['adapter_config.json', 'adapter_model.safetensors']
    >>> report.ranks
    {'0': 1, '2': 1}
    """
    _check_model(model)
    directory = check_directory_path(path)
    rank = _check_rank(rank)
    tensors, ranks, errors, conv1d = {}, {}, {}, []
    for name, layer in model.adapter_layers():
        B, A = lora_factors(layer.stack, layer.index)
        reference = B @ A
        if rank is not None:
            B, A = truncate(B, A, rank)
        B32, A32 = B.to(torch.float32).contiguous().cpu(), A.to(torch.float32).contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_A.weight"] = A32
        tensors[f"base_model.model.{name}.lora_B.weight"] = B32
        ranks[name] = int(A32.shape[0])
        errors[name] = _relative_error(reference, B32.to(reference.device), A32.to(reference.device))
        conv1d.append(layer.fan_in_fan_out)
    r = max(ranks.values())
    pattern = {re.escape(n): k for n, k in ranks.items() if k != r}
    base_cfg = getattr(model.base_model, "config", None)
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(base_cfg, "_name_or_path", None) or None,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": list(ranks),
        "lora_dropout": model.peft_config.dropout,
        "fan_in_fan_out": all(conv1d),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    payload = safetensors_bytes(tensors, metadata={"format": "pt"})
    try:
        write_atomic(directory, {WEIGHTS_NAME: payload, CONFIG_NAME: json.dumps(peft_config, indent=2).encode()})
    except OSError as exc:  # permissions, a read-only file system, a name too long
        raise ValueError(f"`path`={str(directory)!r} cannot be written: {exc}.") from exc
    return ExportReport(path=str(directory), ranks=ranks, errors=errors)
