import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tensorpeft import decomp


def test_torch_apply_rejects_mismatched_dtype_at_entry():
    f = decomp.Tucker2((2,), 4, 3, 1)
    fac = f.random(backend="torch", dtype=torch.float32)
    with pytest.raises(TypeError, match=r"`x` has dtype torch.float64 but the factors are torch.float32"):
        f.apply(fac, torch.ones(2, 3, dtype=torch.float64), 0)


def test_torch_apply_under_autocast_accepts_lower_precision_input():
    f = decomp.LoRA((2,), 4, 3, 1)
    fac = f.random(backend="torch", dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = f.apply(fac, torch.ones(2, 3, dtype=torch.bfloat16), 1)
    assert y.dtype == torch.bfloat16
    expected = torch.ones(2, 3) @ f.to_dense(fac)[1].T
    assert torch.allclose(y.float(), expected, rtol=2e-2, atol=2e-2)


def test_numpy_apply_promotes_like_numpy():
    f = decomp.LoRA((), 4, 3, 2)
    fac = f.random()
    y = f.apply(fac, np.ones((5, 3), dtype=np.float32))
    assert y.dtype == np.float64
