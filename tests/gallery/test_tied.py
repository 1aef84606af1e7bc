import numpy as np
import pytest

from tensorpeft import gallery, testing


@pytest.mark.parametrize(("stack", "d", "r"), [((3,), 5, 2), ((2, 2), 4, 3), ((), 6, 2)])
def test_check_format_passes(stack, d, r):
    assert "fit" in testing.check_format(gallery.tied(stack, d, d, r))


@pytest.mark.parametrize(("stack", "d", "r"), [((6,), 384, 8), ((12, 4), 768, 16), ((), 3, 3)])
def test_num_params_is_the_formula(stack, d, r):
    f = gallery.tied(stack, d, d, r)
    assert f.num_params == d * r + int(np.prod(stack)) * r**2
    assert f.tied_factors == {"U": 2} and f.factor_shapes["U"] == (d, r)


def test_every_slice_is_u_sigma_u_t():
    f = gallery.tied((2, 3), 6, 6, 2)
    fac = f.random(seed=0)
    dense = f.to_dense(fac)
    U = fac["U"]
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(dense[i, j], U @ fac["Sigma"][i, j] @ U.T, rtol=1e-12)
            # the slice maps span(U) into itself: its column and row spaces lie in span(U)
            P = U @ np.linalg.pinv(U)
            np.testing.assert_allclose(P @ dense[i, j] @ P, dense[i, j], atol=1e-12)


def test_fit_recovers_exactly_representable_tensors():
    f = gallery.tied((4,), 8, 8, 3)
    for seed in range(3):
        target = f.to_dense(f.random(seed=10 + seed))
        _, err = f.fit(target, seed=seed)
        assert err < 1e-10


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        (((6,), 384, 1536, 8), ValueError, ["`out_features`=384", "`in_features`=1536", "square"]),
        (((6,), 4, 4, 5), ValueError, ["`rank`=5", "`out_features`=4"]),
        (((6,), 4, 4, 0), ValueError, ["`rank`", "0"]),
        (((6,), 4, 4, 2.0), TypeError, ["`rank`", "2.0"]),
    ],
)
def test_bad_arguments_name_argument_expected_and_got(args, exc, words):
    with pytest.raises(exc) as info:
        gallery.tied(*args)
    for w in words:
        assert w in str(info.value)


def test_custom_config_end_to_end(gallery_helpers, tmp_path):
    fmt = gallery_helpers.end_to_end(gallery.tied, 3, tmp_path)
    assert fmt.tied_factors == {"U": 2}
