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


HUGE = 10**30


@pytest.fixture
def counted(monkeypatch):
    """Count the planner's parameter counts; past 400 of them a search is taken to be unbounded."""
    from tensorpeft.experiments import _methods

    real = _methods.adapter_params
    calls = []

    def adapter_params_counted(model, config):
        calls.append(config.rank)
        if len(calls) > 400:
            raise RuntimeError("unbounded rank search")
        return real(model, config)

    monkeypatch.setattr(_methods, "adapter_params", adapter_params_counted)
    return calls


@pytest.mark.parametrize("family", ["tucker2", "cp", "tt", "lora2"])
@pytest.mark.parametrize("budget", [10**7, HUGE])
def test_budget_above_the_format_maximum_answers_at_once(bert, family, budget, counted):
    import dataclasses

    config, params, limit = resolve_method(MethodSpec(family, str(budget)), bert, ["query", "value"])
    assert limit == budget and params == adapter_params(bert, config) <= budget
    assert len(counted) <= 400
    try:
        at_max = adapter_params(bert, dataclasses.replace(config, rank=config.rank + 1)) == params
    except ValueError:  # one more rank is refused
        at_max = True
    if at_max and config.rank > 1:  # the smallest rank that reaches the maximum
        assert adapter_params(bert, dataclasses.replace(config, rank=config.rank - 1)) < params


def test_tensor_train_maximum_on_minilm_is_found_and_named(counted):
    minilm = model_from_shape("bert", 6, 384, 12, 12, 1536)
    for word in ("10000000", str(HUGE)):
        _, rows = budget_table(minilm, ["query", "value"], word)
        by = {r.method: r for r in rows}
        assert by["tt"].params == 3_638_784 and "maximum" in by["tt"].note
        assert by["lora"].rank == 384 and "maximum" in by["lora"].note  # capped at the layer width, not refused
        assert "maximum" in by["tucker2"].note and "maximum" in by["lora2"].note


def test_within_budget_rows_carry_no_maximum_note(bert):
    _, rows = budget_table(bert, ["query", "value"], "r2")
    assert all(r.note == "" for r in rows if r.params)


@pytest.mark.parametrize(
    ("arch", "dims", "match"),
    [
        ("gpt", (2, 64, 4, 4, 8), "`arch` must be"),
        ("llama", (0, 64, 4, 4, 8), "`layers` must be an integer"),
        ("llama", (2, 64, 4, 4, True), "`intermediate` must be an integer"),
        ("llama", (2, 64, 3, 3, 8), "divisible by `heads`"),
        ("llama", (2, 64, 4, 3, 8), "divisible by `kv_heads`"),
        ("llama", (2, 60, 4, 4, 8), "must be even"),
        ("bert", (2, 64, 4, 2, 8), "`kv_heads` must equal"),
    ],
)
def test_model_from_shape_names_the_bad_number(arch, dims, match):
    with pytest.raises(ValueError, match=match):
        model_from_shape(arch, *dims)


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", float("nan")), ("lr", 0.0), ("head_lr", float("inf")), ("head_lr", -1.0), ("steps", 0), ("seed", -1)],
)
def test_train_settings_refuse_bad_values(field, value):
    from tensorpeft.experiments import TrainSettings

    with pytest.raises(ValueError, match=f"`{field}` must be"):
        TrainSettings(**{field: value})


@pytest.fixture
def plans(monkeypatch):
    """Count the times a model is planned (each plan walks every module of the model)."""
    import tensorpeft.nn
    from tensorpeft.nn import _grouping

    real, calls = _grouping.plan_stacks, []

    def plan_stacks_counted(model, config):
        calls.append(type(config).__name__)
        return real(model, config)

    monkeypatch.setattr(_grouping, "plan_stacks", plan_stacks_counted)
    monkeypatch.setattr(tensorpeft.nn, "plan_stacks", plan_stacks_counted)
    return calls


@pytest.mark.parametrize("word", ["r2", "tiny", "100000000"])
def test_budget_table_plans_a_few_times_per_family_not_per_probe(bert, plans, word):
    _, rows = budget_table(bert, ["query", "value"], word)
    assert len(rows) == 5 and plans  # the count sees the planner
    assert len(plans) <= 4 * len(rows)  # a rank search probes up to 64 scales: those are counted on the formats


def test_resolve_method_agrees_with_planning_the_model_at_the_found_rank(bert):
    import dataclasses

    for family in ("tucker2", "cp", "tt", "lora2"):
        config, params, budget = resolve_method(MethodSpec(family, "r2"), bert, ["query", "value"])
        assert params == adapter_params(bert, config) <= budget
        assert adapter_params(bert, dataclasses.replace(config, rank=config.rank + 1)) > budget


def test_budget_table_compares_with_lora_at_each_stacks_slice_rank(bert):
    from tensorpeft.experiments._methods import resolve_formats

    _, rows = budget_table(bert, ["query", "value"], "r2")
    by = {r.method: r for r in rows}
    _, formats, _, _ = resolve_formats(MethodSpec("tucker2", "r2"), bert, ["query", "value"])
    rank = by["tucker2"].rank
    assert all(f.slice_rank == rank for f in formats)
    lora = adapter_params(bert, LoRAConfig(rank=rank, target_modules=["query", "value"]))
    assert by["tucker2"].vs_lora == lora / by["tucker2"].params
    assert by["lora"].vs_lora == 1.0


def test_rank_for_budget_over_the_planned_stacks_matches_resolve_method(bert):
    from tensorpeft import decomp
    from tensorpeft.nn import Tucker2Config, plan_stacks

    config, params, budget = resolve_method(MethodSpec("tucker2", "r2"), bert, ["query", "value"])
    stacks = [plan for plan, _ in plan_stacks(bert, Tucker2Config(rank=1, target_modules=["query", "value"]))]
    found = decomp.rank_for_budget(decomp.Tucker2, budget, stacks=stacks)
    assert (found.scale, found.num_params) == (config.rank, params)


def test_family_labels_are_the_formats_own():
    """FAMILIES writes no label: each is the ``label`` of the format its config builds."""
    import tensorpeft as tp
    from tensorpeft import decomp
    from tensorpeft.experiments._methods import FAMILIES

    labels = {}
    for family, (config_name, label) in FAMILIES.items():
        fmt = getattr(decomp, getattr(tp, config_name).format_name)
        assert label == fmt.label, family
        labels[family] = label
    assert labels == {
        "lora": "LoRA",
        "tucker2": "Tucker-2 (LoTR)",
        "cp": "CP (LoRTA)",
        "tt": "TT (TT-LoRA)",
        "lora2": "LoRA² (orthogonal)",
    }
