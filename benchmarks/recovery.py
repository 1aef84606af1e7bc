"""Recovery of a synthetic shared update: how many parameters each format needs, and on which teacher.

A stack of S frozen linear layers ``y_s = (W0_s + ΔW_s) x`` (student) learns to match a teacher
``y*_s = (W0_s + ΔW*_s) x`` whose update ``ΔW*`` is *exactly* of one structure:

- ``tucker2``: Tucker-2 with shared outer factors, ``ΔW*_s = A G_s Bᵀ`` (LoTR's shape);
- ``cp``: CP over (layers × d_out × d_in) (LoRTA's shape);
- ``tt``: one tensor train over (layers, input modes, output modes) (``share_stack=True``);
- ``lora``: an independent rank-r product per layer (LoRA's shape; no sharing at all).

Each teacher is a random draw of its format (``format.random``), scaled to ``‖ΔW*‖_F = sqrt(S)`` (every
layer's update has unit Frobenius norm on average). Every student format (LoRA, Tucker2, CP, TT shared,
Orth = LoRA²'s OrthogonalProjection) is built by ``decomp.rank_for_budget`` at each budget of a log grid
and measured two ways:

- trained: Adam through ``format.apply`` on torch float32 from ``format.init`` (ΔW = 0), one learning
  rate per format (``LR``, from a pilot sweep over 0.003-0.1 on every teacher; ``--lr-factors`` tries
  more per cell and keeps the best), divided by 10 at each plateau (error improved by < 0.1% in 100
  steps), the run ending at the third plateau, below ``STOP`` (half the smallest target)
  or after ``--steps`` (``--schedule cosine``: a fixed-length cosine decay instead, to check that the
  plateau rule costs nothing). The loss is the mean over layers and inputs of ``‖y_s - y*_s‖²`` (``W0``
  cancels in it, but is kept to mirror the real setup). Inputs: ``whitened`` (default) is the batch
  ``sqrt(d)·I``, whose second moment is exactly that of x ~ N(0, I), so the loss equals the expected
  loss on Gaussian inputs, ``mean_s ‖ΔW_s - ΔW*_s‖²_F``, with no sampling noise; ``--inputs gaussian``
  draws a fresh N(0, I) batch every step instead (the same objective in expectation, with gradient
  noise). The orthogonal format trains without LoRA²'s penalty or pruning (plain Adam on its factors).
- fit: ``format.fit`` on the dense ``ΔW*`` (float64): truncated SVD for LoRA and Orth (the optimum),
  HOOI for Tucker2, CP-ALS from a random start (see ``FIT_OPTIONS``), TT-SVD for TT. The best error the
  format's own decomposition finds; a local optimum for Tucker2 and CP and quasi-optimal for TT, so
  it may lose to Adam.

Reported: the relative error ``‖ΔW - ΔW*‖_F / ‖ΔW*‖_F`` (for Gaussian x, the root of the relative
output MSE), and for each teacher × student the smallest trainable-parameter count in the sweep that
reaches each target (``-`` = not reached at any budget of the sweep).

    python benchmarks/recovery.py            # full run (S = 12, d = 64, 22 budgets): ~3 min on 2 cores
    python benchmarks/recovery.py --per-octave 1   # powers of 2 only (8 budgets): ~1.5 min
    python benchmarks/recovery.py --quick    # smoke run (S = 4, d = 16, 5 budgets): ~15 s
    python benchmarks/recovery.py --inputs gaussian --batch 256   # fresh Gaussian batches instead
"""

from __future__ import annotations

import contextlib
import math
import time

import _common
import numpy as np
import torch

from tensorpeft import decomp

#: student name -> (format class, constructor arguments besides the shape and rank)
STUDENTS = {
    "LoRA": (decomp.LoRA, {}),
    "Tucker2": (decomp.Tucker2, {}),
    "CP": (decomp.CP, {}),
    "TT": (decomp.TensorTrain, {"share_stack": True}),
    "Orth": (decomp.OrthogonalProjection, {}),
}

