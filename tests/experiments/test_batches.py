"""Length-bucketed training batches."""

import numpy as np
import pytest

pytest.importorskip("torch")

from tensorpeft.experiments._train import _batches


@pytest.mark.parametrize(("n", "batch_size", "steps"), [(1000, 16, 150), (64, 16, 10), (5, 16, 3), (1, 4, 2)])
def test_batches_cover_steps_and_stay_in_range(n, batch_size, steps):
    lengths = np.random.default_rng(0).integers(1, 50, size=n)
    batches = _batches(lengths, batch_size, steps, np.random.default_rng(1))
    assert len(batches) == steps
    for b in batches:
        assert 1 <= len(b) <= batch_size
        assert b.min() >= 0 and b.max() < n
        assert len(set(b.tolist())) == len(b)


def test_full_chunks_are_sorted_by_length_and_draw_every_example_once_per_pass():
    lengths = np.random.default_rng(0).integers(1, 50, size=256)
    batches = _batches(lengths, 16, 16, np.random.default_rng(2))  # one pass: 2 chunks of 8 batches
    assert sorted(np.concatenate(batches).tolist()) == list(range(256))
    assert all(len(b) == 16 for b in batches)


def test_no_examples_is_an_error():
    with pytest.raises(ValueError, match="no training examples"):
        _batches(np.zeros(0, dtype=np.int64), 16, 3, np.random.default_rng(0))
