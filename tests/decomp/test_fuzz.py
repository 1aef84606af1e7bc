"""Fuzz every public entry point of ``tensorpeft.decomp`` and ``tensorpeft.testing`` with wrong arguments.

Each example replaces one or more arguments of a valid call by a value drawn from a wide mix (ints, huge
ints, floats with NaN and inf, None, bools, strings, numpy scalars, numpy and torch dtypes, tuples of the
wrong length, lists, dicts, small arrays of every dtype) and asserts that only ValueError or TypeError
escapes (AssertionError too from the assertion helpers), with a message that names an argument in
backticks (the plain result records excepted). Nothing is allocated from a drawn size: formats
built from drawn arguments are only inspected, the verbs run on small fixed formats, and the huge sizes
rely on the bounds checked at entry (a call that hung would hang the test).

Examples per entry point: a third of the active hypothesis profile's ``max_examples`` ("ci": 8, so a
few hundred in all; ``HYPOTHESIS_PROFILE=thorough``: 166). With ``TENSORPEFT_FUZZ_COUNTS=path`` the
calls tried and the outcomes seen (per entry point and in total) are written to ``path`` as JSON.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tensorpeft import decomp, testing

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

COUNTS: collections.Counter = collections.Counter()
UNNAMED: dict[str, str] = {}  # entry point -> first message of an error that names no argument
# Plain result records (frozen dataclasses, no checks): a method of one built from junk may fail in Python.
UNCHECKED_RECORDS = {"Comparison.to_dicts"}
EXAMPLES = max(3, settings().max_examples // 3)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
ALLOWED = (ValueError, TypeError)


@pytest.fixture(scope="module", autouse=True)
def _dump_counts():
    """Write :data:`COUNTS` to ``$TENSORPEFT_FUZZ_COUNTS`` (JSON) once the module's tests have run."""
    yield
    path = os.environ.get("TENSORPEFT_FUZZ_COUNTS")
    if path:
        outcomes = collections.Counter()
        for key, n in COUNTS.items():
            if key.count(":") == 1 and not key.startswith("calls:"):
                outcomes[key.split(":")[1]] += n
        report = {
            "calls": COUNTS["calls"],
            "entry_points": len({k.split(":")[1] for k in COUNTS if k.startswith("calls:")}),
            "outcomes": dict(sorted(outcomes.items())),
            "by_entry_point": dict(sorted(COUNTS.items())),
            "unnamed_examples": UNNAMED,
        }
        with open(path, "w") as fh:
            json.dump(report, fh, indent=1)


# ---------------------------------------------------------------------------------------- the values

DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int8, np.bool_, np.complex128, object, "float32", "bf16"]
if torch is not None:
    DTYPES += [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.complex64, torch.bool]
    DTYPES += [torch.float8_e4m3fn]

HUGE = [2**31, 2**31 + 1, 2**61 - 1, 2**63 - 1, 2**63, 2**64, 10**20, 10**100, -(2**63), -1, 0]
scalars = st.one_of(
    st.integers(-3, 12),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.5, 2.0, -0.0]),
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.sampled_from(["numpy", "torch", "o", "", "or,ri->oi", "float64", "fit"]),
    st.sampled_from([np.int64(3), np.int64(-2), np.uint8(2), np.float32(1.5), np.float64(np.nan), np.bool_(True)]),
    st.sampled_from(DTYPES),
)
small_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.bool_, np.complex128]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
junk = st.one_of(
    scalars,
    st.tuples(),
    st.lists(scalars, max_size=4).map(tuple),
    st.lists(st.integers(-1, 5), min_size=1, max_size=5).map(tuple),
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(list("oirlsAGBx")), scalars, max_size=4),
    small_arrays,
)
if torch is not None:
    junk = st.one_of(junk, small_arrays.filter(lambda a: a.dtype != np.float16).map(torch.from_numpy))


def _call(name, fn, kwargs):
    """Call ``fn(**kwargs)``; count the outcome; fail on any exception but ValueError/TypeError."""
    COUNTS["calls"] += 1
    COUNTS[f"calls:{name}"] += 1
    try:
        result = fn(**kwargs)
    except ALLOWED as exc:
        COUNTS[f"{name}:{type(exc).__name__}"] += 1
        if "`" not in str(exc):  # a message straight from numpy/torch/Python, naming no argument
            COUNTS[f"unnamed:{name}:{type(exc).__name__}"] += 1
            UNNAMED.setdefault(name, str(exc))
            if name not in UNCHECKED_RECORDS:
                raise AssertionError(f"{name}({kwargs!r}) raised {exc!r}, which names no argument") from exc
        return None
    except Exception as exc:  # the failure being tested for
        COUNTS[f"{name}:{type(exc).__name__}"] += 1
        raise AssertionError(f"{name}({kwargs!r}) raised {type(exc).__name__}: {exc}") from exc
    COUNTS[f"{name}:ok"] += 1
    return result