#: teacher name -> (format class, constructor arguments besides the shape); rank "full" / "quick"
TEACHERS = {
    "tucker2": (decomp.Tucker2, {}),
    "cp": (decomp.CP, {}),
    "tt": (decomp.TensorTrain, {"share_stack": True}),
    "lora": (decomp.LoRA, {}),
}
TEACHER_RANKS = {
    "full": {"tucker2": 4, "cp": 6, "tt": 4, "lora": 4},
    "quick": {"tucker2": 2, "cp": 3, "tt": 2, "lora": 2},
}

#: Adam learning rate per student (pilot: S=12, d=64, every teacher, budgets 2k-4k, lr 0.003-0.1,
#: 300-3,000 steps; LoRA and Orth are insensitive above 0.01, Tucker2 went unstable at 0.1, CP and TT
#: converge slowest and prefer 0.03).
LR = {"LoRA": 0.03, "Tucker2": 0.01, "CP": 0.03, "TT": 0.03, "Orth": 0.03}

SIZES = {
    # the budget grid runs from dense / `start` (or the smallest student) to 0.7 × dense
    "full": {"stack": 12, "features": 64, "steps": 2000, "start": 192},
    "quick": {"stack": 4, "features": 16, "steps": 200, "start": 32},
}
TARGETS = (0.1, 0.01)
STOP = 5e-3  # a run stops once its relative error is below this (half the smallest target)
#: plateau schedule: the error (checked every CHECK steps) improved by < PLATEAU (relative) over WINDOW
#: steps → lr / 10; the (DROPS + 1)-th plateau ends the run.
PLATEAU, WINDOW, CHECK, DROPS = 1e-3, 100, 50, 2
#: ``fit`` keywords per student. CP starts from random factors: CP.fit's default SVD start stalls on
#: every shared teacher here (its columns past an unfolding's rank come out ~0 and ALS never grows
#: them: rel. error 0.62 on the Tucker-2 teacher at every rank 7-58, vs 0.0000 from a random start).
FIT_OPTIONS = {"Tucker2": {"n_iter_max": 100}, "CP": {"n_iter_max": 100, "init": "random"}, "TT": {"n_iter_max": 0}}


