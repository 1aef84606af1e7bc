"""tensorpeft as a PEFT method: the enum member, the registration, and the import-order hook."""

import json
import subprocess
import sys

import peft
import pytest
import torch
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import tensorpeft as tp
from tensorpeft.nn import _peft_registry


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))


def test_the_member_is_a_real_peft_type():
    member = peft.PeftType.TENSORPEFT
    assert member is peft.PeftType("TENSORPEFT") is peft.PeftType["TENSORPEFT"]
    assert member == "TENSORPEFT" and member.value == "TENSORPEFT" and member.name == "TENSORPEFT"
    assert member in list(peft.PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[member] is tp.AdapterConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[member] is tp.nn.TensorPeftModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == "tensorpeft_"


def test_register_is_idempotent():
    before = (dict(PEFT_TYPE_TO_CONFIG_MAPPING), dict(PEFT_TYPE_TO_TUNER_MAPPING), list(peft.PeftType))
    _peft_registry.register()
    _peft_registry.register()
    assert (dict(PEFT_TYPE_TO_CONFIG_MAPPING), dict(PEFT_TYPE_TO_TUNER_MAPPING), list(peft.PeftType)) == before
    assert _peft_registry.peft_type_member() is peft.PeftType.TENSORPEFT


def test_an_old_peft_is_refused_with_the_version(monkeypatch):
    monkeypatch.setattr(peft, "__version__", "0.14.0")
    with pytest.raises(ImportError, match=r"peft >= 0\.15.*found peft 0\.14\.0"):
        _peft_registry.register()


@pytest.mark.parametrize("name", ["LoRAConfig", "Tucker2Config", "CPConfig", "TensorTrainConfig", "OrthogonalConfig"])
def test_every_format_is_a_peft_config_of_the_one_type(name):
    cfg = getattr(tp, name)(rank=2, target_modules=["0", "2"])
    assert isinstance(cfg, peft.PeftConfig)
    assert cfg.peft_type is peft.PeftType.TENSORPEFT and cfg.format == cfg.format_name
    data = json.loads(json.dumps(cfg.to_dict()))
    assert type(peft.PeftConfig.from_peft_type(**data)) is type(cfg)  # PEFT's own JSON path
    assert peft.PeftConfig.from_peft_type(**data) == cfg


def test_peft_get_peft_model_and_tp_get_peft_model_build_the_same_object():
    x = torch.randn(3, 8)
    a = peft.get_peft_model(_mlp(), tp.CPConfig(rank=2, target_modules=["0", "2"]))
    b = tp.get_peft_model(_mlp(), tp.CPConfig(rank=2, target_modules=["0", "2"]))
    assert type(a) is type(b) is peft.PeftModel
    assert type(a.base_model) is type(b.base_model) is tp.nn.TensorPeftModel
    assert a.state_dict().keys() == b.state_dict().keys()
    assert torch.equal(a(x), b(x))


def test_a_config_from_peft_must_keep_its_type_and_format():
    data = tp.LoRAConfig(rank=2, target_modules=["0"]).to_dict()
    with pytest.raises(ValueError, match="peft_type"):
        tp.AdapterConfig(**{**data, "peft_type": "LORA"})
    with pytest.raises(TypeError, match="format"):
        tp.AdapterConfig(**{**data, "format": "Nope"})
    with pytest.raises(ValueError, match="format"):
        tp.CPConfig(**{**data, "format": "LoRA"})


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_importing_peft_after_tensorpeft_registers_without_touching_torch_before():
    code = (
        "import sys, tensorpeft\n"
        "print('torch' in sys.modules, 'peft' in sys.modules)\n"
        "import peft\n"
        "print(peft.PeftType('TENSORPEFT').name, 'tensorpeft.nn' in sys.modules)\n"
    )
    assert _run(code).splitlines() == ["False False", "TENSORPEFT True"]


def test_importing_tensorpeft_after_peft_registers_at_once():
    code = "import peft, tensorpeft\nprint(peft.PeftType('TENSORPEFT').name)\n"
    assert _run(code) == "TENSORPEFT"


def test_without_tensorpeft_peft_gives_its_own_error(tmp_path):
    model = tp.get_peft_model(_mlp(), tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    model.save_pretrained(tmp_path)
    code = (
        "import peft, torch\n"
        f"try:\n    peft.PeftConfig.from_pretrained({str(tmp_path)!r})\n"
        "except (KeyError, ValueError) as exc:\n    print(type(exc).__name__)\n"
        "import sys\nprint('tensorpeft' in sys.modules)\n"
    )
    lines = _run(code).splitlines()
    assert lines[-1] == "False" and lines[0] in {"KeyError", "ValueError"}
