import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tensorpeft as tp

ALL = [tp.LoRAConfig, tp.Tucker2Config, tp.CPConfig, tp.TensorTrainConfig, tp.OrthogonalConfig]


def test_aliases_are_the_paper_names():
    assert tp.LoTRConfig is tp.Tucker2Config
    assert tp.LoRTAConfig is tp.CPConfig
    assert tp.TTLoRAConfig is tp.TensorTrainConfig
    assert tp.LoRA2Config is tp.OrthogonalConfig


@pytest.mark.parametrize("cls", ALL)
def test_json_round_trip_and_defaults(cls):
    cfg = cls(target_modules=["query", "value"], dropout=0.1, exclude_modules="pooler.*")
    again = tp.AdapterConfig.from_json(cfg.to_json())
    assert again == cfg and type(again) is cls
    assert json.loads(cfg.to_json())["format"] == cls.format_name


PEFT_FIELDS = {
    "task_type",
    "peft_type",
    "peft_version",
    "inference_mode",
    "base_model_name_or_path",
    "revision",
    "auto_mapping",
    "modules_to_save",
}


@pytest.mark.parametrize("cls", ALL)
def test_configs_are_peft_configs_and_dicts_dispatch_on_the_format(cls):
    import peft

    cfg = cls(target_modules=["query"], task_type="SEQ_CLS", modules_to_save=["classifier"])
    assert isinstance(cfg, peft.PeftConfig) and cfg.peft_type == peft.PeftType.TENSORPEFT
    data = cfg.to_dict()
    assert PEFT_FIELDS | {"format"} <= data.keys()
    assert (data["peft_type"], data["format"], data["task_type"]) == ("TENSORPEFT", cls.format_name, "SEQ_CLS")
    assert data["modules_to_save"] == ["classifier"]
    for again in (tp.AdapterConfig(**data), tp.AdapterConfig.from_dict(json.loads(json.dumps(data)))):
        assert type(again) is cls and again == cfg
    assert cls(target_modules=["query"]) != cfg  # the PEFT fields are compared too
    with pytest.raises(ValueError, match="`task_type` must be None or one of"):
        cls(target_modules=["query"], task_type="NOT_A_TASK")


def test_default_stacking_per_format():
    t = ["q"]
    assert tp.Tucker2Config(target_modules=t).stack_by == "name"
    assert tp.CPConfig(target_modules=t).stack_by == "shape"
    assert tp.LoRAConfig(target_modules=t).stack_by == "module"
    assert tp.TensorTrainConfig(target_modules=t).stack_by == "module"


def test_scaling_per_format():
    t = ["q"]
    assert tp.LoRAConfig(rank=8, alpha=16, target_modules=t).scaling == 2.0
    assert tp.Tucker2Config(rank=(2, 4), alpha=8, target_modules=t).scaling == 2.0  # alpha / r_in
    assert tp.CPConfig(rank=8, target_modules=t).scaling == 2.0  # LoRTA's alpha = 16
    assert tp.TensorTrainConfig(rank=5, alpha=3.0, target_modules=t).scaling == 3.0  # plain alpha
    assert tp.OrthogonalConfig(rank=4, alpha=8, target_modules=t).scaling == 2.0


