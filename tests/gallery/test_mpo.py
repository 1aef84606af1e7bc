import itertools

import numpy as np
import pytest

from tensorpeft import gallery, testing


def chain_entry(cores, pairs):
    """G_1[o_1, i_1] ... G_n[o_n, i_n] by plain matrix products (end cores padded to matrices)."""
    m = np.ones((1, 1))
    for k, (core, (o, i)) in enumerate(zip(cores, pairs, strict=True)):
        g = core[..., o, i, :] if k == 0 else core[:, o, i, ...]
        if k == 0:
            g = g[None, :]
        if k == len(cores) - 1:
            g = g[:, None]
        m = m @ g
    return m[0, 0]


@pytest.mark.parametrize(("stack", "out", "inp", "rank"), [((2,), 6, 4, 2), ((), 8, 8, (3,)), ((2, 2), 12, 7, 3)])
def test_check_format_passes(stack, out, inp, rank):
    assert "fit" in testing.check_format(gallery.mpo(stack, out, inp, rank))


@pytest.mark.parametrize(
    ("stack", "out", "inp", "rank"), [((6,), 384, 384, 4), ((12,), 768, 3072, 16), ((), 12, 7, 2), ((2,), 16, 16, (3,))]
)
def test_num_params_is_the_formula(stack, out, inp, rank):
    f = gallery.mpo(stack, out, inp, rank)
    n = len(f.factor_names)
    outs = [f.sizes[c] for c in f.out_indices]
    ins = [f.sizes[c] for c in f.in_indices]
    assert int(np.prod(outs)) == out and int(np.prod(ins)) == inp and len(outs) == len(ins) == n
    sites = [o * i for o, i in zip(outs, ins, strict=True)]
    asked = (rank,) * (n - 1) if isinstance(rank, int) else rank
    bonds = [1, *(min(r, int(np.prod(sites[: k + 1])), int(np.prod(sites[k + 1 :]))) for k, r in enumerate(asked)), 1]
    per_slice = sum(bonds[k] * outs[k] * ins[k] * bonds[k + 1] for k in range(n))
    assert f.num_params == int(np.prod(stack)) * per_slice


def test_the_docstring_count():
    f = gallery.mpo((6,), 384, 384, 4)
    assert f.num_params == 6 * (64 * 4 + 4 * 64 * 4 + 4 * 36) == 8_544


def test_every_entry_is_the_product_of_the_chain():
    f = gallery.mpo((2,), 6, 4, 2)  # out (3, 2), in (2, 2)
    fac = f.random(seed=0)
    dense = f.to_dense(fac)
    for s in range(2):
        cores = [fac[n][s] for n in f.factor_names]
        for o1, o2, i1, i2 in itertools.product(range(3), range(2), range(2), range(2)):
            expected = chain_entry(cores, [(o1, i1), (o2, i2)])
            assert np.isclose(dense[s, o1 * 2 + o2, i1 * 2 + i2], expected, rtol=1e-12, atol=1e-14)


def test_one_int_rank_is_capped_at_the_useful_bond():
    f = gallery.mpo((), 6, 4, 1000)  # sites 3*2 = 6 and 2*2 = 4: the bond is at most 4
    assert f.factor_shapes == {"G1": (3, 2, 4), "G2": (4, 2, 2)}


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        (((), 7, 5, 2), ValueError, ["`out_features`=7", "`in_features`=5", "do not factor"]),
        (((), 6, 4, (5,)), ValueError, ["`rank[0]`=5", "exceeds 4"]),
        (((6,), 384, 384, (4, 4, 4)), ValueError, ["`rank`", "2 entries"]),
        (((6,), 384, 384, 0), ValueError, ["`rank`", "0"]),
        (((6,), 384, 384, True), TypeError, ["`rank`", "True"]),
    ],
)
def test_bad_arguments_name_argument_expected_and_got(args, exc, words):
    with pytest.raises(exc) as info:
        gallery.mpo(*args)
    for w in words:
        assert w in str(info.value)


def test_custom_config_end_to_end(gallery_helpers, tmp_path):
    fmt = gallery_helpers.end_to_end(gallery.mpo, 3, tmp_path)
    assert fmt.factor_shapes == {"G1": (3, 4, 4, 3), "G2": (3, 3, 4, 4)}  # 16 -> (4, 4) on both sides
