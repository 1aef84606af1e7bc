"""Quality: the main job (`tensorpeft compare`) over several seeds, mean ± std per method.

This is the evidence behind the README's claims. It checks two targets and prints whether they hold:

1. at <= 1/8 of LoRA r=8's adapter parameters (the ``:r1`` budget), Tucker-2 and CP are within one
   accuracy point of LoRA r=8 (mean over seeds);
2. in the tiny regime (under LoRA r=1's count, the ``:tiny`` budget) they beat the head-only baseline
   clearly: their mean minus the baseline's exceeds two standard errors of the difference.

Run:  python benchmarks/quality.py [--seeds 0,1,2] [--steps 150] [--quick]
Writes benchmarks/results/quality.json (and the plot next to it).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import _common
import numpy as np

from tensorpeft.experiments import (
    CompareSettings,
    TrainSettings,
    default_model_path,
    format_table,
    parse_methods,
    run_compare,
    write_outputs,
)
from tensorpeft.experiments._methods import DEFAULT_METHODS


def _row(rows, label):
    return next((r for r in rows if r.method == label), None)


def _targets(rows) -> list[dict]:
    out = []
    lora8 = _row(rows, "lora:r8")
    head = _row(rows, "head")
    for family in ("tucker2", "cp"):
        matched = _row(rows, f"{family}:r1")
        if lora8 and matched:
            gap = 100 * (lora8.accuracy_mean - matched.accuracy_mean)
            out.append(
                {
                    "target": f"{family}:r1 within 1 point of lora:r8",
                    "params_ratio": matched.adapter_params / lora8.adapter_params,
                    "gap_points": gap,
                    "met": gap <= 1.0 and matched.adapter_params * 8 <= lora8.adapter_params,
                }
            )
        tiny = _row(rows, f"{family}:tiny")
        if head and tiny:
            n = len(tiny.accuracy)
            se = math.sqrt((tiny.accuracy_std**2 + head.accuracy_std**2) / max(n, 1))
            lift = 100 * (tiny.accuracy_mean - head.accuracy_mean)
            out.append(
                {
                    "target": f"{family}:tiny beats head clearly",
                    "lift_points": lift,
                    "two_standard_errors_points": 200 * se,
                    "met": n > 1 and lift > 200 * se and lift > 0,
                }
            )
    return out


def main(argv=None) -> int:
    """Run the comparison over seeds; print the table and the targets; write JSON."""
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    args = p.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    steps, n_test, n_train = args.steps, args.n_test, None
    if args.quick:
        seeds, steps, n_test, n_train = (0, 1), 4, 64, 256
    env = _common.environment()
    _common.print_environment(env)
    settings = CompareSettings(
        model_path=str(default_model_path()),
        methods=tuple(parse_methods(args.methods.split(","))),
        seeds=seeds,
        n_train=n_train,
        n_test=n_test,
        train=TrainSettings(steps=steps),
        threads=args.threads,
    )
    start = time.time()
    rows = run_compare(settings, progress=sys.stderr.isatty())
    print()
    print(format_table(rows))
    targets = _targets(rows)
    print()
    for t in targets:
        detail = ", ".join(f"{k}={v:.2f}" for k, v in t.items() if isinstance(v, float))
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}  ({detail})")
    print(f"\n{len(rows)} methods × {len(seeds)} seeds in {time.time() - start:.0f} s")
    if not args.no_json:
        name = "quality_quick" if args.quick else "quality"
        out_dir = Path(__file__).resolve().parent / "results" / name
        paths = write_outputs(rows, settings, out_dir)
        summary = {
            "environment": env,
            "seeds": list(seeds),
            "steps": steps,
            "rows": [
                {
                    "method": r.method,
                    "ranks": r.ranks,
                    "adapter_params": r.adapter_params,
                    "accuracy": r.accuracy,
                    "accuracy_mean": r.accuracy_mean,
                    "accuracy_std": r.accuracy_std,
                    "seconds_per_step": r.seconds_per_step,
                }
                for r in rows
            ],
            "targets": targets,
            "accuracy_spread": float(np.ptp([r.accuracy_mean for r in rows])) if rows else 0.0,
        }
        print(f"wrote {_common.write_json(name, summary)} and {paths['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
