import itertools
from typing import ClassVar

import pytest
import torch

import tensorpeft as tp
from tensorpeft.nn import RankPruner


def lora2_bert(make_model, rank=4, **kw):
    return tp.get_peft_model(make_model("bert"), tp.LoRA2Config(rank=rank, target_modules=["query", "value"], **kw))


def fake_grads(model, gen):
    for p in model.tensor_adapters.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_budget_schedule_hits_the_target_exactly(make_model):
    model = lora2_bert(make_model)  # 4 matrices of rank 4
    pruner = RankPruner(model, target_rank=1, total_steps=30, warmup_steps=4, final_steps=6, interval=3)
    assert (pruner.num_matrices, pruner.initial_budget, pruner.target_budget) == (4, 16, 4)
    budgets = [pruner.budget(t) for t in range(40)]
    assert budgets[:5] == [16] * 5  # warm-up, t <= t_i
    # by hand: 4 + floor(12 (1 - (t - 4) / 20)^3)
    assert (budgets[5], budgets[14], budgets[23]) == (14, 5, 4)
    assert budgets[24:] == [4] * 16  # t >= T - t_f
    assert all(a >= b for a, b in itertools.pairwise(budgets))

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for stack in model.tensor_adapters.values():
            getattr(stack, "lambda").copy_(torch.randn(stack.format.factor_shapes["lambda"], generator=gen) + 3)
    ranks = []
    for t in range(34):
        fake_grads(model, gen)
        ranks.append(pruner.update_and_allocate(t))
        assert ranks[-1] == pruner.total_rank == sum(pruner.rank_pattern().values())
    masked_at = {6, 9, 12, 15, 18, 21, 24}
    for t, rank in enumerate(ranks):
        expected = budgets[max(s for s in masked_at | {0} if s <= t)]
        assert rank == expected, t
    assert ranks[24:] == [4] * 10
    for name, stack in model.tensor_adapters.items():
        lam = getattr(stack, "lambda")
        assert torch.all(lam[~pruner.masks[name]] == 0)
        assert torch.all(lam[pruner.masks[name]] != 0)


def test_scores_follow_the_formulas_on_a_hand_computed_case():
    base = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model = tp.get_peft_model(base, tp.LoRA2Config(rank=2, target_modules=["0"]))
    pruner = RankPruner(
        model, target_rank=1, total_steps=10, warmup_steps=5, final_steps=1, interval=1, beta1=0.5, beta2=0.75
    )
    stack = model.tensor_adapters["0"]
    f = stack.factors()
    with torch.no_grad():
        f["lambda"].copy_(torch.tensor([1.0, -2.0]))
        f["U2"].fill_(1.0)
        f["V2"].fill_(1.0)
    grads = [
        {"lambda": [1.0, 0.5], "U2": [[1.0, 2.0], [3.0, 4.0]], "V2": [[1.0, 1.0], [0.0, 0.0]]},
        {"lambda": [3.0, 0.0], "U2": [[0.0, 0.0], [0.0, 0.0]], "V2": [[0.0, 0.0], [0.0, 0.0]]},
    ]
    for step, g in enumerate(grads):
        for p in model.tensor_adapters.parameters():
            p.grad = torch.zeros_like(p)
        for name, value in g.items():
            f[name].grad = torch.tensor(value)
        assert pruner.update_and_allocate(step) == 2  # warm-up: nothing pruned
    # Sensitivities I: λ_0 1 then 3; λ_1 1 then 0; U2[j, i] and V2[i, j] a then 0.
    # I = 1, 3: Ī = .5, 1.75; Ū = .25·.5 = .125, .75·.125 + .25·1.25 = .40625; s = .7109375
    # I = a, 0: Ī = .5a, .25a; Ū = .125a, .75·.125a + .25·.25a = .15625a; s = .0390625 a²
    s_a = 0.0390625
    expected = torch.tensor(
        [
            0.7109375 + s_a * (1 + 9) / 2 + s_a * (1 + 1) / 2,  # λ_0 + column 0 of U2 + row 0 of V2
            s_a * 1 + s_a * (4 + 16) / 2 + 0.0,  # λ_1 + column 1 of U2 + row 1 of V2
        ]
    )
    assert torch.allclose(pruner.scores()["0"], expected, rtol=1e-6, atol=0)
    pruner._mask_to(1)  # the global cut keeps the higher-scored triplet
    pruner.apply_mask()
    assert pruner.masks["0"].tolist() == [True, False]
    assert f["lambda"].tolist() == [1.0, 0.0]