@given(
    rank=st.integers(1, 64),
    alpha=st.floats(-100, 100, allow_nan=False),
    dropout=st.floats(0, 0.99),
    targets=st.one_of(
        st.just("all-linear"),
        st.lists(st.sampled_from(["query", "key", "value", "dense", "q_proj"]), min_size=1, max_size=4),
    ),
    stack_by=st.sampled_from(["name", "shape", "module"]),
    init=st.sampled_from(["zero", "svd"]),
)
def test_any_valid_config_round_trips(rank, alpha, dropout, targets, stack_by, init):
    for cls in ALL:
        cfg = cls(rank=rank, alpha=alpha, dropout=dropout, target_modules=targets, stack_by=stack_by, init=init)
        assert tp.AdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"rank": 0}, ValueError, ["`rank`", "positive", "0"]),
        ({"rank": 2.5}, TypeError, ["`rank`", "2.5"]),
        ({"alpha": float("nan")}, TypeError, ["`alpha`", "nan"]),
        ({"dropout": 1.0}, ValueError, ["`dropout`", "[0, 1)", "1.0"]),
        ({"stack_by": "layer"}, ValueError, ["`stack_by`", "'layer'", "'shape'"]),
        ({"init": "pissa"}, ValueError, ["`init`", "'pissa'", "'svd'"]),
        ({"target_modules": []}, ValueError, ["`target_modules`", "empty"]),
        ({"target_modules": "(unclosed"}, ValueError, ["`target_modules`", "regular expression"]),
        ({"target_modules": 3}, TypeError, ["`target_modules`", "int"]),
        ({"exclude_modules": "all-linear["}, ValueError, ["`exclude_modules`"]),
    ],
)
def test_bad_fields_name_argument_expected_and_got(kwargs, exc, words):
    args = {"target_modules": ["query"]} | kwargs
    with pytest.raises(exc) as info:
        tp.LoRAConfig(**args)
    for w in words:
        assert w in str(info.value)


def test_format_specific_validation():
    with pytest.raises(ValueError, match=r"`rank` must have 2 entries"):
        tp.Tucker2Config(rank=(1, 2, 3), target_modules=["q"])
    with pytest.raises(ValueError, match=r"`inner`=2 must be >= `rank`=4"):
        tp.OrthogonalConfig(rank=4, inner=2, target_modules=["q"])
    with pytest.raises(ValueError, match=r"`heads` must be a positive integer, got 0"):
        tp.CPConfig(heads=0, target_modules=["q"])
    with pytest.raises(ValueError, match=r"`in_modes\[1\]` must be a positive integer, got -2"):
        tp.TensorTrainConfig(in_modes=(4, -2), target_modules=["q"])
    with pytest.raises(TypeError, match="AdapterConfig is abstract"):
        tp.AdapterConfig(target_modules=["q"])


def test_from_dict_rejects_unknown_format_and_fields():
    with pytest.raises(ValueError, match=r"`data\['format'\]` must be one of .* got 'Bogus'"):
        tp.AdapterConfig.from_dict({"format": "Bogus", "target_modules": ["q"]})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['ranks'\]"):
        tp.AdapterConfig.from_dict({"format": "LoRA", "target_modules": ["q"], "ranks": 3})


def test_custom_config_stores_an_import_path(custom_factory):
    import importlib

    fn = importlib.import_module("user_formats").shared_core
    cfg = tp.CustomConfig(factory=fn, rank=2, target_modules=["q"])
    assert cfg.factory == custom_factory
    assert tp.AdapterConfig.from_json(cfg.to_json(), trust_custom_factories=[fn]) == cfg
    with pytest.raises(ValueError, match="importable module-level function"):
        tp.CustomConfig(factory=lambda *a: None, target_modules=["q"])
    with pytest.raises(ValueError, match=r"`factory`='no_such_module:f' cannot be imported"):
        tp.CustomConfig(factory="no_such_module:f", target_modules=["q"])


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"alpha": 1e308}, ValueError, ["`alpha`", "1e+308", "1e+06"]),
        ({"alpha": -2e6}, ValueError, ["`alpha`", "-2000000.0"]),
        ({"alpha": float("inf")}, TypeError, ["`alpha`", "inf"]),
        ({"rank": 2**31 + 1}, ValueError, ["`rank`", str(2**31 + 1), str(2**31)]),
        ({"rank": 10**20}, ValueError, ["`rank`", str(10**20)]),
        ({"rank": True}, TypeError, ["`rank`", "True"]),
        ({"seed": -1}, ValueError, ["`seed`", "-1"]),
        ({"seed": 2**64}, ValueError, ["`seed`", str(2**64)]),
        ({"seed": 1.5}, TypeError, ["`seed`", "1.5"]),
        ({"stack_by": ["name"]}, TypeError, ["`stack_by`", "['name']"]),
        ({"init": None}, TypeError, ["`init`", "None"]),
        ({"dropout": float("nan")}, ValueError, ["`dropout`", "nan"]),
    ],
)
def test_nonsense_and_huge_fields_are_refused(kwargs, exc, words):
    for cls in ALL:
        with pytest.raises(exc) as info:
            cls(**({"target_modules": ["q"]} | kwargs))
        for w in words:
            assert w in str(info.value), (cls, str(info.value))


