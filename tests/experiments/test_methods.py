import pytest

pytest.importorskip("transformers")

from tensorpeft.experiments._budget import budget_table, model_from_shape
from tensorpeft.experiments._methods import MethodSpec, adapter_params, parse_methods, resolve_budget, resolve_method
from tensorpeft.nn import LoRAConfig


@pytest.fixture(scope="module")
def bert():
    return model_from_shape("bert", 4, 64, 4, 4, 128)


def test_parse_methods_expands_budgets_and_dedups():
    specs = parse_methods(["head", "lora:r8", "tucker2:r1", "tucker2:r1", "cp"], budgets=None)
    assert [s.label for s in specs] == ["head", "lora:r8", "tucker2:r1", "cp:r1"]
    specs = parse_methods(["lora:r2", "tt"], budgets=["tiny", "500"])
    assert [s.label for s in specs] == ["lora:r2", "tt:tiny", "tt:500"]


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        (["nope:r1"], "unknown method 'nope'"),
        (["head:r1"], "takes no budget"),
        (["lora:tiny"], "takes a rank rN"),
        (["cp:r0"], "budget 'r0'"),
        (["cp:abc"], "budget 'abc'"),
    ],
)
def test_parse_methods_rejects_bad_specs(specs, match):
    with pytest.raises(ValueError, match=match):
        parse_methods(specs)


def test_resolve_budget_words(bert):
    r1 = adapter_params(bert, LoRAConfig(rank=1, target_modules=["query", "value"]))
    assert r1 == 4 * 2 * (64 + 64)
    assert resolve_budget("r1", bert, ["query", "value"]) == r1
    assert resolve_budget("r4", bert, ["query", "value"]) == 4 * r1
    assert resolve_budget("tiny", bert, ["query", "value"]) == r1 // 4
    assert resolve_budget("1234", bert, ["query", "value"]) == 1234


@pytest.mark.parametrize("family", ["tucker2", "cp", "tt", "lora2"])
@pytest.mark.parametrize("budget", ["r1", "r2", "3000"])
def test_resolve_method_is_within_budget_and_maximal(bert, family, budget):
    import dataclasses

    targets = ["query", "value"]
    try:
        config, params, limit = resolve_method(MethodSpec(family, budget), bert, targets)
    except ValueError as exc:
        assert "below the smallest" in str(exc)
        return
    assert params == adapter_params(bert, config) <= limit
    try:
        bigger = adapter_params(bert, dataclasses.replace(config, rank=config.rank + 1))
    except ValueError:
        return  # rank already at a layer bound
    assert bigger > limit


def test_resolve_method_below_minimum_names_budget(bert):
    with pytest.raises(ValueError, match=r"budget '5' = 5 parameters is below the smallest"):
        resolve_method(MethodSpec("tucker2", "5"), bert, ["query", "value"])


def test_budget_table_rows(bert):
    budget, rows = budget_table(bert, ["query", "value"], "r2")
    assert budget == 2 * 4 * 2 * 128
    assert [r.method for r in rows] == ["lora", "tucker2", "cp", "tt", "lora2"]
    for r in rows:
        if r.params:
            assert r.params <= budget
    assert rows[0].params == budget and rows[0].rank == 2
