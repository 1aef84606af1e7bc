"""Factored apply, forward + backward, of every built-in format vs LoRA at about equal parameters.

A training step of a stack of frozen Linear(d, d) layers, each with its slice of the update applied
factored: ``h = h @ W_l.T + f.apply(fac, h, index=l)`` for ``l = 0 .. L-1``, then ``h.sum().backward()``
(gradients for every factor and for the input ``x``). Default: 12 layers, d = 768, 1,024 tokens, float32
torch; every format gets the largest rank whose parameter count fits LoRA r=8's (``rank_for_budget``).

Reported per case: median step time, the paired ratio to LoRA's step (target: <= 1.05), the adapter's
own time above the frozen base step (``base``: ``x @ W.T`` forward and input gradient only), and the
matmul GFLOP of one step (fwd + bwd, counted by torch's FlopCounterMode). A second table runs every
format through each contraction executor of ``tensorpeft.decomp._contract`` (the default ``gemm``,
``pairwise`` torch.einsum per step, opt_einsum ``expression``, one whole-equation torch ``einsum``).

    python benchmarks/bench_apply.py            # full run, a few minutes on 2 cores
    python benchmarks/bench_apply.py --quick    # seconds-long smoke run (256 tokens, 2 rounds)
    python benchmarks/bench_apply.py --threads 1 --clock cpu   # steadier on a busy machine
"""

from __future__ import annotations

import math

import _common
import torch
import torch.nn.functional as F  # noqa: N812 - the universal torch alias
from torch.utils.flop_counter import FlopCounterMode

from tensorpeft import decomp
from tensorpeft.decomp import _contract

TARGET = 1.05  # no format slower than this many LoRA steps (issue 2)


def formats(layers: int, dim: int, lora_rank: int, match: str = "params") -> dict[str, decomp.TensorNetwork]:
    """Every built-in format at the largest rank within LoRA r=``lora_rank``'s parameter count.

    With ``match="rank"`` every format gets scalar rank ``lora_rank`` instead (a FLOP-for-FLOP check of
    the engine: each slice is then a rank-``lora_rank`` product, as LoRA's).
    """
    common = {"stack": (layers,), "out_features": dim, "in_features": dim}
    lora = decomp.LoRA(rank=lora_rank, **common)
    budget = lora.num_params
    variants = {
        "LoRA": (decomp.LoRA, {}),
        "Tucker2": (decomp.Tucker2, {}),
        "CP": (decomp.CP, {}),
        "CP heads=12": (decomp.CP, {"heads": 12}),
        "TT shared": (decomp.TensorTrain, {}),
        "TT per-slice": (decomp.TensorTrain, {"share_stack": False}),
        "LoRA2": (decomp.OrthogonalProjection, {}),
    }
    out = {}
    for name, (cls, extra) in variants.items():
        if dim % 12 and "heads" in extra:
            continue
        if match == "rank":
            out[name] = cls(rank=lora_rank, **common, **extra)
        else:
            out[name] = decomp.rank_for_budget(cls, budget, **common, **extra)
    return out


