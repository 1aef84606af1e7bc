"""Learning rate per adapter family, chosen on a validation set held out of training (never the test set).

For each learning rate, the main job's methods train on the training split minus ``--validation``
held-out sentences (the test sentences stay unseen) and are scored on those held-out sentences; mean
validation accuracy over seeds per (method, lr), and the best lr per method. The chosen rates are what
``DEFAULT_LR`` in ``tensorpeft/experiments/_compare.py`` should hold.

With ``--model smollm2`` (or another causal LM) the sweep is the decoder job's (its targets, steps, batch and
``DEFAULT_LLM_LR``); the table then writes ``lr_sweep_llm.json``.

Run:  python benchmarks/lr_sweep.py [--lrs 3e-3,1e-2,3e-2] [--seeds 0,1] [--validation 1000] [--quick]
      python benchmarks/lr_sweep.py --model smollm2 --lrs 1e-3,3e-3,1e-2 --seeds 0 --validation 150
Writes benchmarks/results/lr_sweep.json.
"""

from __future__ import annotations

import sys
import time

import _common
import numpy as np

from tensorpeft.experiments import CompareSettings, TrainSettings, parse_methods, run_compare
from tensorpeft.experiments._compare import DEFAULT_LLM_LR, DEFAULT_LR, default_model_path

METHODS = "lora:r8,tucker2:r1,cp:r1,tt:r1,lora2:r8"


def main(argv=None) -> int:
    """Sweep, print the table and the choice, write JSON."""
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--lrs", default="3e-3,1e-2,3e-2")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--validation", type=int, default=1000)
    p.add_argument("--steps", type=int, help="default 150 (decoder: the CLI's default)")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--model", help="'smollm2' (or a causal-LM checkpoint) for the decoder job; default the encoder")
    p.add_argument("--tag", default="", help="suffix of the JSON name (parallel runs over disjoint --methods)")
    args = p.parse_args(argv)
    from tensorpeft.cli import LLM_BATCH, LLM_STEPS, LLM_TARGETS
    from tensorpeft.experiments import model_kind

    decoder = args.model is not None and model_kind(args.model) == "decoder"
    defaults = DEFAULT_LLM_LR if decoder else DEFAULT_LR
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = tuple(int(s) for s in args.seeds.split(","))
    steps, n_val, n_train = args.steps or (LLM_STEPS if decoder else 150), args.validation, None
    if args.quick:
        seeds, steps, n_val, n_train, lrs = (0,), 3, 64, 128, lrs[:2]
    env = _common.environment()
    _common.print_environment(env)
    methods = tuple(parse_methods(args.methods.split(",")))
    start = time.time()
    scores: dict[str, dict[float, list[float]]] = {}
    params: dict[str, int] = {}
    for lr in lrs:
        settings = CompareSettings(
            model_path=args.model or str(default_model_path()),
            target_modules=LLM_TARGETS if decoder else ("query", "value"),
            methods=methods,
            seeds=seeds,
            n_train=n_train,
            n_val=n_val,
            evaluate_on="validation",
            train=TrainSettings(steps=steps, batch_size=LLM_BATCH if decoder else 16),
            lr=lr,
            threads=args.threads,
        )
        for row in run_compare(settings, progress=sys.stderr.isatty()):
            scores.setdefault(row.method, {})[lr] = row.accuracy
            params[row.method] = row.adapter_params
    header = ["method", "adapter params", *(f"lr {lr:g}" for lr in lrs), "best lr", "default now"]
    rows, choice = [], {}
    for method, by_lr in scores.items():
        means = {lr: float(np.mean(acc)) for lr, acc in by_lr.items()}
        best = max(means, key=means.get)
        choice[method] = best
        family = method.split(":")[0]
        rows.append(
            [
                method,
                f"{params[method]:,}",
                *(f"{100 * means[lr]:.1f}" for lr in lrs),
                f"{best:g}",
                f"{defaults[family]:g}",
            ]
        )
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    print(f"\nvalidation accuracy (%), mean over seeds {list(seeds)}; {len(lrs)} rates in {time.time() - start:.0f} s")
    if not args.no_json:
        record = {
            "environment": env,
            "seeds": list(seeds),
            "steps": steps,
            "validation": n_val,
            "lrs": lrs,
            "rows": [
                {
                    "method": m,
                    "adapter_params": params[m],
                    **{f"accuracy_lr_{lr:g}": scores[m][lr] for lr in lrs},
                    "best_lr": choice[m],
                }
                for m in scores
            ],
        }
        name = (
            ("lr_sweep_llm" if decoder else "lr_sweep")
            + ("_quick" if args.quick else "")
            + (f"_{args.tag}" if args.tag else "")
        )
        print(f"wrote {_common.write_json(name, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
