import copy
import math

import pytest
import torch
from transformers.pytorch_utils import Conv1D

import tensorpeft as tp
from tensorpeft.nn import LowRankLinear


class Planted(torch.nn.Module):
    """Linear and Conv1D layers of planted rank (plus noise) around full-rank ones."""

    def __init__(self, seed=0, noise=1e-3):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.a = torch.nn.Linear(24, 40)  # rank 3
        self.b = Conv1D(24, 40)  # (out 24, in 40), stored (40, 24); rank 5
        self.c = torch.nn.Linear(24, 24)  # full rank
        self.d = torch.nn.Linear(24, 24, bias=False)  # rank 2
        self.e = torch.nn.Linear(24, 24)  # full rank
        with torch.no_grad():
            for layer, (out, inp, r) in ((self.a, (40, 24, 3)), (self.d, (24, 24, 2))):
                w = torch.randn(out, r, generator=gen) @ torch.randn(r, inp, generator=gen) / 4
                layer.weight.copy_(w + noise * torch.randn(out, inp, generator=gen))
            w = torch.randn(24, 5, generator=gen) @ torch.randn(5, 40, generator=gen) / 4
            self.b.weight.copy_((w + noise * torch.randn(24, 40, generator=gen)).T)
            self.b.bias.copy_(torch.randn(24, generator=gen) / 10)
            self.c.weight.copy_(torch.randn(24, 24, generator=gen) / 5)
            self.e.weight.copy_(torch.randn(24, 24, generator=gen) / 5)

    def forward(self, x):
        return self.e(torch.tanh(self.d(torch.tanh(self.c(self.b(torch.tanh(self.a(x))))))))


