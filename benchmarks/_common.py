"""Shared helpers of the benchmark scripts: environment facts, interleaved timing, tables, JSON.

The machine these run on is shared and noisy (single timings swing 2-50×): every script runs its
cases round-robin (the order rotates each round), reports medians, and compares methods through paired
ratios, the median over rounds of ``t[case][round] / t[reference][round]``, taken within one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _threads_from_argv() -> None:
    """Make ``--threads N`` reach numpy's BLAS too: its thread count is read once, when numpy loads.

    The scripts import this module before numpy (``_common`` sorts first), so setting the variables
    here, at import, is early enough. Variables already set by the user win.
    """
    argv = sys.argv[1:]
    for k, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else None
        if arg == "--threads" and k + 1 < len(argv):
            value = argv[k + 1]
        if value is not None and value.isdigit():
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, value)


_threads_from_argv()

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def parser(description: str) -> argparse.ArgumentParser:
    """Common command line: ``--quick``, ``--rounds``, ``--threads``, ``--clock``, ``--no-json``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (small sizes, few rounds)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default per script)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (default) or cpu = process CPU time; cpu is only meaningful with --threads 1, "
        "where it is much less sensitive to other jobs on the machine",
    )
    p.add_argument("--no-json", action="store_true", help="do not write benchmarks/results/<name>.json")
    return p


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` to torch (if installed)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def environment() -> dict:
    """Versions, thread count, CPU and load: printed above every table and stored in the JSON."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_at_start": _loadavg(),
    }
    for module in ("numpy", "torch", "opt_einsum", "tensorly"):
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            env[module] = None
    if env["torch"] is not None:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def print_environment(env: Mapping) -> None:
    """One block of machine facts above the table."""
    print(
        f"# {env['date']}  python {env['python']}  numpy {env['numpy']}  torch {env['torch']}  "
        f"opt_einsum {env['opt_einsum']}  tensorly {env['tensorly']}"
    )
    print(
        f"# cpu: {env['cpu']} x{env['cpu_count']}  torch threads: {env.get('torch_threads')}  "
        f"load (1 min) at start: {env['loadavg_1m_at_start']}"
    )


def run_interleaved(
    cases: Mapping[str, Callable[[], object]],
    rounds: int,
    *,
    warmup: int = 1,
    clock: str = "wall",
    progress: bool = True,
) -> dict[str, list[float]]:
    """Time every case once per round, round-robin, rotating the start; return seconds per case."""
    timer = CLOCKS[clock]
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(rounds):
        order = names[k % len(names) :] + names[: k % len(names)]
        for name in order:
            t0 = timer()
            cases[name]()
            times[name].append(timer() - t0)
        if progress:
            print(f"  round {k + 1}/{rounds} done", file=sys.stderr, flush=True)
    return times


def median(values) -> float:
    """Median of a non-empty sequence."""
    return statistics.median(values)


def paired_ratio(times: Mapping[str, list[float]], case: str, reference: str) -> float:
    """Median over rounds of ``times[case][k] / times[reference][k]``."""
    return statistics.median(a / b for a, b in zip(times[case], times[reference], strict=True))


def print_table(headers: list[str], rows: list[list], title: str | None = None) -> None:
    """Plain-text table, right-aligned except the first column."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for r in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def _fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return f"{value:.2e}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def describe_formats(formats: Mapping) -> dict:
    """``{name: {"repr", "num_params", "rank"}}`` of the benchmarked formats, for the JSON files."""
    return {n: {"repr": repr(f), "num_params": f.num_params, "rank": f.rank} for n, f in formats.items()}


def write_json(name: str, payload: Mapping) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>.json``; return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    from tensorpeft._safe_io import write_file_atomic  # here: importing tensorpeft loads numpy (see above)

    write_file_atomic(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())  # never half-written
    return path
