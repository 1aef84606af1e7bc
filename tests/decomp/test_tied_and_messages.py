"""Tied factors (one array on several operands) and the messages of malformed networks (issue 13)."""

import re

import numpy as np
import pytest
import torch

import tensorpeft as tp
from tensorpeft import decomp, testing
from tensorpeft.testing import assert_close

GOOD = dict(stack_indices="l", out_indices="o", in_indices="i")
SIZES = {"o": 4, "r": 2, "l": 3, "s": 2, "i": 5}


def usu(layers=3, d=6, r=2):
    """ΔW_l = U Σ_l Uᵀ: ``U`` on two operands, a core ``S`` per slice."""
    return decomp.TensorNetwork(
        "oa,lab,ib->loi",
        {"o": d, "a": r, "l": layers, "b": r, "i": d},
        factor_names=("U", "S", "U"),
        zero_factor="S",
        **GOOD,
    )


def untied_usu(layers=3, d=6, r=2):
    """The same equation with the two uses of ``U`` as separate factors ``U1``, ``U2``."""
    return decomp.TensorNetwork(
        "oa,lab,ib->loi",
        {"o": d, "a": r, "l": layers, "b": r, "i": d},
        factor_names=("U1", "S", "U2"),
        zero_factor="S",
        **GOOD,
    )


def tied_factory(stack, out_features, in_features, rank):
    """A :class:`tensorpeft.CustomConfig` factory: ``U Σ_l Uᵀ`` over the stack (square layers)."""
    (layers,) = stack
    if out_features != in_features:
        raise ValueError(f"`out_features` must equal `in_features` for U Σ Uᵀ, got {out_features} and {in_features}.")
    return usu(layers=layers, d=out_features, r=rank)


def exact(message: str) -> str:
    return f"^{re.escape(message)}$"


# ---------------------------------------------------------------------------------------- messages


def test_a_sum_in_the_equation_says_to_write_each_term_as_its_own_format():
    equation = "or,ri+oq,qi->oi"
    message = (
        f"`equation` must be one einsum product of factors, got {equation!r} with a '+': a sum of networks is not "
        "one einsum equation; write each term as its own format and add them with decomp.Sum(f1, f2)."
    )
    with pytest.raises(ValueError, match=exact(message)):
        decomp.TensorNetwork(equation, {"o": 4, "r": 2, "q": 2, "i": 5}, out_indices="o", in_indices="i")


def test_an_ellipsis_has_its_own_message():
    message = (
        "`equation` term '...or' has an ellipsis ('...'); a format names every index with a letter (no broadcast "
        "dimensions): write the stack modes as letters and list them in `stack_indices`."
    )
    with pytest.raises(ValueError, match=exact(message)):
        decomp.TensorNetwork("...or,lrs,is->loi", SIZES, **GOOD)


def test_a_size_for_a_letter_the_equation_never_uses_is_refused_naming_it():
    message = (
        "`sizes` gives a size to indices ['x'] that `equation`='or,lrs,is->loi' never uses (a typo?); give sizes "
        "to the equation's indices only."
    )
    with pytest.raises(ValueError, match=exact(message)):
        decomp.TensorNetwork("or,lrs,is->loi", SIZES | {"x": 3}, **GOOD)


def test_an_index_summed_inside_one_factor_is_refused():
    message = (
        "index 'k' of `equation`='ork,lrs,is->loi' appears only in operand 0 ('ork') and not in the output: it is "
        "summed inside one factor, whose 3 entries along it only add up (redundant parameters, and a singular "
        "fit). Drop the index from that operand, or give it size 1 in `sizes`."
    )
    with pytest.raises(ValueError, match=exact(message)):
        decomp.TensorNetwork("ork,lrs,is->loi", SIZES | {"k": 3}, **GOOD)


def test_a_size_one_dangling_index_is_accepted():
    f = decomp.TensorNetwork("ork,lrs,is->loi", SIZES | {"k": 1}, **GOOD)  # the end bond of a tensor train
    assert f.num_params == 4 * 2 + 3 * 2 * 2 + 5 * 2