def _fuzzed(data, defaults: dict) -> dict:
    """``defaults`` with a non-empty subset of its arguments replaced by junk."""
    names = sorted(defaults)
    replaced = data.draw(st.sets(st.sampled_from(names), min_size=1, max_size=len(names)))
    return {k: (data.draw(junk, label=k) if k in replaced else v) for k, v in defaults.items()}


def _inspect(fmt):
    """What a built format answers without allocating (each must work for a format that was built)."""
    assert isinstance(fmt.num_params, int) and fmt.num_params >= 1
    assert len(fmt.shape) == len(fmt.stack) + 2
    repr(fmt)
    hash(fmt)


# ---------------------------------------------------------------------------------------- decomp constructors

NET = dict(
    equation="or,lrs,is->loi",
    sizes={"o": 4, "r": 2, "l": 3, "s": 2, "i": 5},
    stack_indices="l",
    out_indices="o",
    in_indices="i",
    factor_names=None,
    zero_factor=None,
)
COMMON = dict(stack=(2,), out_features=4, in_features=6, rank=2)
CONSTRUCTORS = {
    "LoRA": (decomp.LoRA, COMMON),
    "Tucker2": (decomp.Tucker2, COMMON | {"rank": (1, 2)}),
    "CP": (decomp.CP, COMMON | {"heads": 2}),
    "TensorTrain": (decomp.TensorTrain, COMMON | {"in_modes": (3, 2), "out_modes": None, "share_stack": True}),
    "OrthogonalProjection": (decomp.OrthogonalProjection, COMMON | {"inner": 3}),
    "TensorNetwork": (decomp.TensorNetwork, NET),
    "Sum": (lambda f1, f2: decomp.Sum(f1, f2), {"f1": decomp.LoRA((2,), 4, 6, 1), "f2": decomp.CP((2,), 4, 6, 2)}),
}


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
@FUZZ
@given(data=st.data())
def test_constructors(name, data):
    cls, defaults = CONSTRUCTORS[name]
    fmt = _call(name, cls, _fuzzed(data, defaults))
    if fmt is not None:
        _inspect(fmt)


# ---------------------------------------------------------------------------------------- decomp verbs

FORMATS = {
    "LoRA": decomp.LoRA((2,), 4, 3, 2),
    "Tucker2": decomp.Tucker2((2, 2), 4, 3, (2, 1)),
    "CP": decomp.CP((2,), 4, 3, 2, heads=2),
    "TensorTrain": decomp.TensorTrain((2,), 4, 6, 2, share_stack=False),
    "OrthogonalProjection": decomp.OrthogonalProjection((2,), 4, 3, 1, inner=2),
    "TensorNetwork": decomp.TensorNetwork(**NET),
    "Sum": decomp.Sum(decomp.LoRA((2,), 4, 3, 1), decomp.CP((2,), 4, 3, 2)),
}


