import itertools

import numpy as np
import pytest

from tensorpeft import gallery, testing


def ring_entry(cores, idx):
    """Tr(G_1[n_1] ... G_K[n_K]) by plain matrix products."""
    m = np.eye(cores[0].shape[0])
    for core, n in zip(cores, idx, strict=True):
        m = m @ core[:, n, :]
    return np.trace(m)


@pytest.mark.parametrize(("stack", "out", "inp", "rank"), [((2,), 8, 8, 2), ((), 4, 6, (2, 3, 2, 3))])
def test_check_format_passes(stack, out, inp, rank):
    # Without its `fit` checks: ALS of a ring is slow and not convex (test_fit_recovers_an_exact_ring, and
    # test_check_format_with_fit at bond 1); at bond 2 check_format's fits took 30-80 s on the loaded CI machine.
    ran = testing.check_format(gallery.tensor_ring(stack, out, inp, rank), skip=("fit",))
    assert "apply" in ran and "fit" not in ran


def test_check_format_with_fit():
    assert "fit" in testing.check_format(gallery.tensor_ring((2,), 4, 6, 1))


@pytest.mark.parametrize(
    ("stack", "out", "inp", "rank"),
    [((6,), 384, 384, 4), ((12, 2), 768, 3072, 3), ((), 12, 7, (2, 3, 4)), ((3,), 1, 16, 2)],
)
def test_num_params_is_the_formula(stack, out, inp, rank):
    f = gallery.tensor_ring(stack, out, inp, rank)
    modes = [f.factor_shapes[n][len(stack) + 1] for n in f.factor_names]
    assert int(np.prod(modes[: len(f.out_indices)])) == out and int(np.prod(modes[len(f.out_indices) :])) == inp
    bonds = (rank,) * len(modes) if isinstance(rank, int) else rank
    k = len(modes)
    assert f.num_params == int(np.prod(stack)) * sum(bonds[j] * modes[j] * bonds[(j + 1) % k] for j in range(k))


def test_modes_of_the_docstring():
    assert gallery.tensor_ring((6,), 384, 384, 4).num_params == 6 * 16 * (8 + 8 + 6 + 8 + 8 + 6)
    shapes = gallery.tensor_ring((), 12, 7, 2).factor_shapes
    assert [s[1] for s in shapes.values()] == [4, 3, 7]  # 12 -> (4, 3); a prime stays one mode


def test_every_entry_is_the_trace_of_the_ring():
    f = gallery.tensor_ring((2,), 6, 4, (2, 3, 1, 2))
    fac = f.random(seed=0)
    dense = f.to_dense(fac)
    for s in range(2):
        cores = [fac[n][s] for n in f.factor_names]
        for o1, o2, i1, i2 in itertools.product(range(3), range(2), range(2), range(2)):
            expected = ring_entry(cores, (o1, o2, i1, i2))
            assert np.isclose(dense[s, o1 * 2 + o2, i1 * 2 + i2], expected, rtol=1e-12, atol=1e-14)


def test_cyclic_shift_of_the_cores_leaves_the_trace():
    f = gallery.tensor_ring((), 4, 4, (2, 3, 2, 3))
    fac = f.random(seed=1)
    cores = [fac[n] for n in f.factor_names]
    idx = (1, 0, 1, 1)
    assert np.isclose(ring_entry(cores, idx), ring_entry(cores[1:] + cores[:1], idx[1:] + idx[:1]), rtol=1e-12)


def test_fit_recovers_an_exact_ring():
    """ALS recovers an exactly representable ring (16 x 16, bond 2) to round-off from this start."""
    f = gallery.tensor_ring((), 16, 16, 2)
    _, err = f.fit(f.to_dense(f.random(seed=100)), seed=0)
    assert err < 1e-10


@pytest.mark.parametrize(
    ("rank", "exc", "words"),
    [
        ((2, 2), ValueError, ["`rank`", "6 entries", "(2, 2)"]),
        (0, ValueError, ["`rank`", "0"]),
        (None, TypeError, ["`rank`", "6 positive integers", "bond of the ring"]),
    ],
)
def test_bad_rank_names_argument_expected_and_got(rank, exc, words):
    with pytest.raises(exc) as info:
        gallery.tensor_ring((6,), 384, 384, rank)
    for w in words:
        assert w in str(info.value)


def test_custom_config_end_to_end(gallery_helpers, tmp_path):
    fmt = gallery_helpers.end_to_end(gallery.tensor_ring, 2, tmp_path)
    assert len(fmt.factor_names) == 4  # 16 -> (4, 4) on each side