@contextlib.contextmanager
def blas_threads(n: int):
    """Limit numpy's BLAS/LAPACK to ``n`` threads (through threadpoolctl, when installed).

    The fits are many small float64 factorizations: on two busy cores OpenBLAS's default two threads
    made them ~25× slower (all fits of the full sweep: 230 s against 9.5 s on one thread, measured).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed is at stake
        yield
        return
    with threadpool_limits(limits=n):
        yield


def budget_grid(start: int, stop: int, per_octave: int) -> list[int]:
    """Budgets ``start · 2^(k/per_octave)`` up to ``stop``, rounded to ints."""
    grid, k = [], 0
    while (b := round(start * 2 ** (k / per_octave))) <= stop:
        grid.append(b)
        k += 1
    return grid


def make_teacher(name: str, rank: int, stack: int, features: int, seed: int):
    """Dense ``ΔW*`` (float64, ``(stack, d, d)``) of teacher ``name``, scaled to norm ``sqrt(stack)``."""
    cls, extra = TEACHERS[name]
    fmt = cls(stack=(stack,), out_features=features, in_features=features, rank=rank, **extra)
    dense = fmt.to_dense(fmt.random(seed=seed))
    return fmt, dense * math.sqrt(stack) / np.linalg.norm(dense)


def rel_err(fmt, factors, target) -> float:
    """``‖to_dense(factors) - target‖ / ‖target‖`` in float64."""
    with torch.no_grad():
        dense = fmt.to_dense(factors).double()
        return float(torch.linalg.norm(dense - target) / torch.linalg.norm(target))


def train(fmt, target, base, *, lr: float, steps: int, inputs: str, batch: int, seed: int, schedule: str) -> dict:
    """Adam through ``fmt.apply`` from ``fmt.init``; returns the final error, steps run, drops and seconds.

    ``target`` (float64) and ``base`` (float32) are ``ΔW*`` and ``W0``, both ``(S, d_out, d_in)``.
    ``schedule="plateau"``: constant ``lr``, divided by 10 whenever the error improved by less than
    ``PLATEAU`` (relative) over ``WINDOW`` steps; the run ends at the ``DROPS + 1``-th plateau, below
    ``STOP`` or after ``steps``. ``schedule="cosine"``: cosine decay to 0 over exactly ``steps`` steps
    (stopping only below ``STOP``), slower but free of the plateau heuristic.
    """
    t0 = time.perf_counter()
    d_in = fmt.in_features
    factors = {n: p.requires_grad_() for n, p in fmt.init(seed=seed, backend="torch", dtype=torch.float32).items()}
    opt = torch.optim.Adam(list(factors.values()), lr=lr)
    cosine = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    teacher_w = (base + target.float()).transpose(1, 2)  # (S, d_in, d_out): y* = x @ (W0 + ΔW*)ᵀ
    base_t = base.transpose(1, 2)
    gen = torch.Generator().manual_seed(seed + 1)
    if inputs == "whitened":
        # mean_b x_b x_bᵀ = I exactly: the expected loss on N(0, I) inputs, without sampling noise
        x = math.sqrt(d_in) * torch.eye(d_in)
        y_base, y_teacher = x @ base_t, x @ teacher_w
    history, drops, step = [], 0, 0
    for step in range(1, steps + 1):
        if inputs == "gaussian":
            x = torch.randn(batch, d_in, generator=gen)
            y_base, y_teacher = x @ base_t, x @ teacher_w
        y = y_base + fmt.apply(factors, x, index=None)  # (S, batch, d_out)
        loss = (y - y_teacher).square().sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if schedule == "cosine":
            cosine.step()
        if step % CHECK:
            continue
        err = rel_err(fmt, factors, target)
        if err < STOP or not math.isfinite(err):
            break
        history.append(err)
        back = WINDOW // CHECK
        if schedule == "plateau" and len(history) > back and err > (1 - PLATEAU) * history[-1 - back]:
            if drops == DROPS:
                break
            drops += 1
            history = [err]
            for group in opt.param_groups:
                group["lr"] *= 0.1
    err = rel_err(fmt, factors, target)
    if not math.isfinite(err):
        err = float("inf")
    return {"error": err, "steps": step, "lr_drops": drops, "seconds": time.perf_counter() - t0}


def fit(name: str, fmt, dense) -> dict:
    """``fmt.fit`` on the dense teacher (float64 numpy)."""
    t0 = time.perf_counter()
    options = dict(FIT_OPTIONS.get(name, {}))
    if options.get("init") == "random":
        options["init"] = fmt.random(seed=0)
    _, err = fmt.fit(dense, **options)
    return {"error": float(err), "seconds": time.perf_counter() - t0}


def params_to_reach(runs: list[dict], key: str, target: float) -> int | None:
    """Fewest trainable parameters among ``runs`` whose ``key`` error is <= ``target`` (None if none)."""
    hits = [r["num_params"] for r in runs if r.get(key) is not None and r[key] <= target]
    return min(hits) if hits else None


def run(settings: dict, *, progress: bool = True) -> dict:
    """The whole sweep; returns the JSON-ready ``cells`` and ``teachers`` parts of the payload."""
    S, d, seed = settings["stack"], settings["features"], settings["seed"]
    shape = {"stack": (S,), "out_features": d, "in_features": d}
    base = torch.randn(S, d, d, generator=torch.Generator().manual_seed(seed)) / math.sqrt(d)
    teachers, cells = {}, {}
    for t_name in settings["teachers"]:
        rank = settings["teacher_ranks"][t_name]
        # a teacher's seed depends on its name only, so that --teachers subsets see the same draws
        t_fmt, dense = make_teacher(t_name, rank, S, d, seed=seed + 100 + list(TEACHERS).index(t_name))
        target = torch.from_numpy(dense)
        teachers[t_name] = {"format": repr(t_fmt), "rank": t_fmt.rank, "num_params": t_fmt.num_params}
        cells[t_name] = {}
        for s_name in settings["students"]:
            cls, extra = STUDENTS[s_name]
            done: dict = {}  # one run per distinct format: neighbouring budgets may give the same rank
            runs = []
            for budget in settings["budgets"]:
                try:
                    fmt = decomp.rank_for_budget(cls, budget, **shape, **extra)
                except decomp.BudgetError:
                    runs.append({"budget": budget, "rank": None, "num_params": None, "trained": None, "fit": None})
                    continue
                if fmt not in done:
                    lrs = [LR[s_name] * f for f in settings["lr_factors"]]
                    trials = [
                        train(
                            fmt,
                            target,
                            base,
                            lr=lr,
                            steps=settings["steps"],
                            inputs=settings["inputs"],
                            batch=settings["batch"],
                            seed=seed,
                            schedule=settings["schedule"],
                        )
                        | {"lr": lr}
                        for lr in lrs
                    ]
                    best = min(trials, key=lambda r: r["error"])
                    fitted = fit(s_name, fmt, dense)
                    done[fmt] = {
                        "rank": fmt.rank,
                        "num_params": fmt.num_params,
                        "trained": best["error"],
                        "fit": fitted["error"],
                        "lr": best["lr"],
                        "steps": best["steps"],
                        "lr_drops": best["lr_drops"],
                        "train_seconds": sum(r["seconds"] for r in trials),
                        "fit_seconds": fitted["seconds"],
                    }
                runs.append({"budget": budget} | done[fmt])
            cells[t_name][s_name] = {
                "runs": runs,
                "params_to_reach": {
                    str(tgt): {key: params_to_reach(runs, key, tgt) for key in ("trained", "fit")}
                    for tgt in settings["targets"]
                },
            }
            if progress:
                secs = sum(r["train_seconds"] for r in done.values())
                fit_secs = sum(r["fit_seconds"] for r in done.values())
                print(
                    f"  {t_name} teacher, {s_name}: {len(done)} runs, train {secs:.1f} s, fit {fit_secs:.1f} s",
                    flush=True,
                )
    return {"teachers": teachers, "cells": cells}


def _err(value) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return "inf"
    return f"{value:.3f}" if value >= 1e-3 else f"{value:.0e}"


def _count(value) -> str:
    return "-" if value is None else f"{value:,}"


def print_results(settings: dict, result: dict) -> None:
    """The summary tables (params to reach each target) and the per-teacher error tables."""
    students, targets = settings["students"], settings["targets"]
    for key, label in (("trained", "trained with Adam"), ("fit", "format.fit on the dense teacher")):
        rows = []
        for t_name, info in result["teachers"].items():
            for tgt in targets:
                reach = {s: result["cells"][t_name][s]["params_to_reach"][str(tgt)][key] for s in students}
                found = {s: n for s, n in reach.items() if n is not None}
                winner = min(found, key=found.get) if found else None
                lora = reach.get("LoRA")
                ratio = f"{lora / found[winner]:.1f}x" if winner and lora is not None else "-"
                rows.append(
                    [
                        f"{t_name} r={info['rank']} ({info['num_params']:,})",
                        f"{tgt:g}",
                        *(_count(reach[s]) for s in students),
                        winner or "-",
                        ratio,
                    ]
                )
        _common.print_table(
            ["teacher (own params)", "error <=", *students, "fewest", "LoRA/fewest"],
            rows,
            title=f"Trainable parameters to reach the relative error ({label}); - = not reached in the sweep",
        )
    for t_name, info in result["teachers"].items():
        rows = []
        for k, budget in enumerate(settings["budgets"]):
            row = [f"{budget:,}"]
            for s in students:
                r = result["cells"][t_name][s]["runs"][k]
                row.append("n/a" if r["num_params"] is None else f"{_err(r['trained'])} ({_err(r['fit'])})")
            rows.append(row)
        _common.print_table(
            ["budget", *students],
            rows,
            title=f"Teacher {t_name} r={info['rank']} ({info['num_params']:,} params): relative error trained (fit) "
            f"at each budget; training stops below {STOP:g}; n/a = rank 1 exceeds the budget",
        )


def main(argv=None) -> dict:
    """Run the sweep, print the tables, write ``benchmarks/results/recovery[_quick].json``; return the payload."""
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--stack", type=int, default=None, help="layers S (default 12; --quick 4)")
    p.add_argument("--features", type=int, default=None, help="d = d_out = d_in (default 64; --quick 16)")
    p.add_argument("--steps", type=int, default=None, help="max Adam steps per run (default 2000; --quick 200)")
    p.add_argument(
        "--per-octave",
        type=int,
        default=3,
        help="budgets per doubling (default 3, fine enough to hit LoRA ranks 3, 4, 6 at S=12, d=64; 1 halves the run)",
    )
    p.add_argument("--budgets", default=None, help="comma-separated budgets (overrides the log grid)")
    p.add_argument("--inputs", choices=("whitened", "gaussian"), default="whitened")
    p.add_argument("--batch", type=int, default=256, help="batch size of --inputs gaussian")
    p.add_argument(
        "--lr-factors",
        default="1",
        help="comma-separated multipliers of each format's LR; each cell keeps its best run (default 1)",
    )
    p.add_argument("--teachers", default=",".join(TEACHERS), help="comma-separated subset of the teachers")
    p.add_argument("--students", default=",".join(STUDENTS), help="comma-separated subset of the students")
    p.add_argument(
        "--schedule",
        choices=("plateau", "cosine"),
        default="plateau",
        help="plateau (default): lr / 10 on each plateau, stop at the third; cosine: decay over all --steps",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="JSON name (default recovery, or recovery_quick with --quick)")
    args = p.parse_args(argv)
    # one thread unless told: these matrices are tiny, and a second thread on a busy machine made steps ~5× slower
    threads = args.threads or 1
    _common.set_threads(threads)
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    S, d = args.stack or size["stack"], args.features or size["features"]
    teachers = [t for t in args.teachers.split(",") if t]
    students = [s for s in args.students.split(",") if s]
    unknown = sorted(set(teachers) - set(TEACHERS)) + sorted(set(students) - set(STUDENTS))
    if unknown:
        p.error(f"unknown teacher/student {unknown}; teachers: {list(TEACHERS)}, students: {list(STUDENTS)}")
    if args.budgets:
        budgets = [int(b) for b in args.budgets.split(",")]
    else:
        smallest = min(
            STUDENTS[s][0](stack=(S,), out_features=d, in_features=d, rank=1, **STUDENTS[s][1]).num_params
            for s in students
        )
        budgets = budget_grid(max(smallest, S * d * d // size["start"]), int(0.7 * S * d * d), args.per_octave)
    settings = {
        "stack": S,
        "features": d,
        "teachers": teachers,
        "students": students,
        "teacher_ranks": {t: min(r, d) for t, r in TEACHER_RANKS[mode].items()},
        "budgets": budgets,
        "steps": args.steps or size["steps"],
        "inputs": args.inputs,
        "batch": args.batch if args.inputs == "gaussian" else d,
        "lr": LR,
        "lr_factors": [float(f) for f in args.lr_factors.split(",")],
        "targets": list(TARGETS),
        "stop": STOP,
        "schedule": args.schedule,
        "plateau": {"tolerance": PLATEAU, "window": WINDOW, "check_every": CHECK, "lr_drops": DROPS},
        "fit_options": FIT_OPTIONS,
        "teacher_norm": "||dW*||_F = sqrt(S)",
        "seed": args.seed,
        "dtype": "float32 (training), float64 (teacher, fit, errors)",
    }
    env = _common.environment()
    _common.print_environment(env)
    print(
        f"# seed {args.seed}; S={S} layers of {d}x{d}; teachers {settings['teacher_ranks']}; "
        f"inputs {args.inputs} (batch {settings['batch']}); Adam, {args.schedule} schedule, "
        f"<= {settings['steps']} steps, lr {LR} x {settings['lr_factors']}; budgets {budgets}"
    )
    t0, c0 = time.perf_counter(), time.process_time()
    with blas_threads(threads):
        result = run(settings)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print_results(settings, result)
    print(f"\n# total {seconds:.1f} s wall, {cpu:.1f} s process CPU; load (1 min) at end: {_common._loadavg()}")
    payload = {
        "benchmark": "recovery",
        "environment": env,
        "settings": settings,
        **result,
        "seconds": seconds,
        "cpu_seconds": cpu,
    }
    if not args.no_json:
        name = args.name or ("recovery" + ("_quick" if args.quick else ""))
        print(f"wrote {_common.write_json(name, payload)}")
    return payload


if __name__ == "__main__":
    main()
