import numpy as np
import pytest

from tensorpeft import decomp, gallery, testing


@pytest.mark.parametrize(
    ("factory", "stack", "out", "inp", "rank"),
    [
        (gallery.fact_tt, (3,), 6, 5, 2),
        (gallery.fact_tt, (), 4, 4, 3),
        (gallery.fact_tk, (2, 3), 6, 5, (2, 3)),
        (gallery.fact_tk, (4,), 5, 5, 2),
    ],
)
def test_check_format_passes(factory, stack, out, inp, rank):
    assert "fit" in testing.check_format(factory(stack, out, inp, rank))


@pytest.mark.parametrize(("stack", "out", "inp", "r"), [((144,), 768, 768, 4), ((6, 2), 384, 1536, 8), ((), 7, 3, 1)])
def test_fact_tt_num_params_is_the_formula(stack, out, inp, r):
    layers = int(np.prod(stack))
    assert gallery.fact_tt(stack, out, inp, r).num_params == (out + inp) * r + layers * r**2


@pytest.mark.parametrize(
    ("stack", "out", "inp", "rank", "r", "k"),
    [((144,), 768, 768, 8, 8, 8), ((6, 2), 384, 1536, (8, 3), 8, 3), ((), 7, 3, (1, 2), 1, 2)],
)
def test_fact_tk_num_params_is_the_formula(stack, out, inp, rank, r, k):
    layers = int(np.prod(stack))
    assert gallery.fact_tk(stack, out, inp, rank).num_params == (out + inp) * r + r * r * k + layers * k


def test_the_paper_counts():
    assert gallery.fact_tt((144,), 768, 768, 4).num_params == 8_448  # PAPERS.md: r = 4 -> 8,448
    assert gallery.fact_tk((144,), 768, 768, 8).num_params == 2 * 768 * 8 + 144 * 8 + 8**3


def test_fact_tt_is_tucker2():
    f = gallery.fact_tt((4,), 6, 5, 3)
    fac = f.random(seed=0)
    t2 = decomp.Tucker2(stack=(4,), out_features=6, in_features=5, rank=(3, 3))
    t2_factors = {"A": fac["V"], "G": fac["Sigma"], "B": fac["U"].T}
    assert set(t2.factor_shapes) == set(t2_factors)
    np.testing.assert_allclose(f.to_dense(fac), t2.to_dense(t2_factors), rtol=1e-13)


def test_fact_tk_is_the_mixed_core():
    f = gallery.fact_tk((2, 3), 6, 5, (2, 4))
    fac = f.random(seed=0)
    dense = f.to_dense(fac)
    for i in range(2):
        for j in range(3):
            core = np.tensordot(fac["C"], fac["P"][i, j], axes=([2], [0]))  # C ×₃ P_l
            np.testing.assert_allclose(dense[i, j], fac["V"] @ core @ fac["U"], rtol=1e-12)


def test_init_zeroes_v_as_the_paper():
    f = gallery.fact_tk((3,), 6, 5, 2)
    fac = f.init(seed=0)
    assert f.zero_factor == "V" and not np.any(fac["V"]) and np.all(fac["C"] != 0)


@pytest.mark.parametrize(
    ("factory", "rank", "exc", "words"),
    [
        (gallery.fact_tt, 0, ValueError, ["`rank`", "0"]),
        (gallery.fact_tt, (2, 2), TypeError, ["`rank`"]),
        (gallery.fact_tk, (2, 2, 2), ValueError, ["`rank`", "2 entries"]),
        (gallery.fact_tk, (2, -1), ValueError, ["`rank[1]`", "-1"]),
    ],
)
def test_bad_rank_names_argument_expected_and_got(factory, rank, exc, words):
    with pytest.raises(exc) as info:
        factory((6,), 384, 384, rank)
    for w in words:
        assert w in str(info.value)


def test_bad_stack_is_named():
    with pytest.raises((TypeError, ValueError), match="`stack"):
        gallery.fact_tt("six", 384, 384, 2)
    with pytest.raises(ValueError, match=r"`stack\[0\]`"):
        gallery.fact_tt((0,), 384, 384, 2)


@pytest.mark.parametrize("factory", [gallery.fact_tt, gallery.fact_tk])
def test_custom_config_end_to_end(gallery_helpers, tmp_path, factory):
    fmt = gallery_helpers.end_to_end(factory, 3, tmp_path)
    assert fmt.factor_shapes["V"] == (gallery_helpers.WIDTH, 3)
