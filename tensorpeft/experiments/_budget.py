"""The budget planner: every format's rank and parameter count at a budget, on a real module layout.

Models are built from a checkpoint directory, the embedded MiniLM, or a named/numeric shape on
torch's ``meta`` device (no memory for the weights: a LLaMA-7B layout costs nothing to plan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .._table import render_table
from ._methods import FAMILIES, MethodSpec, _largest, adapter_params, resolve_budget, resolve_formats

__all__ = [
    "MAX_LAYERS",
    "MAX_WIDTH",
    "SHAPES",
    "BudgetRow",
    "budget_table",
    "check_shape",
    "format_budget_table",
    "model_from_path",
    "model_from_shape",
]

# Layouts by numbers: (architecture, layers, hidden, heads, kv_heads, intermediate)
SHAPES = {
    "bert-base": ("bert", 12, 768, 12, 12, 3072),
    "bert-large": ("bert", 24, 1024, 16, 16, 4096),
    "minilm-l6": ("bert", 6, 384, 12, 12, 1536),
    "llama-7b": ("llama", 32, 4096, 32, 32, 11008),
    "llama-3.2-1b": ("llama", 16, 2048, 32, 8, 8192),
}


# Bounds of a layout by numbers: above them, building even a shapes-only model takes too long to plan
# interactively (1,024 LLaMA layers: 17 s). The largest public models stay well inside (LLaMA-3.1-405B:
# 126 layers, hidden 16,384, intermediate 53,248).
MAX_LAYERS = 256
MAX_WIDTH = 2**20


def check_shape(arch: str, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int) -> None:
    """Raise a ValueError naming the first number of a layout that no model of ``arch`` can have.

    Raises
    ------
    ValueError
        For an unknown ``arch``, a count outside ``[1, MAX_LAYERS]`` / ``[1, MAX_WIDTH]``, ``hidden`` not
        divisible by ``heads``, an odd head dimension or ``heads`` not divisible by ``kv_heads`` (LLaMA), or
        ``kv_heads != heads`` (BERT).
    """
    if arch not in ("bert", "llama"):
        raise ValueError(f"`arch` must be 'bert' or 'llama', got {arch!r}.")
    sizes = {"layers": (layers, MAX_LAYERS), "hidden": (hidden, MAX_WIDTH), "heads": (heads, MAX_WIDTH)}
    sizes.update(kv_heads=(kv_heads, MAX_WIDTH), intermediate=(intermediate, MAX_WIDTH))
    for name, (value, top) in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise ValueError(f"`{name}` must be an integer between 1 and {top:,}, got {value!r}.")
    if hidden % heads:
        raise ValueError(f"`hidden`={hidden} must be divisible by `heads`={heads}.")
    if arch == "llama" and (hidden // heads) % 2:
        raise ValueError(
            f"`hidden` / `heads` (the head dimension) must be even for LLaMA's rotary embedding, got {hidden}/{heads}."
        )
    if arch == "llama" and heads % kv_heads:
        raise ValueError(f"`heads`={heads} must be divisible by `kv_heads`={kv_heads} (grouped-query attention).")
    if arch == "bert" and kv_heads != heads:
        raise ValueError(
            f"`kv_heads` must equal `heads`={heads} for BERT (no grouped-query attention), got {kv_heads}."
        )


def model_from_shape(arch: str, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int):
    """A transformers model with this layout on the ``meta`` device (shapes only, no weights).

    Raises
    ------
    ValueError
        For a layout :func:`check_shape` refuses.
    """
    import torch
    import transformers

    check_shape(arch, layers, hidden, heads, kv_heads, intermediate)
    try:
        with torch.device("meta"):
            return _layout_model(transformers, arch, layers, hidden, heads, kv_heads, intermediate)
    except Exception as exc:  # a check transformers has and check_shape has not: still the caller's numbers
        raise ValueError(
            f"transformers refuses the {arch} layout {(layers, hidden, heads, kv_heads, intermediate)} "
            f"({type(exc).__name__}: {_one_line(exc)})."
        ) from None


def _layout_model(transformers, arch, layers, hidden, heads, kv_heads, intermediate):
    if arch == "bert":
        config = transformers.BertConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate
        )
        return transformers.BertModel(config)
    config = transformers.LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=32000,
    )
    return transformers.LlamaModel(config)


def model_from_path(path, *, name: str = "model", causal: bool = False) -> object:
    """Load a local checkpoint directory's model structure (weights on ``meta``); ``causal``: with its LM head.

    Raises
    ------
    ValueError
        Naming ``name``, if ``path`` has no ``config.json``, or one transformers cannot read or build a model from.
    """
    import torch
    import transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"`{name}` {str(path)!r} is not a checkpoint directory (no config.json in it).")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
            return auto.from_config(config)
    except Exception as exc:  # whatever the file says is the caller's input, not a bug here
        raise ValueError(
            f"`{name}` {str(path)!r}: its config.json does not give a model transformers can build "
            f"({type(exc).__name__}: {_one_line(exc)})."
        ) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


@dataclass(frozen=True)
class BudgetRow:
    """One format at the budget."""

    method: str
    name: str
    rank: object
    params: int
    vs_lora: float | None
    note: str = ""


def budget_table(model, target_modules, budget_word: str, families=tuple(FAMILIES)) -> tuple[int, list[BudgetRow]]:
    """Each family's largest rank within the budget on ``model``'s ``target_modules``.

    ``vs_lora`` is how many times fewer parameters than LoRA at the same per-layer rank: LoRA at every
    stack's :attr:`~tensorpeft.decomp.TensorNetwork.slice_rank` (the format's bound on the rank of each
    of its layers). Each family plans the model once; every count after that uses the formats alone.
    """
    budget = resolve_budget(budget_word, model, target_modules)
    rows = []
    for family in families:
        spec = MethodSpec(
            family, f"r{budget_word[1:]}" if family == "lora" and budget_word.startswith("r") else budget_word
        )
        if family == "lora" and not spec.budget.startswith("r"):
            spec = MethodSpec(family, None)
        try:
            if spec.budget is None:
                config, formats, at_max = _lora_within(model, target_modules, budget)
            else:
                config, formats, _, at_max = resolve_formats(spec, model, target_modules)
        except ValueError as exc:
            rows.append(BudgetRow(family, FAMILIES[family][1], "-", 0, None, str(exc)))
            continue
        params = sum(f.num_params for f in formats)
        vs = _lora_params_at_slice_rank(formats) / params if params else None
        note = "the format's maximum on these modules" if params < budget and at_max else ""
        rows.append(BudgetRow(family, FAMILIES[family][1], config.rank, params, vs, note))
    return budget, rows


def _lora_params_at_slice_rank(formats) -> int:
    r"""Parameters of LoRA with every layer of every stack at its format's slice rank.

    Parameters
    ----------
    formats : iterable of tensorpeft.decomp.TensorNetwork
        The formats of a model's stacks.

    Returns
    -------
    int
        :math:`\sum \prod(\text{stack})\, \rho\, (d_\text{in} + d_\text{out})` over the stacks.
    """
    return sum(math.prod(f.stack) * f.slice_rank * (f.in_features + f.out_features) for f in formats)


def _lora_within(model, target_modules, budget):
    from ..nn import LoRAConfig

    found = _largest(model, LoRAConfig(rank=1, target_modules=target_modules), budget)
    if found is None:
        one = adapter_params(model, LoRAConfig(rank=1, target_modules=target_modules))
        raise ValueError(f"budget {budget} is below LoRA rank 1 ({one} parameters).")
    return found


def format_budget_table(budget: int, rows: list[BudgetRow]) -> str:
    """Aligned plain-text rendering of :func:`budget_table`."""
    header = ("format", "rank", "params", "× fewer than LoRA at same rank", "note")
    lines = [
        (r.name, str(r.rank), f"{r.params:,}" if r.params else "-", f"{r.vs_lora:.1f}" if r.vs_lora else "-", r.note)
        for r in rows
    ]
    return render_table(f"budget: {budget:,} parameters", header, lines, left=(0, 4))