def _bad_factors(fmt):
    """Factor dicts that are wrong in one way: a junk entry, an array of the wrong shape or dtype, torch."""
    good = fmt.random(seed=0)
    first = fmt.factor_names[0]
    variants = [
        junk,
        junk.map(lambda v: good | {first: v}),
        small_arrays.map(lambda a: good | {first: a}),
        st.just({n: a.astype(np.float32) for n, a in good.items()}),
        st.just({n: a[..., :0] for n, a in good.items()}),
    ]
    if torch is not None:
        variants.append(st.just({n: torch.from_numpy(a) for n, a in good.items()}))
    return st.one_of(*variants)


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@pytest.mark.parametrize("verb", ["random", "init"])
@FUZZ
@given(data=st.data())
def test_random_and_init(fmt_name, verb, data):
    fmt = FORMATS[fmt_name]
    kwargs = _fuzzed(data, {"seed": 0, "backend": "numpy", "dtype": None})
    factors = _call(f"{fmt_name}.{verb}", getattr(fmt, verb), kwargs)
    if factors is not None:
        fmt.check_factors(factors)  # what came back is a valid factor dict


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_factor_verbs(fmt_name, data):
    fmt = FORMATS[fmt_name]
    factors = data.draw(st.one_of(st.just(fmt.random(seed=1)), _bad_factors(fmt)), label="factors")
    x = data.draw(st.one_of(st.just(np.ones((2, fmt.in_features))), junk), label="x")
    index = data.draw(st.one_of(st.just((0,) * len(fmt.stack)), st.none(), junk), label="index")
    _call(f"{fmt_name}.to_dense", fmt.to_dense, {"factors": factors})
    _call(f"{fmt_name}.apply", fmt.apply, {"factors": factors, "x": x, "index": index})
    _call(f"{fmt_name}.check_factors", fmt.check_factors, {"factors": factors, "argument": "factors"})
    if isinstance(fmt, decomp.OrthogonalProjection):
        _call(f"{fmt_name}.orthogonality_penalty", fmt.orthogonality_penalty, {"factors": factors})
        keep = data.draw(st.one_of(st.booleans(), junk), label="keep_delta")
        _call(f"{fmt_name}.retract", fmt.retract, {"factors": factors, "keep_delta": keep})


# ---------------------------------------------------------------------------------------- decomp functions


def _rank_for_budget(format_cls, budget, stack, out_features, in_features):
    return decomp.rank_for_budget(format_cls, budget, stack=stack, out_features=out_features, in_features=in_features)


PLANNERS = {
    f"rank_for_budget[{cls.__name__}]": (
        _rank_for_budget,
        {"format_cls": cls, "budget": 1000, "stack": (2,), "out_features": 4, "in_features": 6},
    )
    for cls in (decomp.LoRA, decomp.Tucker2, decomp.CP, decomp.TensorTrain, decomp.OrthogonalProjection)
}
PLANNERS |= {
    "rank_for_budget[TensorNetwork]": (
        lambda budget, sizes, rank_indices, max_rank: decomp.rank_for_budget(
            decomp.TensorNetwork,
            budget,
            equation="ar,rb->ab",
            sizes=sizes,
            out_indices="a",
            in_indices="b",
            rank_indices=rank_indices,
            max_rank=max_rank,
        ),
        {"budget": 100, "sizes": {"a": 3, "b": 2}, "rank_indices": "r", "max_rank": None},
    ),
    "compare": (
        decomp.compare,
        {
            "budget": 1000,
            "stack": (2,),
            "out_features": 4,
            "in_features": 6,
            "heads": None,
            "in_modes": None,
            "out_modes": None,
            "share_stack": True,
            "inner": None,
        },
    ),
    "welore_ranks": (
        decomp.welore_ranks,
        {"matrices": {"a": np.eye(3), "b": decomp.Spectrum([3.0, 1.0], (2, 4))}, "reduction": 0.2, "min_ratio": 0.5},
    ),
    "balanced_modes": (decomp.balanced_modes, {"n": 768, "n_modes": None}),
    "Spectrum": (decomp.Spectrum, {"singular_values": [1.0], "shape": (1, 2)}),
    "BudgetError": (decomp.BudgetError, {"message": "m", "smallest": FORMATS["LoRA"]}),
}


@pytest.mark.parametrize("name", sorted(PLANNERS))
@FUZZ
@given(data=st.data())
def test_functions(name, data):
    fn, defaults = PLANNERS[name]
    result = _call(name, fn, _fuzzed(data, defaults))
    if isinstance(result, decomp.Comparison):
        str(result)
        result.to_dicts()
    elif isinstance(result, decomp.WeLoreResult):
        str(result)
        assert set(result.ranks) == set(result.matrices)


def test_the_fuzz_covers_every_public_name():
    covered = set(CONSTRUCTORS) | {n.split("[")[0] for n in PLANNERS}
    covered |= {"BudgetPlan", "Comparison", "ComparisonRow", "WeLoreMatrix", "WeLoreResult", "validate"}
    assert covered == set(decomp.__all__)
    assert set(TESTING) | {"CHECKS", "TOLERANCES", "CHECK_TOLERANCES", "DTYPES", "PROFILES"} == set(testing.__all__)