def main(argv=None) -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--tokens", type=int, default=None, help="default 1024 (128 with --quick)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument(
        "--match",
        choices=("params", "rank"),
        default="params",
        help="params (default): every format at LoRA's parameter count; rank: every format at LoRA's rank",
    )
    p.add_argument(
        "--executors",
        default=",".join(_contract.EXECUTORS),
        help="comma-separated contraction executors to compare on the adapter-only steps",
    )
    args = p.parse_args(argv)
    _common.set_threads(args.threads)
    tokens = args.tokens or (128 if args.quick else 1024)
    rounds = args.rounds or (2 if args.quick else 10)
    default_executor = _contract._current["executor"]
    executors = [default_executor, *(e for e in args.executors.split(",") if e and e != default_executor)]
    L, d = args.layers, args.dim

    env = _common.environment()
    _common.print_environment(env)
    print(
        f"# stack of {L} Linear({d}, {d}), {tokens} tokens, float32, rounds={rounds}, clock={args.clock}, "
        f"formats matched to LoRA r={args.lora_rank} by {args.match}"
    )

    torch.manual_seed(0)
    weights = [torch.randn(d, d) / math.sqrt(d) for _ in range(L)]
    x0 = torch.randn(tokens, d)
    fmts = formats(L, d, args.lora_rank, args.match)
    factors = {
        name: {k: v.requires_grad_() for k, v in f.random(seed=0, backend="torch", dtype=torch.float32).items()}
        for name, f in fmts.items()
    }
    peft = {k: v.detach().clone().requires_grad_() for k, v in factors["LoRA"].items()}
    PEFT = "PEFT-style LoRA (F.linear, B as (d_out, r))"

    def step_for(adapter, params, with_base=True):
        """One training step: ``h = h @ W_l.T + adapter(h, l)`` over the layers, then backward.

        Without the base (``with_base=False``) the chain is ``h = h + adapter(h, l)``: the adapter's own
        cost, forward and backward, free of the base's noise (used to compare executors).
        """

        def step():
            for v in params.values():
                v.grad = None
            h = x0.detach().requires_grad_()
            for layer in range(L):
                base = F.linear(h, weights[layer]) if with_base else h
                h = base if adapter is None else base + adapter(h, layer)
            h.sum().backward()

        return step

    def format_adapter(name, exe):
        f, fac = fmts[name], factors[name]

        def adapter(h, layer):
            with _contract.executor(exe):
                return f.apply(fac, h, index=layer)

        return adapter

    def peft_adapter(h, layer):
        return F.linear(F.linear(h, peft["A"][layer]), peft["B"][layer])

    BASE = "base: frozen W only (x @ W.T, input grad)"
    step_keys = {name: f"step: {name}" for name in [PEFT, *fmts]}
    only_keys = {(name, exe): f"adapter only: {name} [{exe}]" for name in fmts for exe in executors}
    only_keys[PEFT, default_executor] = f"adapter only: {PEFT}"
    cases = {BASE: step_for(None, {})}
    cases[step_keys[PEFT]] = step_for(peft_adapter, peft)
    for name in fmts:
        cases[step_keys[name]] = step_for(format_adapter(name, default_executor), factors[name])
    cases[only_keys[PEFT, default_executor]] = step_for(peft_adapter, peft, with_base=False)
    for (name, exe), key in only_keys.items():
        if name != PEFT:
            cases[key] = step_for(format_adapter(name, exe), factors[name], with_base=False)

    flops = {}
    for case, fn in cases.items():
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[case] = counter.get_total_flops() / 1e9

    times = _common.run_interleaved(cases, rounds, clock=args.clock)
    med = {c: _common.median(t) for c, t in times.items()}
    ratio = _common.paired_ratio
    lora_step, lora_only = step_keys["LoRA"], only_keys["LoRA", default_executor]

    # Best ratio reachable if the adapter's extra FLOPs ran at the frozen base's own throughput.
    base_rate = flops[BASE] / med[BASE]

    def bound(case):
        return (med[BASE] + (flops[case] - flops[BASE]) / base_rate) / med[lora_step]

    rows = [[BASE, 0, "-", flops[BASE], 1e3 * med[BASE], ratio(times, BASE, lora_step), "", "", "", "", ""]]
    for name in [PEFT, *fmts]:
        fmt = fmts.get(name, fmts["LoRA"])
        step, only = step_keys[name], only_keys[name, default_executor]
        step_ratio = ratio(times, step, lora_step)
        rows.append(
            [
                name if name == PEFT else f"{name} [{default_executor}]",
                fmt.num_params,
                str(fmt.rank).replace(" ", ""),
                flops[step],
                1e3 * med[step],
                step_ratio,
                bound(step),
                1e3 * med[only],
                ratio(times, only, lora_only),
                flops[only] / med[only],
                "" if name == PEFT else ("ok" if step_ratio <= TARGET else "MISS"),
            ]
        )
    _common.print_table(
        [
            "format",
            "params",
            "rank",
            "GFLOP/step",
            "step ms",
            "x LoRA",
            "FLOP bound",
            "adapter-only ms",
            "x LoRA",
            "GFLOP/s",
            f"step <= {TARGET}",
        ],
        rows,
        title=f"Training step, {L} layers (x LoRA: median of per-round paired ratios to LoRA [{default_executor}]; "
        "FLOP bound: x LoRA if the adapter's FLOPs ran at the base's GFLOP/s; adapter-only: the same chain "
        "without the frozen base; GFLOP/s: of the adapter-only step)",
    )

    exe_rows = []
    for name in fmts:
        ref = only_keys[name, default_executor]
        exe_rows.append(
            [
                name,
                *(1e3 * med[only_keys[name, exe]] for exe in executors),
                *(ratio(times, only_keys[name, exe], ref) for exe in executors[1:]),
            ]
        )
    _common.print_table(
        ["format", *(f"{e} ms" for e in executors), *(f"{e}/{default_executor}" for e in executors[1:])],
        exe_rows,
        title="Contraction executors on the adapter-only step (ms; paired ratios to the default, > 1 = slower)",
    )

    if not args.no_json:
        payload = {
            "env": env,
            "config": {
                "layers": L,
                "dim": d,
                "tokens": tokens,
                "lora_rank": args.lora_rank,
                "match": args.match,
                "rounds": rounds,
                "clock": args.clock,
                "quick": args.quick,
                "default_executor": default_executor,
                "executors": executors,
                "target_ratio_vs_lora": TARGET,
            },
            "formats": _common.describe_formats(fmts),
            "cases": {
                c: {
                    "median_s": med[c],
                    "ratio_vs_lora_paired": ratio(times, c, lora_only if c.startswith("adapter") else lora_step),
                    "gflop": flops[c],
                    "flop_bound_vs_lora": bound(c) if c.startswith(("step", "base")) else None,
                    "times_s": times[c],
                }
                for c in cases
            },
        }
        name = "bench_apply" + ("_rank" if args.match == "rank" else "") + ("_quick" if args.quick else "")
        print(f"\nwrote {_common.write_json(name, payload)}")


if __name__ == "__main__":
    main()
