"""benchmarks/quality.py's target checks, on hand-made rows (the encoder's head baseline, the decoder's zero-shot)."""

import importlib
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tensorpeft.experiments import MethodRow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _row(method, params, accuracy):
    return MethodRow(method, method, "-", params, params, None, list(accuracy), 0.1, 100.0)


@pytest.fixture
def quality(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("quality")


def test_decoder_targets_use_zero_shot_and_a_tenth_of_lora(quality):
    rows = [
        _row("zero-shot", 0, [0.50, 0.50, 0.50]),
        _row("lora:r8", 1000, [0.80, 0.82, 0.81]),
        _row("tucker2:100", 100, [0.80, 0.81, 0.80]),  # 0.67 points below, at 1/10: met
        _row("cp:100", 101, [0.81, 0.81, 0.81]),  # within a point but above 1/10: missed
        _row("tucker2:tiny", 25, [0.70, 0.71, 0.69]),
        _row("cp:tiny", 25, [0.50, 0.52, 0.48]),  # not above zero-shot
        _row("tt:tiny", 20, [0.60, 0.62, 0.61]),
    ]
    targets = {t["target"]: t for t in quality._targets(rows, share=1 / 10, matched="100")}
    assert targets["tucker2:100 within 1 point of lora:r8 at <= 0.1 of its parameters"]["met"]
    assert not targets["cp:100 within 1 point of lora:r8 at <= 0.1 of its parameters"]["met"]
    assert targets["tucker2:tiny beats zero-shot clearly"]["met"]
    assert not targets["cp:tiny beats zero-shot clearly"]["met"]
    assert targets["tt:tiny beats zero-shot clearly"]["met"]  # every tensor format in the tiny regime
    assert not any(name.startswith("tt:100") for name in targets)  # the matched-budget claim is Tucker-2's and CP's


def test_encoder_targets_keep_head_and_the_r1_budget(quality):
    rows = [_row("head", 0, [0.7, 0.7]), _row("lora:r8", 800, [0.8, 0.8]), _row("tucker2:r1", 100, [0.795, 0.795])]
    (target,) = quality._targets(rows)
    assert target["target"].startswith("tucker2:r1 within 1 point") and target["met"]
