"""Factored apply on three backends: jitted jax vs numpy vs torch, every built-in format at LoRA r=8's budget.

The forward chain of a stack of adapters, ``h = h + f.apply(fac, h, index=l)`` for ``l = 0 .. L-1``
(default 12 layers of 768×768, 1,024 tokens, float32), computed by numpy (``f.apply`` on numpy arrays),
torch (``f.apply`` on tensors, under ``torch.no_grad``) and jax (the whole chain under one ``jax.jit``,
factors and ``h`` traced arguments, the format a static closure; compiled once before timing). Every
format gets the largest rank whose parameter count fits LoRA r=8's (``rank_for_budget``, as
``bench_apply.py``). Rounds are interleaved; ratios are medians of per-round paired ratios, within the run.

    python benchmarks/bench_jax.py --threads 1           # full run (one thread for every library)
    python benchmarks/bench_jax.py --quick               # seconds-long smoke run (128 tokens, 2 rounds)

``--threads 1`` also sets ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``
before jax is imported (unless ``XLA_FLAGS`` is set already), so that XLA's CPU backend computes on one
thread as numpy's BLAS (``OMP_NUM_THREADS``, set by ``_common``) and torch (``torch.set_num_threads``) do.
"""

from __future__ import annotations

import os
import sys

import _common


def _threads_arg() -> str | None:
    """The value of ``--threads`` on the command line (read before jax is imported, as ``_common`` does)."""
    argv = sys.argv[1:]
    for k, arg in enumerate(argv):
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
        if arg == "--threads" and k + 1 < len(argv):
            return argv[k + 1]
    return None


if _threads_arg() == "1":  # XLA reads its flags once, when jax starts its CPU backend
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax  # noqa: E402 - after XLA_FLAGS
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_apply import formats  # noqa: E402 - the same formats and ranks as the training-step benchmark

BACKENDS = ("numpy", "torch", "jax")


def chains(fmt, fac_np, h0, layers):
    """The forward chain on each backend, as a callable that blocks until its result is computed."""
    fac_t = {n: torch.from_numpy(a) for n, a in fac_np.items()}
    fac_j = {n: jax.device_put(a) for n, a in fac_np.items()}
    h0_t, h0_j = torch.from_numpy(h0), jax.device_put(h0)

    def numpy_chain():
        h = h0
        for layer in range(layers):
            h = h + fmt.apply(fac_np, h, index=layer)
        return h

    def torch_chain():
        with torch.no_grad():
            h = h0_t
            for layer in range(layers):
                h = h + fmt.apply(fac_t, h, index=layer)
        return h

    @jax.jit
    def jax_program(fac, h):
        for layer in range(layers):
            h = h + fmt.apply(fac, h, index=layer)
        return h

    def jax_chain():
        return jax_program(fac_j, h0_j).block_until_ready()

    return {"numpy": numpy_chain, "torch": torch_chain, "jax": jax_chain}


def main(argv=None) -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--tokens", type=int, default=None, help="default 1024 (128 with --quick)")
    p.add_argument("--lora-rank", type=int, default=8)
    args = p.parse_args(argv)
    _common.set_threads(args.threads)
    tokens = args.tokens or (128 if args.quick else 1024)
    rounds = args.rounds or (2 if args.quick else 10)
    L, d = args.layers, args.dim

    env = _common.environment()
    env["jax"] = jax.__version__
    env["xla_flags"] = os.environ.get("XLA_FLAGS")
    _common.print_environment(env)
    print(f"# jax {env['jax']}  XLA_FLAGS={env['xla_flags']!r}")
    print(
        f"# forward chain over a stack of {L} adapters on {d}x{d}, {tokens} tokens, float32, rounds={rounds}, "
        f"clock={args.clock}, formats at LoRA r={args.lora_rank}'s parameter count"
    )

    h0 = (np.random.default_rng(0).standard_normal((tokens, d)) / np.sqrt(d)).astype(np.float32)
    fmts = formats(L, d, args.lora_rank)
    cases, agree = {}, {}
    for name, fmt in fmts.items():
        fac = fmt.random(seed=0, dtype="float32")
        runs = chains(fmt, fac, h0, L)
        outputs = {b: np.asarray(run()) for b, run in runs.items()}  # also jax's compilation, before timing
        scale = float(np.max(np.abs(outputs["numpy"])))
        agree[name] = max(float(np.max(np.abs(outputs[b] - outputs["numpy"]))) / scale for b in BACKENDS)
        for b, run in runs.items():
            cases[f"{name} [{b}]"] = run

    times = _common.run_interleaved(cases, rounds, clock=args.clock)
    med = {c: _common.median(t) for c, t in times.items()}
    ratio = _common.paired_ratio
    rows = []
    for name, fmt in fmts.items():
        key = {b: f"{name} [{b}]" for b in BACKENDS}
        rows.append(
            [
                name,
                fmt.num_params,
                str(fmt.rank).replace(" ", ""),
                *(1e3 * med[key[b]] for b in BACKENDS),
                ratio(times, key["jax"], key["numpy"]),
                ratio(times, key["jax"], key["torch"]),
                ratio(times, key["torch"], key["numpy"]),
                agree[name],
            ]
        )
    _common.print_table(
        [
            "format",
            "params",
            "rank",
            "numpy ms",
            "torch ms",
            "jax jit ms",
            "jax/numpy",
            "jax/torch",
            "torch/numpy",
            "max rel diff",
        ],
        rows,
        title=f"Forward chain of {L} factored applies (ms, medians; x/y: median of per-round paired ratios, < 1 = "
        "x faster; max rel diff: largest |torch or jax - numpy| / max |numpy|, float32)",
    )

    if not args.no_json:
        payload = {
            "env": env,
            "config": {
                "layers": L,
                "dim": d,
                "tokens": tokens,
                "lora_rank": args.lora_rank,
                "rounds": rounds,
                "clock": args.clock,
                "threads": args.threads,
                "quick": args.quick,
            },
            "formats": _common.describe_formats(fmts),
            "cases": {
                c: {
                    "median_s": med[c],
                    "ratio_vs_numpy_paired": ratio(times, c, c.rsplit(" [", 1)[0] + " [numpy]"),
                    "ratio_vs_torch_paired": ratio(times, c, c.rsplit(" [", 1)[0] + " [torch]"),
                    "times_s": times[c],
                }
                for c in cases
            },
            "max_rel_diff_vs_numpy": agree,
        }
        name = "bench_jax" + ("_quick" if args.quick else "")
        print(f"\nwrote {_common.write_json(name, payload)}")


if __name__ == "__main__":
    main()
