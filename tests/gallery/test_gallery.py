"""The gallery as a whole: its registry, loading adapters by gallery name, and MiniLM's real shapes."""

import json

import numpy as np
import pytest
import torch

import tensorpeft as tp
from tensorpeft import gallery
from tensorpeft.nn import _factories

# rank per factory at MiniLM's q/v shape (6 layers of 384 x 384) and the count its docstring gives
MINILM = {
    "tensor_ring": (4, 6 * 4**2 * (8 + 8 + 6 + 8 + 8 + 6)),
    "krona": (16, 6 * (16 * 16 + 24 * 24)),
    "mpo": (4, 6 * (64 * 4 + 4 * 64 * 4 + 4 * 36)),
    "fact_tt": (8, 2 * 384 * 8 + 6 * 8**2),
    "fact_tk": (8, 2 * 384 * 8 + 8**3 + 6 * 8),
    "tied": (8, 384 * 8 + 6 * 8**2),
    "block_term": (8, 8 * (4 * 384 + 6 + 48)),  # Tucker-2 r(d_out+d_in)+L r² plus CP r(d_out+d_in+L)
    "lora_krona": (4, 6 * (4 * 768 + 16 * 16 + 24 * 24)),
    "vera": (8, 6 * (384 + 8)),  # trainable only; 8 (384 + 384) frozen
}


def test_the_registry_is_the_public_surface():
    names = [entry.name for entry in gallery.GALLERY]
    assert len(set(names)) == len(names)
    assert set(gallery.__all__) == {"GALLERY", "GalleryEntry", "VeRA", *names}
    for entry in gallery.GALLERY:
        assert getattr(gallery, entry.name) is entry.factory and entry.factory.__name__ == entry.name
        assert entry.paper and "(20" in entry.paper  # authors (year), title
        assert _factories.builtin_factory(f"tensorpeft.gallery:{entry.name}") is entry.factory
        assert _factories.factory_path(entry.factory) == f"tensorpeft.gallery:{entry.name}"


@pytest.mark.parametrize("entry", gallery.GALLERY, ids=lambda e: e.name)
def test_every_factory_builds_minilm_stacks(entry):
    assert entry.name in MINILM, f"give {entry.name!r} a rank and its parameter count at MiniLM's shape here"
    rank, count = MINILM[entry.name]
    cfg = tp.CustomConfig(factory=entry.factory, rank=rank, target_modules=["query", "value"])
    fmt = cfg.build_format((6,), 384, 384)
    assert fmt.shape == (6, 384, 384) and fmt.num_params == count
    assert count < 6 * 2 * 384 * 8  # below LoRA r = 8 on the same stack
    fac = fmt.init(seed=0, backend="torch", dtype=torch.float32)
    x = torch.randn(2, 3, 384, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fmt.apply(fac, x, index=5), torch.zeros(2, 3, 384))
    fac = fmt.random(seed=0, backend="torch", dtype=torch.float32)
    y = fmt.apply(fac, x, index=5)
    assert y.shape == (2, 3, 384) and bool(torch.isfinite(y).all()) and y.abs().max() > 0


def _written(tmp_path, factory_name):
    """A saved gallery adapter whose config is edited to name ``factory_name``."""
    model = tp.get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(8, 8)),
        tp.CustomConfig(factory=gallery.fact_tt, rank=2, target_modules=["0"]),
    )
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    data = json.loads(path.read_text())
    assert data["factory"] == "tensorpeft.gallery:fact_tt"
    data["factory"] = factory_name
    path.write_text(json.dumps(data))
    return tmp_path


def test_a_gallery_adapter_loads_without_trust(tmp_path):
    torch.manual_seed(0)
    loaded = tp.TensorPeftModel.from_pretrained(
        torch.nn.Sequential(torch.nn.Linear(8, 8)), _written(tmp_path, "tensorpeft.gallery:fact_tt")
    )
    assert loaded.peft_config["default"].factory == "tensorpeft.gallery:fact_tt"
    again = tp.AdapterConfig.from_json((tmp_path / "adapter_config.json").read_text())
    assert again.factory == "tensorpeft.gallery:fact_tt"


@pytest.mark.parametrize(
    "name",
    [
        "tensorpeft.gallery:os_system",  # not in the registry
        "tensorpeft.gallery:GalleryEntry",  # public, but not a factory of the registry
        "tensorpeft.gallery._fact:fact_tt",  # the private module path of a gallery factory
        "tensorpeft.gallery.sub:krona",
    ],
)
def test_other_names_under_the_gallery_are_refused(tmp_path, name):
    assert _factories.builtin_factory(name) is None
    path = _written(tmp_path, name)
    with pytest.raises(ValueError, match="trust_custom_factories"):
        tp.TensorPeftModel.from_pretrained(torch.nn.Sequential(torch.nn.Linear(8, 8)), path)
    with pytest.raises(ValueError, match="nothing was imported"):
        tp.AdapterConfig.from_json((path / "adapter_config.json").read_text())


def test_lookup_imports_nothing_from_the_file(monkeypatch):
    def no_import(name, *args, **kwargs):
        raise AssertionError(f"imported {name}")

    monkeypatch.setattr(_factories, "importlib", type("NoImport", (), {"import_module": staticmethod(no_import)}))
    assert _factories.resolve_factory("tensorpeft.gallery:krona") is gallery.krona
    f = tp.AdapterConfig.from_dict(
        {"format": "Custom", "factory": "tensorpeft.gallery:krona", "rank": 2, "target_modules": ["q"]}
    )
    assert np.prod(f.build_format((2,), 4, 6).shape) == 48
