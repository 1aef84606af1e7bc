import numpy as np
import pytest

from tensorpeft import gallery, testing


@pytest.mark.parametrize(("stack", "out", "inp", "rank"), [((2,), 6, 8, (2, 4)), ((), 4, 4, 2), ((2, 2), 6, 4, (3, 2))])
def test_check_format_passes(stack, out, inp, rank):
    assert "fit" in testing.check_format(gallery.krona(stack, out, inp, rank))


@pytest.mark.parametrize(
    ("stack", "out", "inp", "rank", "a", "c"),
    [((6,), 384, 384, 16, 16, 16), ((12, 2), 768, 3072, (32, 64), 32, 64), ((), 10, 7, (5, 1), 5, 1)],
)
def test_num_params_is_the_formula(stack, out, inp, rank, a, c):
    f = gallery.krona(stack, out, inp, rank)
    layers = int(np.prod(stack))
    assert f.num_params == layers * (a * c + (out // a) * (inp // c))
    assert f.factor_shapes == {"A": (*stack, a, c), "B": (*stack, out // a, inp // c)}


def test_every_slice_is_the_kronecker_product():
    f = gallery.krona((2, 3), 6, 8, (3, 2))
    fac = f.random(seed=1)
    dense = f.to_dense(fac)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(dense[i, j], np.kron(fac["A"][i, j], fac["B"][i, j]), rtol=1e-13)
    # rank(A ⊗ B) = rank A · rank B: A is 3 x 2 and B 2 x 4, so a rank-4 slice from 14 parameters
    assert np.linalg.matrix_rank(dense[0, 0]) == 2 * 2


@pytest.mark.parametrize(
    ("rank", "exc", "words"),
    [
        (5, ValueError, ["`rank`=5", "`out_features`=384", "4 or 6"]),
        ((4, 7), ValueError, ["`rank[1]`=7", "`in_features`=384", "6 or 8"]),
        ((4, 4, 4), ValueError, ["`rank`", "2 entries"]),
        (0, ValueError, ["`rank`", "0"]),
        ("4", TypeError, ["`rank`", "'4'"]),
    ],
)
def test_bad_rank_names_argument_expected_and_got(rank, exc, words):
    with pytest.raises(exc) as info:
        gallery.krona((6,), 384, 384, rank)
    for w in words:
        assert w in str(info.value)


def test_custom_config_end_to_end(gallery_helpers, tmp_path):
    fmt = gallery_helpers.end_to_end(gallery.krona, 4, tmp_path)
    assert fmt.factor_shapes == {"A": (3, 4, 4), "B": (3, 4, 4)}