def test_a_tied_name_on_operands_of_different_shapes_is_refused():
    message = (
        "`factor_names` must be 3 distinct names (one per operand), or repeat a name on operands of one shape to "
        "tie them: 'A' names operand 0 'or' of shape (4, 2) and operand 1 'lrs' of shape (3, 2, 2), "
        "got ('A', 'A', 'B')."
    )
    with pytest.raises(ValueError, match=exact(message)):
        decomp.TensorNetwork("or,lrs,is->loi", SIZES, factor_names=("A", "A", "B"), **GOOD)


def test_a_tied_zero_factor_is_refused():
    message = (
        "`zero_factor`='U' is tied (it names 2 operands): ΔW is of degree 2 in it, so zeroing it gives ΔW = 0 with "
        "a zero gradient as well; choose an untied factor, one of ('S',)."
    )
    with pytest.raises(ValueError, match=exact(message)):
        decomp.TensorNetwork(
            "oa,lab,ib->loi",
            {"o": 4, "a": 2, "l": 3, "b": 2, "i": 4},
            factor_names=("U", "S", "U"),
            zero_factor="U",
            **GOOD,
        )


def test_a_network_whose_every_factor_is_tied_is_refused():
    message = (
        "`factor_names`=('U', 'U') ties every factor: ΔW is of degree >= 2 in each, so no factor can start at zero "
        "with a non-zero gradient; add an untied factor (a core) to zero."
    )
    with pytest.raises(ValueError, match=exact(message)):
        decomp.TensorNetwork(
            "oa,ia->oi", {"o": 4, "a": 2, "i": 4}, out_indices="o", in_indices="i", factor_names=("U", "U")
        )


def test_the_default_zero_factor_is_the_last_untied_one():
    f = decomp.TensorNetwork(
        "oa,lab,ib->loi", {"o": 4, "a": 2, "l": 3, "b": 2, "i": 4}, factor_names=("U", "S", "U"), **GOOD
    )
    assert f.zero_factor == "S"


# ---------------------------------------------------------------------------------------- tied factors


def test_a_tied_factor_is_one_array_counted_once():
    f = usu(layers=3, d=6, r=2)
    assert f.factor_names == ("U", "S")
    assert f.operand_names == ("U", "S", "U")
    assert f.tied_factors == {"U": 2}
    assert f.factor_shapes == {"U": (6, 2), "S": (3, 2, 2)}
    assert f.num_params == 6 * 2 + 3 * 2**2  # d r + L r²
    assert set(f.random(seed=0)) == {"U", "S"}
    assert f == usu(layers=3, d=6, r=2) and f != untied_usu(layers=3, d=6, r=2)
    assert "factor_names=('U', 'S', 'U')" in repr(f)


def test_to_dense_is_the_einsum_with_the_array_repeated():
    f = usu()
    fac = f.random(seed=1)
    expected = np.einsum("oa,lab,ib->loi", fac["U"], fac["S"], fac["U"])
    assert_close(f.to_dense(fac), expected, what="to_dense and the einsum with U repeated")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_apply_equals_the_dense_update(backend):
    f = usu(layers=4, d=5, r=3)
    fac = f.random(seed=2, backend=backend, dtype="float64")
    dense = np.asarray(f.to_dense(fac))
    x = np.random.default_rng(0).standard_normal((2, 3, 5))
    xb = torch.from_numpy(x) if backend == "torch" else x
    for index in range(4):
        assert_close(np.asarray(f.apply(fac, xb, index=index)), x @ dense[index].T, what=f"apply at {index}")
    assert_close(np.asarray(f.apply(fac, xb, index=None)), np.einsum("bti,loi->lbto", x, dense), what="apply all")