@FUZZ
@given(data=st.data())
def test_result_records(data):
    # plain records (frozen dataclasses): any field values construct; their methods answer or raise cleanly
    row = _call(
        "ComparisonRow",
        decomp.ComparisonRow,
        _fuzzed(data, dict(name="LoRA", alias="LoRA", rank=1, num_params=2, slice_rank=1, vs_dense=1.0, vs_lora=1.0)),
    )
    table = _call(
        "Comparison",
        decomp.Comparison,
        _fuzzed(data, dict(budget=1, stack=(2,), out_features=4, in_features=3, rows=(row,))),
    )
    if table is not None:
        _call("Comparison.to_dicts", table.to_dicts, {})
    matrix = _call(
        "WeLoreMatrix",
        decomp.WeLoreMatrix,
        _fuzzed(
            data, dict(name="a", shape=(2, 2), n=2, rank=1, pruned=1, is_low_rank=True, params_before=4, params_after=4)
        ),
    )
    _call(
        "WeLoreResult",
        decomp.WeLoreResult,
        _fuzzed(
            data,
            dict(
                tau=0.5,
                reduction=0.1,
                target=0.1,
                max_reduction=0.5,
                min_ratio=0.5,
                params_before=4,
                params_after=4,
                matrices={"a": matrix},
            ),
        ),
    )


# ---------------------------------------------------------------------------------------- tensorpeft.testing

SMALL = decomp.LoRA((), 2, 2, 1)
SIZES = {"stack_modes": 2, "max_stack": 3, "max_features": 6}
TESTING = {
    "lora_formats": (testing.lora_formats, SIZES),
    "tucker2_formats": (testing.tucker2_formats, SIZES),
    "orthogonal_formats": (testing.orthogonal_formats, SIZES),
    "formats": (testing.formats, SIZES),
    "cp_formats": (testing.cp_formats, SIZES | {"max_rank": 4}),
    "tensor_train_formats": (testing.tensor_train_formats, SIZES | {"max_rank": 3}),
    "tensor_networks": (
        testing.tensor_networks,
        {"max_factors": 4, "stack_modes": 2, "max_size": 3, "max_elements": 96},
    ),
    "factors": (testing.factors, {"fmt": SMALL, "backend": "numpy", "dtype": None, "bound": 1.0}),
    "inputs": (
        testing.inputs,
        {"fmt": SMALL, "backend": "numpy", "dtype": None, "max_batch_dims": 2, "max_batch": 3},
    ),
    "indices": (testing.indices, {"fmt": SMALL}),
    "check_format": (
        testing.check_format,
        {"fmt": SMALL, "backends": ("numpy",), "fit_tol": None, "seed": 0, "skip": testing.CHECKS[1:]},
    ),
    "assert_close": (
        testing.assert_close,
        {"actual": np.ones(2), "desired": np.ones(2), "rtol": None, "scale": None, "what": "y"},
    ),
    "tolerance": (testing.tolerance, {"dtype": np.float32}),
}


@pytest.mark.parametrize("name", sorted(TESTING))
@FUZZ
@given(data=st.data())
def test_testing_helpers(name, data):
    fn, defaults = TESTING[name]
    kwargs = _fuzzed(data, defaults)
    if name == "assert_close":
        try:
            _call(name, fn, kwargs)
        except AssertionError as exc:  # the helper's own verdict on arrays that differ is fine
            if not isinstance(exc.__cause__, AssertionError):
                raise
        return
    _call(name, fn, kwargs)


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_fit_and_check_dense(fmt_name, data):
    # fit's arguments are checked by fit itself; here only that nothing but ValueError/TypeError escapes
    fmt = FORMATS[fmt_name]
    dense = fmt.to_dense(fmt.random(seed=2))
    kwargs = _fuzzed(data, {"dense": dense, "init": None, "n_iter_max": 2, "tol": 1e-12, "seed": 0})
    if isinstance(fmt, decomp.LoRA | decomp.OrthogonalProjection | decomp.Tucker2):
        kwargs = {k: v for k, v in kwargs.items() if k in ("dense", "n_iter_max", "tol")}
    _call(f"{fmt_name}.fit", fmt.fit, kwargs)
    _call(f"{fmt_name}.check_dense", fmt.check_dense, {"dense": kwargs["dense"], "argument": "dense"})


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_relative_error(fmt_name, data):
    fmt = FORMATS[fmt_name]
    dense = data.draw(st.one_of(st.just(fmt.to_dense(fmt.random(seed=2))), junk), label="dense")
    factors = data.draw(st.one_of(st.just(fmt.random(seed=1)), _bad_factors(fmt)), label="factors")
    _call(f"{fmt_name}.relative_error", fmt.relative_error, {"dense": dense, "factors": factors})
