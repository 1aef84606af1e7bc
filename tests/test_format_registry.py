"""Adding a format: the built-in formats and their configs register themselves where they are defined."""

import dataclasses
from typing import ClassVar

import pytest

from tensorpeft import decomp
from tensorpeft.decomp._stacked import _BUILTIN, StackedFormat, builtin_formats


def test_the_builtin_formats_register_in_table_order_with_their_options():
    assert builtin_formats() == (
        (decomp.LoRA, "LoRA", ()),
        (decomp.Tucker2, "LoTR", ()),
        (decomp.CP, "LoRTA", ("heads",)),
        (decomp.TensorTrain, "TT-LoRA", ("in_modes", "out_modes", "share_stack")),
        (decomp.OrthogonalProjection, "LoRA²", ("inner",)),
    )
    assert [row.name for row in decomp.compare(200_000, (12,), 64, 64).rows] == [
        c.__name__ for c, _, _ in builtin_formats()
    ]


def test_a_new_builtin_format_appears_in_compare_by_defining_it(monkeypatch):
    monkeypatch.setattr("tensorpeft.decomp._stacked._BUILTIN", list(_BUILTIN))
    namespace = {
        "__module__": "tensorpeft.decomp._wide",
        "paper": "WideLoRA",
        "order": 9,
        "label": "wide LoRA",
        "__init__": decomp.LoRA.__init__,
    }
    wide = type("WideLoRA", (decomp.LoRA,), namespace)
    assert builtin_formats()[-1] == (wide, "WideLoRA", ())
    assert decomp.compare(200_000, (12,), 64, 64).rows[-1].alias == "WideLoRA"


def test_a_user_subclass_is_not_a_builtin(monkeypatch):
    monkeypatch.setattr("tensorpeft.decomp._stacked._BUILTIN", list(_BUILTIN))

    class Mine(decomp.LoRA):
        paper: ClassVar[str] = "Mine"

    assert Mine not in [c for c, _, _ in builtin_formats()]
    assert issubclass(Mine, StackedFormat)


def test_a_config_class_registers_its_format_for_files_and_peft(monkeypatch):
    tp = pytest.importorskip("tensorpeft")
    from tensorpeft.nn import _config

    monkeypatch.setattr(_config, "_CONFIG_CLASSES", dict(_config._CONFIG_CLASSES))

    @dataclasses.dataclass(kw_only=True)
    class WideConfig(tp.LoRAConfig):
        format_name: ClassVar[str] = "Wide"

    data = WideConfig(rank=2, target_modules=["q"]).to_dict()
    assert data["format"] == "Wide"
    assert type(tp.AdapterConfig.from_dict(data)) is WideConfig
    assert type(tp.AdapterConfig(**data)) is WideConfig  # how PEFT builds a config from JSON


def test_every_config_of_tensorpeft_nn_is_exported_from_the_root():
    tp = pytest.importorskip("tensorpeft")
    from tensorpeft.nn import _config

    for name in _config.__all__:
        assert getattr(tp, name) is getattr(tp.nn, name)
        assert name in tp.__all__
    assert {c.format_name for c in _config._CONFIG_CLASSES.values()} == {
        "LoRA",
        "Tucker2",
        "CP",
        "TensorTrain",
        "OrthogonalProjection",
        "Custom",
    }
