"""The outputs of a comparison: ``results.json`` (settings, machine, versions, rows) and the plot.

Both are rendered in memory and then each replaces its file atomically, so a failure leaves the
earlier outputs as they were. The rows come from :func:`._compare.run_compare`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._safe_io import write_file_atomic

if TYPE_CHECKING:
    from ._compare import CompareSettings, MethodRow

__all__ = ["OUTPUT_FILES", "write_outputs"]

#: The files a comparison writes in its output directory (JSON first, then the plot).
OUTPUT_FILES = ("results.json", "accuracy_vs_params.png")


def _plot(rows: list[MethodRow], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    head = [r for r in rows if r.adapter_params == 0]
    for r in head:
        ax.axhline(100 * r.accuracy_mean, color="grey", linestyle="--", linewidth=1, label=r.name)
    families = {}
    for r in rows:
        if r.adapter_params > 0:
            families.setdefault(r.name, []).append(r)
    for name, items in families.items():
        items = sorted(items, key=lambda r: r.adapter_params)
        xs = [r.adapter_params for r in items]
        ys = [100 * r.accuracy_mean for r in items]
        errs = [100 * r.accuracy_std for r in items]
        line = ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", capsize=3, label=name)
        for r, x, y in zip(items, xs, ys, strict=True):
            ax.annotate(
                r.ranks, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color=line[0].get_color()
            )
    ax.set_xscale("log")
    # ticks at 1, 2, 5 × 10^k in plain thousands, none on the minor ones (matplotlib's 2x10^3 labels overlap)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable adapter parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def write_outputs(rows: list[MethodRow], settings: CompareSettings, out_dir: Path) -> dict[str, Path]:
    """Write ``results.json`` and ``accuracy_vs_params.png`` atomically; return their paths.

    Both are rendered in memory first; each then replaces the old file atomically
    (:func:`tensorpeft._safe_io.write_file_atomic`), so a failed plot replaces nothing.

    Raises
    ------
    ValueError
        If ``rows`` is empty (an earlier ``results.json`` is never replaced by an empty one).
    """
    import torch
    import transformers

    if not rows:
        raise ValueError("`rows` must hold at least one method's results, got none; nothing was written.")
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "settings": {
            **{k: v for k, v in dataclasses.asdict(settings).items() if k not in ("methods", "train")},
            "methods": [m.label for m in settings.methods],
            "train": dataclasses.asdict(settings.train),
        },
        "rows": [
            {
                **dataclasses.asdict(r),
                "accuracy_mean": r.accuracy_mean,
                "accuracy_std": r.accuracy_std,
            }
            for r in rows
        ],
    }
    paths = {"json": out_dir / OUTPUT_FILES[0], "plot": out_dir / OUTPUT_FILES[1]}
    contents = {"json": json.dumps(record, indent=2, default=_json_default).encode(), "plot": _png(rows)}
    for key, path in paths.items():  # both are complete before either is replaced
        write_file_atomic(path, contents[key])
    return paths


def _png(rows: list[MethodRow]) -> bytes:
    """The bytes of :func:`_plot`'s figure, rendered without touching the output directory."""
    buffer = io.BytesIO()
    _plot(rows, buffer)
    return buffer.getvalue()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
