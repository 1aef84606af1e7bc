"""Smoke test of benchmarks/recovery.py: a tiny sweep through its real ``main``, JSON included."""

import importlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def recovery(monkeypatch, tmp_path):
    """The script as a module, writing its JSON under ``tmp_path``; torch's thread count restored after."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import `_common` as a sibling
    common = importlib.import_module("_common")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    threads = torch.get_num_threads()
    yield importlib.import_module("recovery")
    torch.set_num_threads(threads)


def test_tiny_sweep_fills_every_cell_and_recovers_own_structure(recovery, tmp_path, capsys):
    budgets = [48, 160]
    argv = ["--quick", "--stack", "3", "--features", "8", "--steps", "150"]
    argv += ["--budgets", ",".join(map(str, budgets)), "--name", "recovery_test"]
    payload = recovery.main(argv)
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "recovery_test.json").read_text())
    assert data["cells"] == json.loads(json.dumps(payload["cells"]))
    assert "Trainable parameters to reach" in out and "# seed 0" in out

    teachers, students = set(recovery.TEACHERS), set(recovery.STUDENTS)
    assert set(data["teachers"]) == teachers
    assert set(data["cells"]) == teachers
    for t in teachers:
        assert set(data["cells"][t]) == students
        for s in students:
            cell = data["cells"][t][s]
            assert [r["budget"] for r in cell["runs"]] == budgets
            assert set(cell["params_to_reach"]) == {"0.1", "0.01"}
            for r in cell["runs"]:
                if r["num_params"] is not None:
                    assert r["num_params"] <= r["budget"]
                    assert 0 <= r["fit"] and 0 <= r["trained"]

    # Each of these formats is exact on its own teacher once the budget holds the teacher's rank:
    # Tucker2 at rank 2 (44 params) at the first budget (HOOI exactly; Adam, slow at the exact rank,
    # at the second budget's rank 5), LoRA at rank 3 >= 2 at the second.
    tucker = data["cells"]["tucker2"]["Tucker2"]
    assert data["teachers"]["tucker2"]["num_params"] == 44
    assert tucker["runs"][0]["fit"] < 1e-8
    assert tucker["params_to_reach"]["0.01"]["fit"] == 44
    assert tucker["runs"][1]["trained"] < 0.01
    lora = data["cells"]["lora"]["LoRA"]
    assert lora["runs"][1]["fit"] < 1e-8 and lora["runs"][1]["trained"] < 0.01
    # ... and a rank-1 LoRA cannot fit the rank-2 layers of the LoRA teacher, nor Tucker2's shared ones.
    assert lora["runs"][0]["trained"] > 0.1
    assert data["cells"]["tucker2"]["LoRA"]["runs"][0]["fit"] > 0.1


def test_params_to_reach_picks_the_fewest_parameters_that_hit_the_target(recovery):
    runs = [
        {"num_params": 300, "trained": 0.005},
        {"num_params": 100, "trained": 0.5},
        {"num_params": 200, "trained": 0.05},
        {"num_params": None, "trained": None},
    ]
    assert recovery.params_to_reach(runs, "trained", 0.1) == 200
    assert recovery.params_to_reach(runs, "trained", 0.01) == 300
    assert recovery.params_to_reach(runs, "trained", 0.001) is None


def test_budget_grid_is_a_log_grid(recovery):
    assert recovery.budget_grid(256, 2048, 1) == [256, 512, 1024, 2048]
    assert recovery.budget_grid(100, 300, 2) == [100, 141, 200, 283]
