"""The budget planner: every format's rank and parameter count at a budget, on a real module layout.

Models are built from a checkpoint directory, the embedded MiniLM, or a named/numeric shape on
torch's ``meta`` device (no memory for the weights: a LLaMA-7B layout costs nothing to plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._methods import FAMILIES, MethodSpec, adapter_params, resolve_budget, resolve_method

__all__ = ["SHAPES", "BudgetRow", "budget_table", "format_budget_table", "model_from_path", "model_from_shape"]

# Layouts by numbers: (architecture, layers, hidden, heads, kv_heads, intermediate)
SHAPES = {
    "bert-base": ("bert", 12, 768, 12, 12, 3072),
    "bert-large": ("bert", 24, 1024, 16, 16, 4096),
    "minilm-l6": ("bert", 6, 384, 12, 12, 1536),
    "llama-7b": ("llama", 32, 4096, 32, 32, 11008),
    "llama-3.2-1b": ("llama", 16, 2048, 32, 8, 8192),
}


def model_from_shape(arch: str, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int):
    """A transformers model with this layout on the ``meta`` device (shapes only, no weights)."""
    import torch
    import transformers

    if arch == "bert":
        config = transformers.BertConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate
        )
        cls = transformers.BertModel
    elif arch == "llama":
        config = transformers.LlamaConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            intermediate_size=intermediate,
            vocab_size=32000,
        )
        cls = transformers.LlamaModel
    else:
        raise ValueError(f"`arch` must be 'bert' or 'llama', got {arch!r}.")
    if hidden % heads:
        raise ValueError(f"`hidden`={hidden} must be divisible by `heads`={heads}.")
    with torch.device("meta"):
        return cls(config)


def model_from_path(path) -> object:
    """Load a local checkpoint directory's model structure (weights on ``meta``)."""
    import torch
    import transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"`model` {str(path)!r} is not a checkpoint directory (no config.json in it).")
    config = transformers.AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return transformers.AutoModel.from_config(config)


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

    ``vs_lora`` is how many times fewer parameters than LoRA at the same per-layer rank.
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
                config, params = _lora_within(model, target_modules, budget)
            else:
                config, params, _ = resolve_method(spec, model, target_modules)
        except ValueError as exc:
            rows.append(BudgetRow(family, FAMILIES[family][1], "-", 0, None, str(exc)))
            continue
        slice_rank = config.rank if isinstance(config.rank, int) else max(config.rank)
        from ..nn import LoRAConfig

        try:
            lora_same = adapter_params(model, LoRAConfig(rank=slice_rank, target_modules=target_modules))
        except ValueError:
            lora_same = None
        vs = lora_same / params if lora_same else None
        rows.append(BudgetRow(family, FAMILIES[family][1], config.rank, params, vs))
    return budget, rows


def _lora_within(model, target_modules, budget):
    from ..nn import LoRAConfig

    one = adapter_params(model, LoRAConfig(rank=1, target_modules=target_modules))
    if one > budget:
        raise ValueError(f"budget {budget} is below LoRA rank 1 ({one} parameters).")
    rank = budget // one
    cfg = LoRAConfig(rank=rank, target_modules=target_modules)
    return cfg, adapter_params(model, cfg)


def format_budget_table(budget: int, rows: list[BudgetRow]) -> str:
    """Aligned plain-text rendering of :func:`budget_table`."""
    header = ("format", "rank", "params", "× fewer than LoRA at same rank", "note")
    lines = [
        (r.name, str(r.rank), f"{r.params:,}" if r.params else "-", f"{r.vs_lora:.1f}" if r.vs_lora else "-", r.note)
        for r in rows
    ]
    widths = [max(len(h), *(len(line[k]) for line in lines)) for k, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [f"budget: {budget:,} parameters", fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join([*out, *(fmt.format(*line).rstrip() for line in lines)])