def test_training_masked_lambda_stay_zero_and_delta_rank_drops(make_model, ids):
    model = lora2_bert(make_model)
    pruner = RankPruner(model, target_rank=2, total_steps=12, warmup_steps=2, final_steps=4, interval=2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    weight = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(3))
    losses = []  # of the task alone (eval mode: no dropout, so the losses are comparable)
    for step in range(14):
        task = (model(ids).last_hidden_state * weight).mean()
        (task + 0.1 * model.orthogonality_loss()).backward()
        opt.step()
        pruner.update_and_allocate(step)
        opt.zero_grad()
        losses.append(float(task.detach()))
        for name, stack in model.tensor_adapters.items():
            assert torch.all(getattr(stack, "lambda")[~pruner.masks[name]] == 0), (step, name)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert pruner.total_rank == pruner.target_budget == 8
    pattern = pruner.rank_pattern()
    assert set(pattern) == {n for n, _ in model.adapter_layers()}
    for name, layer in model.adapter_layers():
        f = {k: v.detach().double() for k, v in layer.stack.factors().items()}
        delta = f["U1"] @ f["U2"] @ torch.diag(f["lambda"]) @ f["V2"] @ f["V1"]
        assert torch.linalg.matrix_rank(delta, rtol=1e-9) == pattern[name] >= 1, name


def test_state_dict_round_trip(make_model):
    model = lora2_bert(make_model)
    kw = {"target_rank": 1, "total_steps": 6, "warmup_steps": 0, "final_steps": 2, "interval": 1}
    pruner = RankPruner(model, **kw)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for stack in model.tensor_adapters.values():
            getattr(stack, "lambda").fill_(1.0)
    for t in range(5):
        fake_grads(model, gen)
        pruner.update_and_allocate(t)
    other = RankPruner(model, **kw)
    other.load_state_dict(pruner.state_dict())
    assert all(torch.equal(other.masks[k], pruner.masks[k]) for k in pruner.masks)
    assert all(torch.equal(other.scores()[k], pruner.scores()[k]) for k in pruner.masks)
    assert other.total_rank == 4
    with pytest.raises(ValueError, match="state"):
        other.load_state_dict({"masks": {}})


def test_bad_arguments(make_model):
    model = lora2_bert(make_model)
    kw = {"target_rank": 2, "total_steps": 10, "warmup_steps": 2, "final_steps": 2, "interval": 1}
    with pytest.raises(TypeError, match=r"`model` must be a peft.PeftModel of a tensorpeft adapter .* got Linear"):
        RankPruner(torch.nn.Linear(2, 2), **kw)
    with pytest.raises(TypeError, match=r"`model` must be a peft.PeftModel .* got BertModel"):
        RankPruner(model.get_base_model(), **kw)  # the adapted torch model is not the tuner
    tucker = tp.get_peft_model(make_model("bert"), tp.Tucker2Config(rank=2, target_modules=["query"]))
    with pytest.raises(ValueError, match="no LoRA²"):
        RankPruner(tucker, **kw)
    with pytest.raises(ValueError, match="`warmup_steps` \\+ `final_steps`"):
        RankPruner(model, **{**kw, "warmup_steps": 5, "final_steps": 5})
    with pytest.raises(ValueError, match="`initial_rank`=5 exceeds"):
        RankPruner(model, **kw, initial_rank=5)
    with pytest.raises(ValueError, match="`target_rank`=3 exceeds `initial_rank`=2"):
        RankPruner(model, **{**kw, "target_rank": 3}, initial_rank=2)
    with pytest.raises(ValueError, match="`beta2` must be in"):
        RankPruner(model, **kw, beta2=1.0)
    with pytest.raises(ValueError, match="`final_steps` must be an integer >= 1"):
        RankPruner(model, **{**kw, "final_steps": 0})
    with pytest.raises(TypeError, match="`interval`"):
        RankPruner(model, **{**kw, "interval": 1.5})
    pruner = RankPruner(model, **kw)
    with pytest.raises(RuntimeError, match=r"after loss\.backward"):
        pruner.update_and_allocate(0)
    with pytest.raises(ValueError, match="`step`"):
        pruner.budget(-1)


def _small_pruner():
    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4))
    model = tp.get_peft_model(base, tp.LoRA2Config(rank=2, target_modules=["0", "2"]))
    pruner = RankPruner(model, target_rank=1, total_steps=4, warmup_steps=0, final_steps=1, interval=1)
    fake_grads(model, torch.Generator().manual_seed(0))
    pruner.update_and_allocate(1)  # importances exist, one entry pruned
    return pruner


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        ({"masks": 3}, ValueError, r"`state\['masks'\]` must have the LoRA² stacks \['0', '2'\], got int"),
        ({"masks": {"0": 3, "2": 3}}, ValueError, r"`state\['masks'\]\['0'\]` must be a bool tensor of shape \(2,\)"),
        ({"masks": {"0": torch.ones(2), "2": torch.ones(2)}}, ValueError, r"must be a bool tensor"),
        ({"avg_ipt": 3}, TypeError, r"`state\['avg_ipt'\]` must be a dict of stacks, got int"),
        ({"avg_unc": {"0": 3}}, ValueError, r"`state\['avg_unc'\]\['0'\]` must be a dict of tensors"),
        ({"avg_ipt": {"0": {"lambda": 3, "U2": 3, "V2": 3}}}, ValueError, r"`state\['avg_ipt'\]\['0'\]\['lambda'\]`"),
        ({"final_done": "yes"}, TypeError, r"`state\['final_done'\]` must be a bool, got 'yes'"),
    ],
)
def test_load_state_dict_refuses_malformed_states_and_changes_nothing(change, exc, match):
    pruner = _small_pruner()
    state = pruner.state_dict()
    with pytest.raises(exc, match=match):
        pruner.load_state_dict({**state, **change})
    after = pruner.state_dict()
    assert after["final_done"] == state["final_done"]
    assert all(torch.equal(after["masks"][k], state["masks"][k]) for k in state["masks"])
    for part in ("avg_ipt", "avg_unc"):
        assert all(torch.equal(after[part][k][f], t) for k, v in state[part].items() for f, t in v.items())


