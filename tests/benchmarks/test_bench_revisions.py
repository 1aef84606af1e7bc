"""Smoke test of benchmarks/bench_revisions.py's pure parts: ratio and interval maths, orders, arguments.

No timing and no subprocess: the script's measurement needs minutes (see benchmarks/README.md).
"""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def br(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("bench_revisions")


def test_paired_ratios_and_length_check(br):
    assert br.paired_ratios([2.0, 3.0], [1.0, 3.0]) == [2.0, 1.0]
    with pytest.raises(ValueError):
        br.paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        br.paired_ratios([], [])


def test_order_stat_ci_ranks(br):
    values = [1.0 + k / 100 for k in range(24)][::-1]  # unsorted on purpose
    med, lo, hi = br.order_stat_ci(values)
    assert med == pytest.approx(1.115)
    assert (lo, hi) == (pytest.approx(1.06), pytest.approx(1.16))  # 7th and 17th smallest of 24
    med, lo, hi = br.order_stat_ci([1.0 + k / 100 for k in range(10)])
    assert (lo, hi) == (pytest.approx(1.00), pytest.approx(1.08))  # 1st and 9th of 10
    assert br.order_stat_ci([1.5]) == (1.5, 1.5, 1.5)
    with pytest.raises(ValueError):
        br.order_stat_ci([])


def test_verdict(br):
    assert br.verdict((1.0, 0.98, 1.02)) == "met"
    assert br.verdict((1.05, 1.021, 1.08)) == "regression"
    assert br.verdict((1.0, 0.95, 1.05)) == "undecided"
    assert br.verdict((1.0, 0.9, 1.1), target=1.2) == "met"


def test_round_orders_are_abba(br):
    assert br.round_orders(4) == [("old", "new"), ("new", "old"), ("old", "new"), ("new", "old")]


def test_summarize(br):
    times = {
        "old": {"apply": {"LoRA r=8": [1.0, 2.0, 1.0]}},
        "new": {"apply": {"LoRA r=8": [1.1, 2.0, 0.9]}},
    }
    s = br.summarize(times, benches=["apply"], formats=["LoRA r=8"])["apply"]["LoRA r=8"]
    assert s["ratios"] == pytest.approx([1.1, 1.0, 0.9])
    assert s["ratio"] == pytest.approx(1.0)
    assert s["ci95"] == pytest.approx([0.9, 1.1])
    assert s["verdict"] == "undecided"
    assert s["old_median_s"] == 1.0 and s["new_median_s"] == pytest.approx(1.1)


def test_arguments(br):
    a = br.parse_args([])
    assert (a.old, a.new, a.rounds, a.inner, a.threads, a.clock) == ("HEAD~1", "worktree", 10, 3, 1, "cpu")
    assert a.benches == ["step", "apply"] and not a.quick
    q = br.parse_args(["--quick", "--old", "ec80739", "--benches", "apply"])
    assert (q.old, q.rounds, q.inner, q.benches) == ("ec80739", 2, 1, ["apply"])
    assert br.parse_args(["--rounds", "7", "--new", "HEAD"]).rounds == 7
    for bad in (["--benches", "fit"], ["--rounds", "0"], ["--clock", "gpu"]):
        with pytest.raises(SystemExit):
            br.parse_args(bad)
