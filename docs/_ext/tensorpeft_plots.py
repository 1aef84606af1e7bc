"""Figures drawn at build time (through matplotlib's ``plot`` directive) from the formats' own counts.

Usage in a page::

    .. plot::

       from tensorpeft_plots import params_vs_rank
       params_vs_rank("bert-base")
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from tensorpeft import decomp

# Attention projections q, k, v, o of every layer: a stack (layers, 4) of d × d matrices.
MODELS = {
    "bert-base": {
        "title": "BERT-base: q, k, v, o of 12 layers (48 matrices 768×768)",
        "layers": 12,
        "d": 768,
        "heads": 12,
    },
    "llama-7b": {
        "title": "LLaMA-7B: q, k, v, o of 32 layers (128 matrices 4096×4096)",
        "layers": 32,
        "d": 4096,
        "heads": 32,
    },
}
RANKS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def formats(model: str, r: int) -> dict[str, object]:
    """Every built-in format at scalar rank ``r`` on the attention stack of ``model``."""
    m = MODELS[model]
    common = {"stack": (m["layers"], 4), "out_features": m["d"], "in_features": m["d"]}
    return {
        "LoRA": decomp.LoRA(rank=r, **common),
        "Tucker-2 / LoTR (A, B shared by the stack)": decomp.Tucker2(rank=r, **common),
        "CP / LoRTA (heads split)": decomp.CP(rank=r, heads=m["heads"], **common),
        "TT, one train over the stack": decomp.TensorTrain(rank=r, share_stack=True, **common),
        "TT-LoRA, one train per matrix": decomp.TensorTrain(rank=r, share_stack=False, **common),
        "LoRA² (k = r)": decomp.OrthogonalProjection(rank=r, **common),
    }


def params_vs_rank(model: str):
    """Trainable parameters against rank for every format, log-log, with LoRA r = 1 marked."""
    m = MODELS[model]
    series: dict[str, list[int]] = {}
    for r in RANKS:
        for label, fmt in formats(model, r).items():
            series.setdefault(label, []).append(fmt.num_params)
    fig, ax = plt.subplots(figsize=(7.5, 5.4), layout="constrained")
    markers = "os^vDP"
    for (label, counts), marker in zip(series.items(), markers, strict=True):
        ax.plot(RANKS, counts, marker=marker, markersize=4, linewidth=1.6, label=label)
    lora_r1 = series["LoRA"][0]
    dense = m["layers"] * 4 * m["d"] ** 2
    ax.axhline(lora_r1, color="0.4", linestyle="--", linewidth=1)
    ax.annotate(f"LoRA r = 1: {lora_r1:,}", (RANKS[-1], lora_r1), ha="right", va="bottom", fontsize=8, color="0.3")
    ax.axhline(dense, color="0.4", linestyle=":", linewidth=1)
    ax.annotate(f"dense ΔW: {dense:,}", (RANKS[-1], dense), ha="right", va="bottom", fontsize=8, color="0.3")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(RANKS, [str(r) for r in RANKS])
    ax.set_xlabel("rank r (TT: every bond, capped by its bound)")
    ax.set_ylabel("trainable parameters")
    ax.set_title(m["title"], fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2, frameon=False)
    return fig
