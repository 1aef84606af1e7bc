"""rank_for_budget and compare: within budget, maximal, the papers' counts inverted exactly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensorpeft import decomp

# --------------------------------------------------------------------------- independent counts
# Closed formulas written from the papers, not from the formats' code: (count(s), bound or None).


def lora_count(stack, o, i):
    return (lambda s: math.prod(stack) * s * (i + o)), min(o, i)


def tucker2_count(stack, o, i):
    return (lambda s: s * o + s * i + math.prod(stack) * s * s), min(o, i)


def cp_count(stack, o, i, heads=None):
    width = sum(stack) + i + (o if heads is None else heads + o // heads)
    return (lambda s: s * width), None


def tt_count(stack, in_modes, out_modes, share_stack=True):
    train = (*stack, *in_modes, *out_modes) if share_stack else (*in_modes, *out_modes)
    bounds = [min(math.prod(train[: k + 1]), math.prod(train[k + 1 :])) for k in range(len(train) - 1)]
    copies = 1 if share_stack else math.prod(stack)

    def count(s):
        ranks = [1, *(min(s, b) for b in bounds), 1]
        return copies * sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(train))

    return count, max(bounds, default=1)


def orthogonal_count(stack, o, i):
    return (lambda s: math.prod(stack) * (s * (i + o) + 2 * s * s + s)), min(o, i)


def brute_force(count, bound, budget):
    """Largest s with count(s) <= budget (s <= bound), by walking up from 1; None if count(1) > budget."""
    if count(1) > budget:
        return None
    s = 1
    while (bound is None or s < bound) and count(s + 1) <= budget:
        s += 1
    return s


def scalar(fmt):
    if isinstance(fmt, decomp.Tucker2):
        return fmt.rank[0]
    if isinstance(fmt, decomp.TensorTrain):
        return max(fmt.rank)
    return fmt.rank


shapes = st.tuples(
    st.lists(st.integers(1, 4), max_size=2).map(tuple),
    st.sampled_from([1, 2, 4, 6, 8, 12, 16]),
    st.sampled_from([1, 3, 4, 6, 8, 9, 12]),
)
budgets = st.integers(1, 3_000)


def check_matches(cls, kwargs, count, bound, budget):
    expected = brute_force(count, bound, budget)
    if expected is None:
        with pytest.raises(decomp.BudgetError, match=rf"`budget`={budget} is below the {count(1)} parameters"):
            decomp.rank_for_budget(cls, budget, **kwargs)
        return
    fmt = decomp.rank_for_budget(cls, budget, **kwargs)
    assert type(fmt) is cls
    assert fmt.num_params <= budget
    assert fmt.num_params == count(expected)
    assert scalar(fmt) == expected  # maximal: brute force found no larger admissible scale
    assert bound is None or expected == bound or count(expected + 1) > budget


@given(shapes, budgets)
def test_lora_within_budget_and_maximal(shape, budget):
    stack, o, i = shape
    check_matches(decomp.LoRA, {"stack": stack, "out_features": o, "in_features": i}, *lora_count(*shape), budget)


@given(shapes, budgets)
def test_tucker2_within_budget_and_maximal(shape, budget):
    stack, o, i = shape
    kwargs = {"stack": stack, "out_features": o, "in_features": i}
    check_matches(decomp.Tucker2, kwargs, *tucker2_count(*shape), budget)


@given(shapes, budgets, st.booleans())
def test_cp_within_budget_and_maximal(shape, budget, split):
    stack, o, i = shape
    heads = next(h for h in (4, 2, 1) if o % h == 0) if split else None
    kwargs = {"stack": stack, "out_features": o, "in_features": i, "heads": heads}
    check_matches(decomp.CP, kwargs, *cp_count(stack, o, i, heads), budget)


@given(shapes, budgets, st.booleans())
def test_tensor_train_within_budget_and_maximal(shape, budget, share):
    stack, o, i = shape
    in_modes, out_modes = decomp.balanced_modes(i), tuple(reversed(decomp.balanced_modes(o)))
    kwargs = {"stack": stack, "out_features": o, "in_features": i, "share_stack": share}
    check_matches(decomp.TensorTrain, kwargs, *tt_count(stack, in_modes, out_modes, share), budget)


@given(shapes, budgets)
def test_orthogonal_within_budget_and_maximal(shape, budget):
    stack, o, i = shape
    kwargs = {"stack": stack, "out_features": o, "in_features": i}
    check_matches(decomp.OrthogonalProjection, kwargs, *orthogonal_count(*shape), budget)


@given(shapes, budgets)
def test_tucker2_with_one_side_fixed(shape, budget):
    stack, o, i = shape
    r_out = 1 + budget % o
    kwargs = {"stack": stack, "out_features": o, "in_features": i, "rank_out": r_out}

    def count(s):
        return r_out * o + s * i + math.prod(stack) * r_out * s

    expected = brute_force(count, i, budget)
    if expected is None:
        with pytest.raises(decomp.BudgetError):
            decomp.rank_for_budget(decomp.Tucker2, budget, **kwargs)
        return
    fmt = decomp.rank_for_budget(decomp.Tucker2, budget, **kwargs)
    assert fmt.rank == (r_out, expected)
    assert fmt.num_params == count(expected) <= budget


@given(st.integers(1, 12), st.integers(1, 12), budgets)
def test_orthogonal_with_fixed_inner_keeps_it(inner, extra, budget):
    o, i = inner + extra, inner + 2 * extra
    fixed = {"stack": (3,), "out_features": o, "in_features": i, "inner": inner}

    def count(s):
        return 3 * (inner * (i + o) + 2 * inner * s + s)

    expected = brute_force(count, inner, budget)
    if expected is None:
        with pytest.raises(decomp.BudgetError):
            decomp.rank_for_budget(decomp.OrthogonalProjection, budget, **fixed)
        return
    fmt = decomp.rank_for_budget(decomp.OrthogonalProjection, budget, **fixed)
    assert (fmt.rank, fmt.inner) == (expected, inner)
    assert fmt.num_params == count(expected) <= budget


# --------------------------------------------------------------------------- the papers' numbers

ROBERTA = {"stack": (24,), "out_features": 768, "in_features": 768}


@pytest.mark.parametrize(("r", "count"), [(1, 1_560), (2, 3_168), (4, 6_528), (8, 13_824), (16, 30_720), (32, 73_728)])
def test_lotr_counts_invert(r, count):
    fmt = decomp.rank_for_budget(decomp.Tucker2, count, **ROBERTA)
    assert (fmt.rank, fmt.num_params) == ((r, r), count)
    if r == 1:
        with pytest.raises(decomp.BudgetError, match=r"1559.*1560"):
            decomp.rank_for_budget(decomp.Tucker2, count - 1, **ROBERTA)
    else:
        assert decomp.rank_for_budget(decomp.Tucker2, count - 1, **ROBERTA).rank == (r - 1, r - 1)


@pytest.mark.parametrize("R", [1, 2, 8, 100, 12_345])
def test_lorta_860_per_rank_inverts(R):
    kwargs = {"stack": (12, 4), "out_features": 768, "in_features": 768, "heads": 12}
    for budget in (860 * R, 860 * R + 859):
        fmt = decomp.rank_for_budget(decomp.CP, budget, **kwargs)
        assert (fmt.rank, fmt.num_params) == (R, 860 * R)


def test_tt_lora_990_inverts():
    kwargs = {"stack": (), "out_features": 768, "in_features": 768, "in_modes": (64, 4, 3), "out_modes": (3, 4, 64)}
    fmt = decomp.rank_for_budget(decomp.TensorTrain, 990, **kwargs)
    assert (fmt.rank, fmt.num_params) == ((5,) * 5, 990)
    assert decomp.rank_for_budget(decomp.TensorTrain, 989, **kwargs).rank == (4,) * 5


def test_tt_rank_stops_at_its_bound():
    kwargs = {"stack": (), "out_features": 4, "in_features": 6, "in_modes": (2, 3), "out_modes": (2, 2)}
    full = decomp.TensorTrain(rank=10**6, **kwargs)
    fmt = decomp.rank_for_budget(decomp.TensorTrain, 10**9, **kwargs)
    assert fmt.rank == full.rank == (2, 4, 2)
    assert fmt.num_params == full.num_params


def test_lora2_deberta_total_inverts():
    groups = [((12, 4), 768, 768), ((12,), 3072, 768), ((12,), 768, 3072)]  # q,k,v,o; intermediate; output
    per_group = [
        decomp.OrthogonalProjection(stack=s, out_features=o, in_features=i, rank=8).num_params for s, o, i in groups
    ]
    assert sum(per_group) == 1_336_896
    total = 0
    for (s, o, i), budget in zip(groups, per_group, strict=True):
        fmt = decomp.rank_for_budget(decomp.OrthogonalProjection, budget, stack=s, out_features=o, in_features=i)
        assert (fmt.rank, fmt.inner, fmt.num_params) == (8, 8, budget)
        total += fmt.num_params
    assert total == 1_336_896


def test_bounded_formats_stop_at_full_rank():
    for cls in (decomp.LoRA, decomp.Tucker2, decomp.OrthogonalProjection):
        fmt = decomp.rank_for_budget(cls, 10**12, stack=(2,), out_features=5, in_features=3)
        assert scalar(fmt) == 3


def test_huge_budget_for_unbounded_cp_is_exact():
    fmt = decomp.rank_for_budget(decomp.CP, 10**15 + 7, stack=(), out_features=3, in_features=4)
    assert fmt.rank == (10**15 + 7) // 7


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("budget", [1.5, 100.0, "100", True, None])
def test_non_integer_budget_is_a_type_error(budget):
    with pytest.raises(TypeError, match="`budget`"):
        decomp.rank_for_budget(decomp.LoRA, budget, **ROBERTA)


@pytest.mark.parametrize("budget", [0, -3])
def test_non_positive_budget_is_a_value_error(budget):
    with pytest.raises(ValueError, match=rf"`budget` must be a positive integer.*{budget}"):
        decomp.rank_for_budget(decomp.LoRA, budget, **ROBERTA)


def test_budget_error_names_smallest_count_and_budget():
    with pytest.raises(ValueError, match=r"`budget`=1000 is below the 36864 parameters of the smallest LoRA") as info:
        decomp.rank_for_budget(decomp.LoRA, 1000, **ROBERTA)
    assert info.value.smallest.num_params == 36_864


def test_numpy_integer_budget_is_accepted():
    np = pytest.importorskip("numpy")
    fmt = decomp.rank_for_budget(decomp.Tucker2, np.int64(13_824), **ROBERTA)
    assert fmt.rank == (8, 8)


def test_rank_argument_is_refused():
    with pytest.raises(TypeError, match="`rank` is what rank_for_budget chooses"):
        decomp.rank_for_budget(decomp.Tucker2, 10_000, rank=4, **ROBERTA)


@pytest.mark.parametrize("cls", [int, "Tucker2", decomp.Tucker2(stack=(), out_features=2, in_features=2, rank=1)])
def test_non_format_class_is_a_type_error(cls):
    with pytest.raises(TypeError, match="`format_cls`"):
        decomp.rank_for_budget(cls, 100, **ROBERTA)


def test_subclass_without_hooks_is_a_type_error():
    class Custom(decomp.TensorNetwork):
        def __init__(self, n):
            super().__init__("ab,bc->ac", {"a": n, "b": 2, "c": n}, out_indices="a", in_indices="c")

    with pytest.raises(TypeError, match="`format_cls`=Custom has no rank hooks"):
        decomp.rank_for_budget(Custom, 100, n=4)


def test_tucker2_both_sides_fixed_is_refused():
    with pytest.raises(ValueError, match="`rank_out` and `rank_in` are both fixed"):
        decomp.rank_for_budget(decomp.Tucker2, 10**6, rank_out=2, rank_in=3, **ROBERTA)


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [(decomp.Tucker2, {"rank_out": 0}, r"rank\[0\]"), (decomp.OrthogonalProjection, {"inner": 0}, "inner")],
)
def test_fixed_zero_is_rejected_not_replaced(cls, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}` must be a positive integer"):
        decomp.rank_for_budget(cls, 10**6, **kwargs, **ROBERTA)


def test_bad_constructor_arguments_surface():
    with pytest.raises(ValueError, match="`heads`=5 must divide `out_features`=768"):
        decomp.rank_for_budget(decomp.CP, 10**6, heads=5, **ROBERTA)
    with pytest.raises(TypeError):
        decomp.rank_for_budget(decomp.LoRA, 10**6, stack=(2,), out_features=4)


# --------------------------------------------------------------------------- custom formats

NETWORK = {
    "equation": "or,lrs,is->loi",
    "sizes": {"o": 6, "l": 4, "i": 5},
    "stack_indices": "l",
    "out_indices": "o",
    "in_indices": "i",
}


@given(budgets, st.one_of(st.none(), st.integers(1, 20)))
def test_plain_network_with_rank_indices(budget, max_rank):
    def count(s):
        return 6 * s + 4 * s * s + 5 * s

    expected = brute_force(count, max_rank, budget)
    if expected is None:
        with pytest.raises(decomp.BudgetError):
            decomp.rank_for_budget(decomp.TensorNetwork, budget, rank_indices="rs", max_rank=max_rank, **NETWORK)
        return
    fmt = decomp.rank_for_budget(decomp.TensorNetwork, budget, rank_indices="rs", max_rank=max_rank, **NETWORK)
    assert (fmt.sizes["r"], fmt.sizes["s"]) == (expected, expected)
    assert fmt.num_params == count(expected) <= budget


def test_plain_network_needs_contracted_rank_indices():
    with pytest.raises(TypeError, match="`rank_indices`"):
        decomp.rank_for_budget(decomp.TensorNetwork, 100, **NETWORK)
    with pytest.raises(ValueError, match="`rank_indices`='l'"):
        decomp.rank_for_budget(decomp.TensorNetwork, 100, rank_indices="l", **NETWORK)
    with pytest.raises(ValueError, match="`rank_indices`='z'"):
        decomp.rank_for_budget(decomp.TensorNetwork, 100, rank_indices="z", **NETWORK)


def test_subclass_with_from_scale_only_is_unbounded():
    class Chain(decomp.TensorNetwork):
        def __init__(self, rank):
            super().__init__("ar,rb->ab", {"a": 3, "r": rank, "b": 2}, out_indices="a", in_indices="b")

        @classmethod
        def from_scale(cls, scale):
            return cls(scale)

    fmt = decomp.rank_for_budget(Chain, 101)
    assert (fmt.sizes["r"], fmt.num_params) == (20, 100)


# --------------------------------------------------------------------------- compare

NAMES = ["LoRA", "Tucker2", "CP", "TensorTrain", "OrthogonalProjection"]
ALIASES = ["LoRA", "LoTR", "LoRTA", "TT-LoRA", "LoRA²"]


@given(shapes, budgets)
def test_compare_one_row_per_format(shape, budget):
    stack, o, i = shape
    table = decomp.compare(budget=budget, stack=stack, out_features=o, in_features=i)
    assert [r.name for r in table.rows] == NAMES
    assert [r.alias for r in table.rows] == ALIASES
    dense = math.prod(stack) * o * i
    for row, cls in zip(table.rows, [getattr(decomp, n) for n in NAMES], strict=True):
        kwargs = {"stack": stack, "out_features": o, "in_features": i}
        try:
            fmt = decomp.rank_for_budget(cls, budget, **kwargs)
        except decomp.BudgetError as err:
            assert row.num_params is None and row.rank is None
            assert row.note == f"does not fit: rank 1 needs {err.smallest.num_params:,} params"
            continue
        assert row.format == fmt
        assert (row.rank, row.num_params) == (fmt.rank, fmt.num_params)
        assert row.num_params <= budget
        assert row.vs_dense == dense / row.num_params
        assert row.vs_lora == math.prod(stack) * row.slice_rank * (o + i) / row.num_params
        assert 1 <= row.slice_rank <= min(o, i)


def test_compare_roberta_table():
    table = decomp.compare(75_000, (24,), 768, 768)
    rows = {r.name: r for r in table}
    assert len(table) == 5
    assert (rows["LoRA"].rank, rows["LoRA"].vs_lora, rows["LoRA"].vs_dense) == (2, 1.0, 192.0)
    assert (rows["Tucker2"].rank, rows["Tucker2"].slice_rank, rows["Tucker2"].vs_lora) == ((32, 32), 32, 16.0)
    assert rows["CP"].slice_rank == rows["CP"].rank == 48
    tt = rows["TensorTrain"]
    assert tt.slice_rank == tt.rank[len(tt.format.in_modes)]  # bond between the input and output cores
    assert rows["OrthogonalProjection"].slice_rank == rows["OrthogonalProjection"].rank


def test_compare_passes_format_options():
    table = decomp.compare(2_000, (12, 4), 768, 768, heads=12, in_modes=(64, 4, 3), out_modes=(3, 4, 64))
    rows = {r.name: r for r in table}
    assert rows["CP"].format.heads == 12 and rows["CP"].num_params == 860 * 2
    assert rows["TensorTrain"].format.in_modes == (64, 4, 3)
    assert "does not fit: rank 1 needs 73,728 params" in rows["LoRA"].note


def test_compare_str_is_an_aligned_table():
    text = str(decomp.compare(30_000, (24,), 768, 768))
    lines = text.splitlines()
    assert lines[0].startswith("budget 30,000 params")
    header, rule, *body = lines[1:]
    assert set(rule) == {"-"} and len(body) == 5
    end = header.index("params") + len("params")
    for line, name in zip(body, NAMES, strict=True):
        assert line.startswith(name)
        assert line[end - 1] != " "  # numbers are right-aligned under their header
    assert "does not fit: rank 1 needs 36,864 params" in body[0]
    assert "28,440" in body[1]


def test_compare_to_dicts_is_plain_data():
    dicts = decomp.compare(10_000, (), 64, 32).to_dicts()
    assert len(dicts) == 5
    assert set(dicts[0]) == {"name", "alias", "rank", "num_params", "slice_rank", "vs_dense", "vs_lora", "note"}
    assert (
        dicts[0]["num_params"]
        == decomp.rank_for_budget(decomp.LoRA, 10_000, stack=(), out_features=64, in_features=32).num_params
    )


def test_compare_rows_are_frozen():
    row = decomp.compare(10_000, (), 64, 32).rows[0]
    with pytest.raises(AttributeError):
        row.rank = 3


def test_compare_bad_arguments_raise():
    with pytest.raises(ValueError, match="`budget`"):
        decomp.compare(0, (24,), 768, 768)
    with pytest.raises(TypeError, match="`out_features`"):
        decomp.compare(10_000, (24,), 768.0, 768)
    with pytest.raises(ValueError, match="`heads`=5"):
        decomp.compare(10**6, (24,), 768, 768, heads=5)


def test_unbounded_search_reaches_the_budget_itself():
    # two parameters per unit of rank (the fewest a network can have: an index summed inside one factor is
    # refused): the search must reach the budget exactly
    kwargs = {"equation": "ar,rb->ab", "sizes": {"a": 1, "b": 1}, "out_indices": "a", "in_indices": "b"}
    fmt = decomp.rank_for_budget(decomp.TensorNetwork, 14, rank_indices="r", **kwargs)
    assert (fmt.sizes["r"], fmt.num_params) == (7, 14)


# --------------------------------------------------------------------------- budgets above the largest format


def _counting(base):
    """A subclass of ``base`` that counts the formats ``rank_for_budget`` builds."""

    class Counted(base):
        built = 0

        @classmethod
        def from_scale(cls, scale, **kwargs):
            Counted.built += 1
            return super().from_scale(scale, **kwargs)

    return Counted


@given(shapes, st.booleans(), st.integers(0, 10**40))
def test_tensor_train_budget_above_its_maximum_gives_the_full_train(shape, share, extra):
    stack, o, i = shape
    kwargs = {"stack": stack, "out_features": o, "in_features": i, "share_stack": share}
    full = decomp.TensorTrain(rank=10**30, **kwargs)  # every bond at its bound
    count, bound = tt_count(stack, decomp.balanced_modes(i), tuple(reversed(decomp.balanced_modes(o))), share)
    assert full.num_params == count(bound)
    counted = _counting(decomp.TensorTrain)
    fmt = decomp.rank_for_budget(counted, full.num_params + extra, **kwargs)
    assert (fmt.rank, fmt.num_params) == (full.rank, full.num_params)
    assert counted.built <= 2  # the smallest, then the largest: answered at once


def test_tensor_train_huge_budget_is_answered_with_two_builds():
    counted = _counting(decomp.TensorTrain)
    fmt = decomp.rank_for_budget(counted, 10**300, stack=(24,), out_features=768, in_features=768)
    assert fmt.rank == decomp.TensorTrain((24,), 768, 768, rank=10**9).rank
    assert counted.built == 2


@pytest.mark.parametrize("cls", [decomp.LoRA, decomp.Tucker2, decomp.OrthogonalProjection, decomp.CP])
def test_huge_budgets_take_at_most_two_builds(cls):
    counted = _counting(cls)
    fmt = decomp.rank_for_budget(counted, 10**300, stack=(2,), out_features=5, in_features=3)
    assert counted.built == 2
    assert scalar(fmt) == (2**63 - 1 if cls is decomp.CP else 3)  # CP: the largest rank a format may have


def test_search_is_bounded_for_a_format_whose_count_stops_growing():
    class Capped(decomp.TensorNetwork):  # rank capped at 5 by the format itself, no `max_scale`
        built = 0

        def __init__(self, rank):
            super().__init__("ar,rb->ab", {"a": 3, "r": min(rank, 5), "b": 2}, out_indices="a", in_indices="b")

        @classmethod
        def from_scale(cls, scale):
            cls.built += 1
            return cls(scale)

    fmt = decomp.rank_for_budget(Capped, 10**300)
    assert fmt.sizes["r"] == 5
    assert Capped.built <= 66  # binary search on [1, 2**63 - 1], not on [1, budget]
    Capped.built = 0
    fmt = decomp.rank_for_budget(Capped, 24)  # 5 * (3 + 2) = 25 > 24: rank 4 (20 params)
    assert fmt.num_params == 20 and Capped.built <= 66


def test_bad_hooks_are_type_errors_naming_format_cls():
    class BadBound(decomp.LoRA):
        @classmethod
        def max_scale(cls, **kwargs):
            return 2.5

    class BadBuild(decomp.LoRA):
        @classmethod
        def from_scale(cls, scale, **kwargs):
            return "not a format"

    kwargs = {"stack": (2,), "out_features": 5, "in_features": 3}
    with pytest.raises(TypeError, match=r"`format_cls`=BadBound: `max_scale` must return a positive int or None"):
        decomp.rank_for_budget(BadBound, 100, **kwargs)
    with pytest.raises(TypeError, match=r"`format_cls`=BadBuild: `from_scale` must return a format, got str"):
        decomp.rank_for_budget(BadBuild, 100, **kwargs)


def test_network_sizes_must_be_a_mapping():
    kwargs = {"equation": "ar,rb->ab", "out_indices": "a", "in_indices": "b", "rank_indices": "r"}
    with pytest.raises(TypeError, match=r"`sizes` must be a mapping"):
        decomp.rank_for_budget(decomp.TensorNetwork, 100, sizes=[("a", 3), ("b", 2)], **kwargs)


def test_compare_refuses_huge_shapes_at_once():
    with pytest.raises(ValueError, match=r"`in_features` must be at most 2,147,483,648"):
        decomp.compare(10**6, (24,), 768, 2**61 - 1)
    with pytest.raises(ValueError, match=r"`stack\[0\]` must be at most"):
        decomp.compare(10**6, (2**40,), 768, 768)


# --------------------------------------------------------------------------- stacks of a model

MODEL_STACKS = [((6,), 384, 384), ((6,), 1536, 384), ((6,), 384, 1536)]


def _total(cls, scale, stacks, **kwargs):
    shapes = [dict(zip(("stack", "out_features", "in_features"), s, strict=True)) for s in stacks]
    return sum(cls.from_scale(scale, **kwargs, **shape).num_params for shape in shapes)


@pytest.mark.parametrize("cls", [decomp.LoRA, decomp.Tucker2, decomp.CP, decomp.OrthogonalProjection])
@pytest.mark.parametrize("budget", [30_000, 123_457, 1_000_000])
def test_stacks_share_one_scale_within_the_summed_budget_and_maximal(cls, budget):
    plan = decomp.rank_for_budget(cls, budget, stacks=MODEL_STACKS)
    assert isinstance(plan, decomp.BudgetPlan) and len(plan.formats) == len(MODEL_STACKS)
    assert [f.shape for f in plan.formats] == [(*s, o, i) for s, o, i in MODEL_STACKS]
    assert plan.num_params == _total(cls, plan.scale, MODEL_STACKS) <= budget
    assert plan.formats[0] == cls.from_scale(plan.scale, stack=(6,), out_features=384, in_features=384)
    assert plan.at_max or _total(cls, plan.scale + 1, MODEL_STACKS) > budget


def test_a_stack_that_refuses_a_scale_caps_the_shared_one():
    plan = decomp.rank_for_budget(decomp.LoRA, 10**9, stacks=[((2,), 64, 64), ((), 64, 3)])
    assert plan.scale == 3 and plan.at_max  # rank 4 is refused by the 64×3 stack
    small = decomp.rank_for_budget(decomp.LoRA, 400, stacks=[((2,), 64, 64), ((), 64, 3)])
    assert small.scale == 1 and not small.at_max  # 256 + 67 at rank 1; rank 2 needs 646


def test_stacks_of_tensor_trains_stop_at_the_smallest_scale_of_the_maximum():
    stacks = [{"stack": (), "out_features": 4, "in_features": 4, "in_modes": (2, 2), "out_modes": (2, 2)}]
    stacks.append({"stack": (2,), "out_features": 8, "in_features": 8, "share_stack": False})
    plan = decomp.rank_for_budget(decomp.TensorTrain, 10**12, stacks=stacks)
    assert plan.at_max
    below = decomp.rank_for_budget(decomp.TensorTrain, plan.num_params - 1, stacks=stacks)
    assert below.scale == plan.scale - 1 and below.num_params < plan.num_params


def test_stacks_take_dicts_merged_over_the_shared_arguments():
    plan = decomp.rank_for_budget(
        decomp.CP, 5_000, stacks=[{"stack": (12,), "out_features": 768, "in_features": 768}], heads=12
    )
    assert plan.formats[0].heads == 12 and plan.num_params == plan.scale * (12 + 12 + 64 + 768)


def test_stacks_below_rank_one_raise_a_budget_error_with_the_smallest_plan():
    with pytest.raises(decomp.BudgetError, match=r"on these 3 stack\(s\) \(rank 1\)") as info:
        decomp.rank_for_budget(decomp.LoRA, 100, stacks=MODEL_STACKS)
    assert info.value.smallest.num_params == _total(decomp.LoRA, 1, MODEL_STACKS) == 6 * (768 + 1920 + 1920)


@pytest.mark.parametrize(
    ("stacks", "error", "match"),
    [
        ("abc", TypeError, "`stacks` must be a list"),
        ({"stack": (2,)}, TypeError, "`stacks` must be a list"),
        ([], ValueError, "`stacks` must name at least one stack"),
        ([((2,), 4)], TypeError, r"`stacks\[0\]` must be a \(stack, out_features, in_features\) tuple"),
        (
            [((2,), 4, 4), {"stack": (2,), "out_features": 4, "in_features": 4, "rank": 2}],
            TypeError,
            r"`stacks\[1\]` names `rank`",
        ),
        ([((2,), 0, 4)], ValueError, "`out_features`"),
    ],
)
def test_bad_stacks_are_named(stacks, error, match):
    with pytest.raises(error, match=match):
        decomp.rank_for_budget(decomp.LoRA, 1000, stacks=stacks)


def test_stacks_take_objects_with_the_shape_attributes():
    from types import SimpleNamespace

    plans = [SimpleNamespace(stack=(4,), out_features=64, in_features=64, heads=4)]
    plans.append(SimpleNamespace(stack=(4,), out_features=32, in_features=64, heads=None))
    plan = decomp.rank_for_budget(decomp.CP, 2_000, stacks=plans)
    assert [f.heads for f in plan.formats] == [4, None]
    assert plan.num_params == plan.scale * ((4 + 4 + 16 + 64) + (4 + 32 + 64)) <= 2_000
