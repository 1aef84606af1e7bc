import itertools

import pytest
import torch

from tensorpeft import decomp
from tensorpeft.nn import AdapterStack, _kernels

FORMATS = {
    "lora": decomp.LoRA(stack=(3,), out_features=6, in_features=5, rank=2),
    "tucker2": decomp.Tucker2(stack=(2, 3), out_features=6, in_features=5, rank=(2, 3)),
    "cp_heads": decomp.CP(stack=(2, 3), out_features=6, in_features=5, rank=4, heads=3),
    "cp_single": decomp.CP(stack=(), out_features=6, in_features=5, rank=3),
    "orthogonal": decomp.OrthogonalProjection(stack=(2,), out_features=6, in_features=5, rank=2, inner=3),
    "tt_shared": decomp.TensorTrain(
        stack=(2,), out_features=6, in_features=4, rank=2, in_modes=(2, 2), out_modes=(2, 3)
    ),
    "tt_per_slice": decomp.TensorTrain(
        stack=(2,), out_features=6, in_features=4, rank=2, in_modes=(2, 2), out_modes=(3, 2), share_stack=False
    ),
    "custom": decomp.TensorNetwork(
        "or,lrq,iq->loi", {"o": 6, "r": 2, "l": 3, "q": 2, "i": 5}, stack_indices="l", out_indices="o", in_indices="i"
    ),
}


def make_stack(fmt, scaling=0.5, seed=0):
    return AdapterStack(fmt, scaling, fmt.random(seed=seed, backend="torch", dtype=torch.float64))


@pytest.mark.parametrize("name", list(FORMATS))
def test_kernel_equals_core_apply_and_dense(name):
    fmt = FORMATS[name]
    stack = make_stack(fmt)
    factors = {k: v.detach() for k, v in stack.factors().items()}
    dense = fmt.to_dense(factors)
    x = torch.randn(4, 3, fmt.in_features, dtype=torch.float64)
    for index in itertools.product(*(range(n) for n in fmt.stack)):
        got = stack(x, index)
        assert torch.allclose(got, 0.5 * fmt.apply(factors, x, index), rtol=1e-12, atol=1e-13)
        assert torch.allclose(got, 0.5 * x @ dense[index].T, rtol=1e-12, atol=1e-13)
        assert torch.allclose(stack.delta_weight(index), 0.5 * dense[index], rtol=1e-12, atol=1e-13)


def test_tucker2_fitted_core_orientation():
    """W_s = A0 G_s B0ᵀ with non-symmetric G_s: the fitted factors must reproduce x @ W_sᵀ.

    LoTR's reference initializes from the SVD with G_s where its forward needs G_sᵀ; that forward
    (``x B G_s Aᵀ``) is computed too, to show the check is sensitive to the orientation.
    """
    gen = torch.Generator().manual_seed(0)
    fmt = decomp.Tucker2(stack=(4,), out_features=7, in_features=6, rank=3)
    A0, B0 = (
        torch.randn(7, 3, generator=gen, dtype=torch.float64),
        torch.randn(6, 3, generator=gen, dtype=torch.float64),
    )
    W = A0 @ torch.randn(4, 3, 3, generator=gen, dtype=torch.float64) @ B0.T
    fitted, err = fmt.fit(W)
    assert err < 1e-10
    stack = AdapterStack(fmt, 1.0, fitted)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    for s in range(4):
        assert torch.allclose(stack(x, (s,)), x @ W[s].T, atol=1e-10)
        wrong = x @ fitted["B"] @ fitted["G"][s] @ fitted["A"].T
        assert not torch.allclose(wrong, x @ W[s].T, atol=1e-3)


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = _kernels.Tucker2Kernel.project

    def project(self, fmt, f, x):
        calls.append(x)
        return original(self, fmt, f, x)

    monkeypatch.setattr(_kernels.Tucker2Kernel, "project", project)
    return calls


def test_shared_projection_computed_once_per_input_and_gradients_agree(counted):
    fmt = decomp.Tucker2(stack=(3,), out_features=6, in_features=5, rank=2)
    x = torch.randn(4, 5, dtype=torch.float64)

    def run(share):
        stack = make_stack(fmt)
        stack.set_sharing(share)
        out = sum((stack(x, (s,)) ** 2).sum() for s in range(3))
        out.backward()
        return out.detach(), {k: p.grad for k, p in stack.factors().items()}

    counted.clear()
    y_shared, g_shared = run(True)
    assert len(counted) == 1
    counted.clear()
    y_plain, g_plain = run(False)
    assert len(counted) == 3
    assert torch.equal(y_shared, y_plain)
    assert all(torch.allclose(g_shared[k], g_plain[k], rtol=1e-12) for k in g_plain)


def test_shared_projection_is_recomputed_when_anything_changes(counted):
    fmt = decomp.Tucker2(stack=(2,), out_features=6, in_features=5, rank=2)
    stack = make_stack(fmt)
    stack.set_sharing(True)
    x = torch.randn(4, 5, dtype=torch.float64)
    stack(x, (0,))
    stack(x, (1,))
    assert len(counted) == 1
    with torch.no_grad():
        stack.B.mul_(2.0)  # an optimizer step changes B in place
    assert torch.allclose(stack(x, (0,)), 0.5 * fmt.apply({k: v.detach() for k, v in stack.factors().items()}, x, 0))
    assert len(counted) == 2
    x.add_(1.0)  # the input changed in place
    stack(x, (0,))
    assert len(counted) == 3
    with torch.no_grad():
        stack(x, (0,))  # another grad mode
    assert len(counted) == 4
    stack(x.clone(), (0,))  # another tensor
    assert len(counted) == 5
    stack.set_sharing(False)
    assert stack._cache is None


def test_factor_names_clashing_with_module_attributes_are_rejected():
    fmt = decomp.TensorNetwork(
        "or,ri->oi", {"o": 3, "r": 2, "i": 4}, out_indices="o", in_indices="i", factor_names=("forward", "B")
    )
    with pytest.raises(ValueError, match="factor name 'forward' clashes"):
        make_stack(fmt)
