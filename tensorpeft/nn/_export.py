"""export_lora: any tensorpeft adapter as a standard PEFT LoRA adapter directory.

Every slice is a LoRA product ``B A`` given by its format (``format.lora_factors``, see
``docs/guide/protocol.rst``): Tucker-2 ``(A G_s)(Bᵀ)`` (or ``(A)(G_s Bᵀ)`` when ``r_out < r_in``), CP
``(out ⊙ heads ⊙ c_s)(inᵀ)``, LoRA² ``(U1 U2 diag λ)(V2 V1)``. A tensor train ordered input modes then
output modes has slice rank at most the bond between the two halves, so it is exported exactly at that
rank from the SVD of the slice. ``rank=k`` truncates every slice to its best rank-``k`` approximation
(SVD of the product via two QRs, no dense matrix for the structured formats).

The export is *servable*: one rank ``r`` for every module (the largest slice rank, or ``rank=``); a
module whose own rank is smaller is zero-padded to ``r`` (extra rows of ``lora_A`` and columns of
``lora_B`` are zero, so ``B A`` is unchanged). The scaling is folded into ``lora_B`` and the config sets
``lora_alpha = r``, so the scaling of every server is exactly 1 — PEFT's ``lora_alpha / r``, vLLM's
(which drops ``rank_pattern``/``alpha_pattern`` in some versions) and llama.cpp's converter (one global
alpha divided by each tensor's rank). No ``rank_pattern``, ``alpha_pattern`` or ``modules_to_save``
is written unless ``modules_to_save=True``. See ``docs/guide/serving.rst``.
"""

from __future__ import annotations

import json
import numbers
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
        The rank of each module's product before padding (its slice rank, capped by ``rank=``).
    rank : int
        The one rank ``r`` every module is written with (``lora_alpha = r``).
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
    >>> report.rank, report.ranks, report.max_error < 1e-6
    (2, {'0': 2, '2': 2}, True)
    """

    path: str
    ranks: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    rank: int = 0

    @property
    def max_error(self) -> float:
        """Largest relative error over the modules."""
        return max(self.errors.values(), default=0.0)


def lora_factors(
    stack, index: tuple[int, ...], rows: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B (out, R), A (R, in))`` in float64 with ``B A = scaling · ΔW[index]`` (its ``rows`` if given).

    The format's own :meth:`~tensorpeft.decomp.TensorNetwork.lora_factors` (exact closed forms for LoRA,
    Tucker-2, CP and LoRA²; the SVD of the slice at :attr:`~tensorpeft.decomp.TensorNetwork.slice_rank`
    for tensor trains and custom networks), on float64 copies, with the scaling folded into ``B``. A
    member of a fused slice (``stack_by="input"``, ``rows=(start, stop)``) gets rows ``start:stop`` of
    ``B``: ``B[start:stop] A`` is exactly its rows of the slice's update.
    """
    f = {n: p.detach().to(torch.float64) for n, p in stack.factors().items()}
    B, A = stack.format.lora_factors(f, index)
    if rows is not None:
        B = B[rows[0] : rows[1]]
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


def _check_model(model):
    """The live :class:`TensorPeftModel` of ``model`` (a PeftModel or the tuner)."""
    from ._model import tuner_of

    tuner = tuner_of(model)
    if tuner._unloaded:
        raise ValueError("`model` was unloaded (merge_and_unload/unload); it has no adapter left to export.")
    return tuner