def test_load_state_dict_of_float64_importances_into_float32_factors_is_refused():
    pruner = _small_pruner()
    state = pruner.state_dict()
    state["avg_ipt"] = {k: {f: t.double() for f, t in v.items()} for k, v in state["avg_ipt"].items()}
    with pytest.raises(ValueError, match=r"must be a torch.float32 tensor of shape"):
        pruner.load_state_dict(state)


class _UnprunableLoRA2(tp.decomp.OrthogonalProjection):
    """A LoRA² subclass that names no rank components: the pruner must leave it alone."""

    rank_components = None


class _GatedLoRA(tp.decomp.TensorNetwork):
    """ΔW_s = B_s diag(g_s) A_s, a format that is no OrthogonalProjection but names its rank components."""

    rank_components: ClassVar[dict[str, int]] = {"g": -1, "B": -1, "A": -2}

    def __init__(self, stack, out_features, in_features, rank):
        s = "abcdefgh"[: len(stack)]
        sizes = {**dict(zip(s, stack, strict=True)), "o": out_features, "i": in_features, "r": rank}
        super().__init__(
            f"{s}or,{s}r,{s}ri->{s}oi", sizes, stack_indices=s, out_indices="o", in_indices="i",
            factor_names=("B", "g", "A"),
        )  # fmt: skip


def test_the_pruner_asks_the_format_for_its_rank_components(make_model):
    kw = {"target_rank": 1, "total_steps": 6, "warmup_steps": 0, "final_steps": 1, "interval": 1}
    unprunable = tp.CustomConfig(factory=_UnprunableLoRA2, rank=2, target_modules=["query"])
    with pytest.raises(ValueError, match="no LoRA²"):
        RankPruner(tp.get_peft_model(make_model("bert"), unprunable), **kw)

    gated = tp.CustomConfig(factory=_GatedLoRA, rank=3, target_modules=["query"])
    model = tp.get_peft_model(make_model("bert"), gated)
    pruner = RankPruner(model, **kw)
    assert pruner.initial_rank == 3 and set(pruner.masks) == set(model.tensor_adapters)
    gen = torch.Generator().manual_seed(0)
    for t in range(6):
        fake_grads(model, gen)
        rank = pruner.update_and_allocate(t)
    assert rank == pruner.num_matrices  # target rank 1 per matrix
    for name, stack in model.tensor_adapters.items():
        assert bool((stack.g[~pruner.masks[name]] == 0).all()) and bool((stack.g[pruner.masks[name]] != 0).all())
    assert sorted(pruner.state_dict()["avg_ipt"][next(iter(pruner.masks))]) == ["A", "B", "g"]


def test_the_pruner_takes_the_peft_model_or_its_tuner_and_prunes_the_active_adapter_only(make_model):
    kw = {"target_rank": 1, "total_steps": 4, "warmup_steps": 0, "final_steps": 1, "interval": 1}
    model = lora2_bert(make_model, rank=2)
    assert RankPruner(model.base_model, **kw).model is model.base_model
    model.add_adapter("other", tp.LoRA2Config(rank=3, target_modules=["key"]))
    other = model.base_model.tensorpeft_stacks["other"]
    with torch.no_grad():
        for stack in other.values():
            getattr(stack, "lambda").fill_(1.0)
    untouched = {k: v.clone() for k, v in other.state_dict().items()}
    pruner = RankPruner(model, **kw)
    assert pruner.model is model.base_model and pruner.adapter_name == "default"
    assert set(pruner.masks) == set(model.base_model.tensorpeft_stacks["default"])
    gen = torch.Generator().manual_seed(0)
    for t in range(4):
        fake_grads(model, gen)
        pruner.update_and_allocate(t)
    pattern = pruner.rank_pattern()
    assert sorted(pattern) == sorted(n for n, _ in model.adapter_layers() if n.endswith(("query", "value")))
    assert sum(pattern.values()) == pruner.total_rank == pruner.target_budget == 4
    assert all(torch.equal(v, untouched[k]) for k, v in other.state_dict().items())  # never touched
    model.set_adapter("other")
    assert pruner.rank_pattern() == pattern  # still the pruned adapter's layers