def test_the_gradient_of_a_tied_factor_is_the_sum_over_its_uses():
    tied, untied = usu(), untied_usu()
    fac = tied.random(seed=3, backend="torch", dtype=torch.float64)
    x = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(3, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mine = {n: a.clone().requires_grad_() for n, a in fac.items()}
    (tied.apply(mine, x, index=None) * weights).sum().backward()
    copies = {"U1": fac["U"].clone(), "S": fac["S"].clone(), "U2": fac["U"].clone()}
    copies = {n: a.requires_grad_() for n, a in copies.items()}
    (untied.apply(copies, x, index=None) * weights).sum().backward()
    assert torch.allclose(mine["U"].grad, copies["U1"].grad + copies["U2"].grad, rtol=1e-12, atol=1e-12)
    assert torch.allclose(mine["S"].grad, copies["S"].grad, rtol=1e-12, atol=1e-12)


def test_init_is_a_zero_update_with_a_gradient():
    f = usu()
    assert not np.any(f.to_dense(f.init(seed=0)))
    fac = {n: a.requires_grad_() for n, a in f.init(seed=0, backend="torch", dtype=torch.float64).items()}
    f.apply(fac, torch.ones(2, 6, dtype=torch.float64), index=1).sum().backward()
    assert bool(fac["S"].grad.abs().max() > 0)
    assert not bool(fac["U"].grad.abs().max() > 0)  # through S = 0, as LoRA's A through B = 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("layers", "d", "r"), [(3, 6, 2), (6, 10, 4)])
def test_fit_recovers_an_exactly_representable_tensor(seed, layers, d, r):
    f = usu(layers=layers, d=d, r=r)
    target = f.to_dense(f.random(seed=100 + seed))
    factors, rel_err = f.fit(target, seed=seed)
    assert rel_err < 1e-8
    assert rel_err == f.relative_error(target, factors)


def test_fit_on_torch_and_at_extreme_scales():
    f = usu(layers=4, d=8, r=3)
    target = f.to_dense(f.random(seed=7))
    factors, rel_err = f.fit(torch.from_numpy(target), seed=1)
    assert isinstance(factors["U"], torch.Tensor) and rel_err < 1e-8
    for scale in (2.0**200, 2.0**-300):  # the scale goes on S: a shift of U would count twice
        factors, rel_err = f.fit(target * scale, seed=1)
        assert rel_err < 1e-8 and all(np.all(np.isfinite(a)) for a in factors.values())


def test_fit_never_raises_the_error_on_a_tensor_it_cannot_represent():
    f = usu(layers=4, d=8, r=3)
    noise = np.random.default_rng(0).standard_normal(f.shape)
    start = f.random(seed=5)
    _, before = f.fit(noise, init=start, n_iter_max=0)
    previous = before
    for sweeps in (1, 3, 10, 30):
        _, err = f.fit(noise, init=start, n_iter_max=sweeps)
        assert err <= previous + 1e-12
        previous = err
    assert previous < before


def test_check_format_passes_on_a_tied_network():
    ran = testing.check_format(usu(layers=3, d=5, r=2))
    assert "fit" in ran and "init" in ran


# ---------------------------------------------------------------------------------------- in a model


def test_the_compiled_kernel_path_passes_a_tied_factor_to_each_use():
    from tensorpeft.nn._kernels import _einsum_apply

    f = usu()
    fac = f.random(seed=4, backend="torch", dtype=torch.float64)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for index in range(3):
        assert torch.allclose(_einsum_apply(f, fac, x, (index,)), f.apply(fac, x, index), rtol=1e-12, atol=1e-12)


def test_a_custom_config_with_a_tied_network_trains_merges_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
    fresh.load_state_dict(base.state_dict())
    model = tp.get_peft_model(base, tp.CustomConfig(factory=tied_factory, rank=2, target_modules=["0", "2"]))
    (stack,) = model.tensor_adapters.values()
    assert sorted(n for n, _ in stack.named_parameters()) == ["S", "U"]  # U registered once
    assert model.get_nb_trainable_parameters()[0] == 8 * 2 + 2 * 2**2
    x, y = torch.randn(32, 8), torch.randn(32, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert float(stack.U.grad.abs().max()) > 0
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        model.merge_adapter()
        assert torch.allclose(model(x), adapted, rtol=1e-5, atol=1e-6)
        model.unmerge_adapter()
    model.save_pretrained(tmp_path / "tied")
    loaded = tp.TensorPeftModel.from_pretrained(fresh, tmp_path / "tied", trust_custom_factories=[tied_factory])
    with torch.no_grad():
        assert torch.equal(loaded(x), adapted)