def dense_weights(model):
    """Module name -> (out, in) float64 weight of every linear layer."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            out[name] = m.weight.detach().double()
        elif isinstance(m, Conv1D):
            out[name] = m.weight.detach().double().T
    return out


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, type(m)) for n, m in model.named_modules()],
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def same(a, b):
    if a[1] != b[1] or a[2] != b[2] or a[0].keys() != b[0].keys():
        return False
    return all(torch.allclose(a[0][k], b[0][k], rtol=0, atol=0, equal_nan=True) for k in a[0])


@pytest.mark.parametrize("reduction", [0.3, 0.6])
def test_replaced_layers_keep_the_best_rank_k_approximation(reduction):
    model = Planted()
    before = dense_weights(model)
    report = tp.compress_low_rank(model, reduction=reduction)
    assert report.low_rank and set(report.low_rank) <= set(before)
    assert report.reduction >= reduction
    modules = dict(model.named_modules())
    for name, rec in report.matrices.items():
        layer = modules[name]
        assert isinstance(layer, LowRankLinear) == rec.is_low_rank
        assert rec.shape == tuple(before[name].shape)
        if not rec.is_low_rank:
            continue
        assert (layer.out_features, layer.rank, layer.in_features) == (rec.shape[0], rec.rank, rec.shape[1])
        sigma = torch.linalg.svdvals(before[name])
        tail = math.sqrt(float((sigma[rec.rank :] ** 2).sum()))
        err = float((before[name] - layer.U.detach().double() @ layer.V.detach().double()).norm())
        assert abs(err - tail) <= 1e-6 * float(before[name].norm()), name


def test_planted_ranks_found_and_outputs_close():
    model = Planted(noise=1e-5)
    reference = copy.deepcopy(model)
    x = torch.randn(16, 24, generator=torch.Generator().manual_seed(1))
    # the reduction of a, b, d at their planted ranks 3, 5, 2: 1 - (3·64 + 5·64 + 2·48 + 2·576) / 3,648
    report = tp.compress_low_rank(model, reduction=0.5175)
    assert report.low_rank == ("a", "b", "d")
    assert [report.matrices[n].rank for n in report.low_rank] == [3, 5, 2]
    assert report.params_after == 1760 and report.matrices["c"].params_after == 576
    assert torch.equal(model.b.bias, reference.b.bias) and not model.b.bias.requires_grad
    with torch.no_grad():
        y, y0 = model(x), reference(x)
    assert float((y - y0).norm() / y0.norm()) < 1e-4
    # a dense weight that code may read (nn.MultiheadAttention reads out_proj.weight)
    assert torch.allclose(model.b.weight, reference.b.weight.T, atol=1e-2)


def test_parameter_count_and_trainable_set_match_the_report(make_model):
    model = make_model("minilm")
    total_before = sum(p.numel() for p in model.parameters())
    report = tp.compress_low_rank(model, reduction=0.5)
    assert report.reduction >= 0.5 and len(report.low_rank) > 10
    total_after = sum(p.numel() for p in model.parameters())
    assert total_before - total_after == report.params_before - report.params_after
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lrc = {f"{n}.{f}" for n in report.low_rank for f in ("U", "V")}
    assert set(trainable) == lrc
    assert sum(p.numel() for p in trainable.values()) == sum(report.matrices[n].params_after for n in report.low_rank)
    assert "pooler.dense" in report.matrices and "embeddings.word_embeddings" not in report.matrices


def test_training_updates_only_the_low_rank_components():
    model = Planted()
    report = tp.compress_low_rank(model, reduction=0.3)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(8, 24, generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(3):
        loss = (model(x) - 1).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in trained.items())
    assert {n.rsplit(".", 1)[0] for n in trained} == set(report.low_rank)


def test_target_and_exclude_modules():
    model = Planted()
    report = tp.compress_low_rank(model, reduction=0.1, target_modules=["a", "b", "c"], exclude_modules=["b"])
    assert list(report.matrices) == ["a", "c"]
    assert isinstance(model.a, LowRankLinear) and isinstance(model.b, Conv1D) and isinstance(model.d, torch.nn.Linear)
    assert not model.d.weight.requires_grad  # everything but the LRC factors is frozen


def shared_layer_model():
    layer = torch.nn.Linear(8, 8)
    return torch.nn.Sequential(layer, torch.nn.Tanh(), layer)


def nan_model():
    model = Planted()
    with torch.no_grad():
        model.c.weight[0, 0] = float("nan")
    return model


def adapted_model():
    return tp.get_peft_model(Planted(), tp.LoRAConfig(rank=2, target_modules=["a"]))


def adapted_base_model():
    return adapted_model().get_base_model()  # the user's model, adapted in place


def adapted_tuner():
    return tp.nn.TensorPeftModel(Planted(), tp.LoRAConfig(rank=2, target_modules=["a"]))


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (Planted, {"reduction": 1.0}, ValueError, "`reduction` must be in \\[0, 1\\)"),
        (Planted, {"reduction": "0.5"}, TypeError, "`reduction` must be a real number"),
        (Planted, {"min_ratio": -0.1}, ValueError, "`min_ratio` must be in"),
        (Planted, {"reduction": 0.99}, ValueError, "`reduction`=0.99 is not reachable"),
        (Planted, {"target_modules": ["a", "nope"]}, ValueError, "`target_modules` entry 'nope' matches no module"),
        (Planted, {"target_modules": []}, ValueError, "`target_modules` must name at least one module"),
        (Planted, {"target_modules": 3}, TypeError, "`target_modules` must be a list"),
        (Planted, {"exclude_modules": "("}, ValueError, "`exclude_modules`='\\(' is not a valid regular"),
        (shared_layer_model, {}, ValueError, "under several names \\['0', '2'\\]"),
        (nan_model, {}, ValueError, "weight of 'c' contains NaN"),
        (adapted_model, {}, ValueError, "already contains tensorpeft adapters"),
        (adapted_base_model, {}, ValueError, "already contains tensorpeft adapters"),
        (adapted_tuner, {}, ValueError, "already contains tensorpeft adapters"),
    ],
)
def test_bad_inputs_leave_the_model_untouched(make, kwargs, error, match):
    model = make()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        tp.compress_low_rank(model, **kwargs)
    assert same(snapshot(model), before)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match=r"`model` must be a torch\.nn\.Module"):
        tp.compress_low_rank({"w": torch.eye(3)})


def test_low_rank_linear_validates_and_matches_its_dense_weight():
    U, V = torch.randn(5, 2, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    layer = LowRankLinear(U, V, torch.ones(5, dtype=torch.float64))
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(layer(x), x @ (U @ V).T + 1)
    with pytest.raises(ValueError, match="must chain"):
        LowRankLinear(U, V.T)
    with pytest.raises(ValueError, match="`bias` must have shape \\(5,\\)"):
        LowRankLinear(U, V, torch.ones(3, dtype=torch.float64))


def test_low_precision_weights_get_factors_of_their_dtype():
    model = Planted(noise=1e-5).to(torch.bfloat16)
    reference = copy.deepcopy(model)
    report = tp.compress_low_rank(model, reduction=0.5175)
    assert report.low_rank == ("a", "b", "d")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    x = torch.randn(16, 24, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.no_grad():
        y, y0 = model(x).float(), reference(x).float()
    assert float((y - y0).norm() / y0.norm()) < 3e-2


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((3, torch.zeros(2, 3)), TypeError, r"`U` must be a floating-point torch.Tensor, got int"),
        ((torch.zeros(4, 2), [[0.0] * 3] * 2), TypeError, r"`V` must be a floating-point torch.Tensor, got list"),
        ((torch.zeros(4, 2, dtype=torch.long),) * 2, TypeError, r"`U` must be a floating-point .* got torch.int64"),
        ((torch.zeros(4, 2), torch.zeros(2, 3), 3), TypeError, r"`bias` must be a floating-point .* got int"),
        ((torch.zeros(4, 0), torch.zeros(0, 3)), ValueError, r"must chain with rank >= 1"),
        (
            (torch.zeros(4, 2), torch.zeros(2, 3), torch.zeros(4, dtype=torch.float64)),
            ValueError,
            r"`bias` must have the dtype and device of `U`",
        ),
    ],
)
def test_low_rank_linear_argument_types(args, exc, match):
    with pytest.raises(exc, match=match):
        LowRankLinear(*args)
