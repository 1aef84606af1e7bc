import numpy as np
import pytest
import torch

import tensorpeft as tp
from tensorpeft import testing
from tensorpeft.gallery import VeRA, vera


@pytest.mark.parametrize(("stack", "out", "inp", "rank"), [((3,), 6, 5, 4), ((2, 2), 4, 6, 3), ((), 5, 5, 2)])
def test_check_format_passes(stack, out, inp, rank):
    assert "fit" in testing.check_format(vera(stack, out, inp, rank))


@pytest.mark.parametrize(
    ("stack", "out", "inp", "rank"), [((6,), 384, 384, 256), ((12, 2), 768, 3072, 1024), ((), 10, 7, 3)]
)
def test_counts_are_the_formula(stack, out, inp, rank):
    f = vera(stack, out, inp, rank)
    layers = int(np.prod(stack))
    assert f.num_params == layers * (out + rank)
    assert f.num_frozen == rank * (inp + out)
    assert f.frozen_names == ("B", "A")
    assert f.factor_shapes == {
        "lambda_b": (*stack, out),
        "B": (out, rank),
        "lambda_d": (*stack, rank),
        "A": (rank, inp),
    }


def test_every_slice_is_diag_b_B_diag_d_A_and_lora_factors_are_exact():
    for rank in (3, 9):  # the closed form, then the SVD route (r > min(out, in))
        f = vera((2, 3), 6, 5, rank)
        fac = f.random(seed=1)
        dense = f.to_dense(fac)
        for i in range(2):
            for j in range(3):
                b, d = fac["lambda_b"][i, j], fac["lambda_d"][i, j]
                np.testing.assert_allclose(dense[i, j], np.diag(b) @ fac["B"] @ np.diag(d) @ fac["A"], rtol=1e-12)
                B, A = f.lora_factors(fac, (i, j))
                assert B.shape == (6, min(rank, 5))
                np.testing.assert_allclose(B @ A, dense[i, j], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_init_zero_b_constant_d_and_gradient_on_b(backend):
    f = vera((3,), 6, 5, 4)
    fac = f.init(seed=2, backend=backend, dtype="float64")
    as_np = {n: np.asarray(a) for n, a in fac.items()}
    assert not np.any(f.to_dense(as_np)) and not np.any(as_np["lambda_b"])
    assert np.all(as_np["lambda_d"] == 0.1)
    assert np.array_equal(as_np["A"], f.random(seed=2)["A"])  # the constants: numpy's draws on every backend
    t = {n: torch.as_tensor(a).requires_grad_() for n, a in as_np.items()}
    f.apply(t, torch.randn(4, 5, dtype=torch.float64), index=1).sum().backward()
    assert bool(t["lambda_b"].grad.abs().max() > 0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fit_recovers_exact_scales_with_the_constants_held(seed, backend):
    f = vera((4,), 16, 12, 4)
    constants = {n: a for n, a in f.random(seed=seed, backend=backend, dtype="float64").items() if n in f.frozen_names}
    target = f.to_dense(f.random(seed=seed + 10, backend=backend, dtype="float64") | constants)
    fac, err = f.fit(target, seed=seed)
    assert err < 1e-8
    for name, value in constants.items():
        assert np.array_equal(np.asarray(fac[name]), np.asarray(value))


def test_plain_als_on_the_same_equation_stalls_which_the_start_avoids():
    """Why VeRA has its own fit start: the generic ALS ends at spurious points (the Notes' measurement)."""
    generic = tp.decomp.TensorNetwork(
        "lo,or,lr,ri->loi",
        {"l": 3, "o": 6, "r": 4, "i": 5},
        stack_indices="l",
        out_indices="o",
        in_indices="i",
        factor_names=("b", "B", "d", "A"),
        frozen=("A", "B"),
        zero_factor="b",
    )
    f = vera((3,), 6, 5, 4)
    constants = {n: a for n, a in f.random(seed=0).items() if n in f.frozen_names}
    target = f.to_dense(f.random(seed=1) | constants)
    errors = []
    for seed in range(5):
        start = generic.random(seed=seed + 10) | {"A": constants["A"], "B": constants["B"]}
        errors.append(generic.fit(target, init=start)[1])
    assert max(errors) > 1e-2  # stalls from some starts
    assert f.fit(target)[1] < 1e-8


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        (((3,), 6, 5, 0), ValueError, ["`rank`", "0"]),
        (((3,), 6, 5, "4"), TypeError, ["`rank`", "'4'"]),
        (((3,), 0, 5, 4), ValueError, ["`out_features`"]),
    ],
)
def test_bad_arguments_are_named(args, exc, words):
    with pytest.raises(exc) as info:
        vera(*args)
    for w in words:
        assert w in str(info.value)


def test_d_initial_is_checked():
    with pytest.raises(ValueError, match="`d_initial` must be non-zero"):
        VeRA((2,), 4, 4, 2, d_initial=0.0)
    with pytest.raises(TypeError, match="`d_initial` must be a finite real"):
        VeRA((2,), 4, 4, 2, d_initial=float("inf"))
    assert VeRA((2,), 4, 4, 2, d_initial=1.0) != VeRA((2,), 4, 4, 2)


def test_custom_config_on_minilm_shapes_builds():
    fmt = tp.CustomConfig(factory=vera, rank=256, target_modules=["query", "value"]).build_format((6,), 384, 384)
    assert (fmt.num_params, fmt.num_frozen) == (6 * (384 + 256), 256 * 768)


def test_custom_config_trains_merges_and_reloads(tmp_path):
    torch.manual_seed(0)

    def tiny():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))

    cfg = tp.CustomConfig(factory=vera, rank=8, target_modules=["0", "2"], stack_by="shape")
    model = tp.get_peft_model(tiny(), cfg)
    assert model.get_nb_trainable_parameters()[0] == 2 * (16 + 8)
    x, target = torch.randn(5, 16), torch.randn(5, 16)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0]
    (stack,) = model.tensor_adapters.values()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in stack.parameters())
    with torch.no_grad():
        adapted = model(x)
        model.save_pretrained(tmp_path)
        loaded = tp.TensorPeftModel.from_pretrained(tiny(), tmp_path, trust_custom_factories=[vera])
        assert torch.equal(loaded(x), adapted)
        merged = model.merge_and_unload()(x)
    assert float((merged - adapted).norm() / adapted.norm()) < 1e-5