def test_numpy_array_fields_are_type_errors_not_ambiguous_truth_values():
    import numpy as np

    for field in ("stack_by", "init"):
        with pytest.raises(TypeError, match=f"`{field}`"):
            tp.LoRAConfig(target_modules=["q"], **{field: np.array(["name", "shape"])})
    with pytest.raises(TypeError, match="`heads`"):
        tp.CPConfig(target_modules=["q"], heads=np.array([2, 4]))


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"share_stack": "no"}, TypeError, ["`share_stack`", "'no'"]),
        ({"share_stack": 1}, TypeError, ["`share_stack`", "1"]),
        ({"in_modes": (2**40, 2)}, ValueError, ["`in_modes[0]`", str(2**40)]),
        ({"rank": (2, 2**33)}, ValueError, ["`rank[1]`", str(2**33)]),
        ({"rank": ()}, ValueError, ["`rank`", "empty"]),
    ],
)
def test_tensor_train_fields(kwargs, exc, words):
    with pytest.raises(exc) as info:
        tp.TensorTrainConfig(target_modules=["q"], **kwargs)
    for w in words:
        assert w in str(info.value), str(info.value)


def test_bounds_of_the_other_format_fields():
    with pytest.raises(ValueError, match=r"`rank\[0\]`=4294967296 exceeds"):
        tp.Tucker2Config(rank=(2**32, 2), target_modules=["q"])
    with pytest.raises(ValueError, match=r"`heads`=4294967296 exceeds"):
        tp.CPConfig(heads=2**32, target_modules=["q"])
    with pytest.raises(ValueError, match=r"`inner`=4294967296 exceeds"):
        tp.OrthogonalConfig(rank=2, inner=2**32, target_modules=["q"])
    with pytest.raises(TypeError, match=r"`heads` must be a positive integer, 'auto' or None, got 'Auto'"):
        tp.CPConfig(heads="Auto", target_modules=["q"])


def test_the_largest_allowed_alpha_and_rank_are_accepted():
    cfg = tp.LoRAConfig(rank=2**31, alpha=-1e6, target_modules=["q"])
    assert (cfg.rank, cfg.alpha) == (2**31, -1e6)


@pytest.mark.parametrize(
    ("rank", "exc", "words"),
    [
        (0, ValueError, ["`rank`", "0"]),
        (-3, ValueError, ["`rank`", "-3"]),
        (True, TypeError, ["`rank`", "True"]),
        ([2, False], TypeError, ["`rank[1]`", "False"]),
        ([1, float("nan")], ValueError, ["`rank[1]`", "nan"]),
        ({"r": float("inf")}, ValueError, ["`rank['r']`", "inf"]),
        ({"r": [1, 0]}, ValueError, ["`rank['r'][1]`", "0"]),
        (2**40, ValueError, ["`rank`", str(2**40)]),
        (0.0, ValueError, ["`rank`", "0.0"]),
        ({1: 2}, TypeError, ["`rank`", "keys"]),
        (1e300, ValueError, ["`rank`", "1e+300"]),
    ],
)
def test_custom_config_refuses_nonsense_anywhere_in_rank(rank, exc, words):
    from tensorpeft import decomp

    with pytest.raises(exc) as info:
        tp.CustomConfig(factory=decomp.LoRA, rank=rank, target_modules=["q"])
    for w in words:
        assert w in str(info.value), str(info.value)


def test_custom_config_accepts_nested_json_ranks():
    from tensorpeft import decomp

    cfg = tp.CustomConfig(factory=decomp.LoRA, rank={"r": [1, 2], "name": "x", "f": 0.5}, target_modules=["q"])
    assert tp.AdapterConfig.from_json(cfg.to_json()) == cfg