def pad(B: torch.Tensor, A: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` widened to ``rank`` with zero columns of ``B`` and zero rows of ``A`` (``B A`` unchanged)."""
    extra = rank - B.shape[1]
    if extra <= 0:
        return B, A
    return torch.cat([B, B.new_zeros(B.shape[0], extra)], 1), torch.cat([A, A.new_zeros(extra, A.shape[1])], 0)


def _check_rank(rank) -> int | None:
    """``None`` or a positive int."""
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"`rank` must be a positive integer or None, got {rank!r} ({type(rank).__name__}).")
    if rank < 1:
        raise ValueError(f"`rank` must be a positive integer or None, got {rank!r}.")
    return int(rank)


def export_lora(
    model, path, rank: int | None = None, *, modules_to_save: bool = False, base_model_name_or_path=None
) -> ExportReport:
    """Write a servable PEFT LoRA adapter: ``peft.PeftModel.from_pretrained(base, path)``, vLLM, llama.cpp.

    Parameters
    ----------
    model : peft.PeftModel or TensorPeftModel
        A live tensorpeft model; its active adapter is exported.
    path : str or PathLike
        Directory for ``adapter_config.json`` and ``adapter_model.safetensors`` (written atomically).
    rank : int, optional
        The one rank ``r`` of every module: modules above it are truncated to their best rank-``r``
        approximation, modules below are zero-padded. Default: the largest slice rank (LoRA r;
        Tucker-2 min(r_out, r_in); CP R; LoRA² r; TT the middle bond; custom min(out, in)), exact.
        A ``rank`` above the largest ``min(out_features, in_features)`` of the adapted layers (and above
        every slice rank) is lowered to it: more zero padding would add nothing (``ExportReport.rank``
        says what was written).
    modules_to_save : bool
        Also write PEFT's ``modules_to_save`` (e.g. a trained classifier head) and list them in the
        config. Off by default: servers load only ``lora_A``/``lora_B`` weights.
    base_model_name_or_path : str, optional
        Written into the config; default the base model's ``name_or_path`` (or the adapter config's).

    Returns
    -------
    ExportReport
        The uniform rank, each module's rank before padding, and each module's relative error.

    Raises
    ------
    TypeError, ValueError
        Before anything is written: ``model`` is not a live tensorpeft model, ``path`` is not a str or
        PathLike, is empty or lies under an existing file, ``rank`` is not a positive integer, or
        ``modules_to_save=True`` on a model without any.

    Notes
    -----
    The exported LoRA is fp32 with scaling 1 (the tensorpeft scaling is folded into ``lora_B``,
    ``lora_alpha = r``). ``fan_in_fan_out`` is set when every adapted layer is a transformers
    ``Conv1D`` (GPT-2); PEFT warns and fixes it per layer for a model mixing ``Conv1D`` and
    ``nn.Linear`` targets.

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
    >>> report.rank, report.ranks
    (1, {'0': 1, '2': 1})
    """
    tuner = _check_model(model)
    directory = check_directory_path(path)
    rank = _check_rank(rank)
    if not isinstance(modules_to_save, bool):
        raise TypeError(f"`modules_to_save` must be True or False, got {modules_to_save!r}.")
    if base_model_name_or_path is not None and not isinstance(base_model_name_or_path, str):
        raise TypeError(f"`base_model_name_or_path` must be a str or None, got {base_model_name_or_path!r}.")
    config = tuner.active_config
    saved_modules = {}
    if modules_to_save:
        saved_modules = _saved_modules(tuner)
    products, ranks, conv1d = {}, {}, []
    for name, layer in tuner.adapter_layers():
        if tuner._active_name not in layer.slices:
            continue
        stack, index = layer.slices[tuner._active_name]
        B, A = lora_factors(stack, index, layer.slice_rows.get(tuner._active_name))
        reference = B @ A
        if rank is not None:
            B, A = truncate(B, A, rank)
        products[name] = (reference, B, A)
        ranks[name] = int(A.shape[0])
        conv1d.append(layer.fan_in_fan_out)
    r = max(ranks.values())
    if rank is not None:  # padding beyond the largest full rank min(out, in) would add nothing
        r = min(rank, max(r, max(min(B.shape[0], A.shape[1]) for _, B, A in products.values())))
    tensors, errors = {}, {}
    for name, (reference, B, A) in products.items():
        B, A = pad(B, A, r)
        B32, A32 = B.to(torch.float32).contiguous().cpu(), A.to(torch.float32).contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_A.weight"] = A32
        tensors[f"base_model.model.{name}.lora_B.weight"] = B32
        errors[name] = _relative_error(reference, B32.to(reference.device), A32.to(reference.device))
    tensors.update(saved_modules)
    base_cfg = getattr(tuner.model, "config", None)
    name_or_path = (
        base_model_name_or_path
        or getattr(tuner.model, "name_or_path", None)
        or config.base_model_name_or_path
        or getattr(base_cfg, "_name_or_path", None)
        or None
    )
    peft_config = {
        "peft_type": "LORA",
        "task_type": config.task_type,
        "base_model_name_or_path": name_or_path,
        "r": r,
        "lora_alpha": r,
        "target_modules": list(ranks),
        "lora_dropout": config.dropout,
        "fan_in_fan_out": all(conv1d),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": sorted({k.removeprefix("base_model.model.").rsplit(".", 1)[0] for k in saved_modules})
        or None,
    }
    payload = safetensors_bytes(tensors, metadata={"format": "pt"})
    try:
        write_atomic(directory, {WEIGHTS_NAME: payload, CONFIG_NAME: json.dumps(peft_config, indent=2).encode()})
    except OSError as exc:  # permissions, a read-only file system, a name too long
        raise ValueError(f"`path`={str(directory)!r} cannot be written: {exc}.") from exc
    return ExportReport(path=str(directory), ranks=ranks, errors=errors, rank=r)


def _saved_modules(tuner) -> dict:
    """PEFT's ``modules_to_save`` tensors of the active adapter, under PEFT's saved keys.

    ``base_model.model.<module>.<param>`` (the layout of ``get_peft_model_state_dict``), read from each
    ``ModulesToSaveWrapper`` of the base model, so the bare tuner (what ``model.export_lora`` runs on) works
    as the PeftModel does.
    """
    from peft.utils.other import ModulesToSaveWrapper

    adapter = tuner._active_name
    saved = {}
    for name, module in tuner.model.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter in module.modules_to_save:
            for key, value in module.modules_to_save[adapter].state_dict().items():
                if value.is_floating_point():
                    saved[f"base_model.model.{name}.{key}"] = value.detach().to(torch.float32).contiguous().cpu()
    if not saved:
        raise ValueError("`modules_to_save`=True, but this model has no modules_to_save (set them in the config).")
    return saved
