import numpy as np
import pytest

from fedloom.data.partition import partition
from fedloom.errors import ConfigError

Y = np.repeat(np.arange(10), 100)  # 1000 rows, 10 balanced labels


def _check_disjoint(p, n, complete=True):
    rows = np.concatenate([p.indices(c) for c in range(p.num_clients)])
    assert len(np.unique(rows)) == len(rows), "a row was given to two clients"
    if complete:
        assert sorted(rows.tolist()) == list(range(n)), "rows lost or invented"


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards", "quantity"])
def test_partitions_are_disjoint_and_complete(method):
    p = partition(Y, 7, method, np.random.default_rng(0), alpha=0.5, shards_per_client=2)
    assert p.num_clients == 7
    _check_disjoint(p, len(Y))


def test_contiguous_is_the_books_slicing():
    p = partition(np.zeros(23, dtype=int), 5, "contiguous", np.random.default_rng(0))
    # L = 23 // 5 = 4: client c gets [4c, 4c+4); rows 20..22 unused, as in the book
    assert [p.indices(c).tolist() for c in range(5)] == [list(range(4 * c, 4 * c + 4)) for c in range(5)]
    _check_disjoint(p, 23, complete=False)


def test_iid_sizes_differ_by_at_most_one():
    sizes = partition(np.zeros(1003, int), 10, "iid", np.random.default_rng(1)).sizes()
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 1003


def _mean_max_label_share(alpha, seed=0):
    p = partition(Y, 10, "dirichlet", np.random.default_rng(seed), alpha=alpha)
    counts = p.label_counts(Y, 10).astype(float)
    return float((counts.max(1) / counts.sum(1)).mean())


def test_dirichlet_skew_grows_as_alpha_shrinks():
    shares = [np.mean([_mean_max_label_share(a, s) for s in range(3)]) for a in (100.0, 1.0, 0.1)]
    assert shares[0] < shares[1] < shares[2]
    assert shares[0] < 0.2 and shares[2] > 0.5  # near-uniform vs. dominated by one label


def test_shards_give_each_client_few_labels():
    p = partition(Y, 10, "shards", np.random.default_rng(0), shards_per_client=2)
    labels_per_client = (p.label_counts(Y, 10) > 0).sum(1)
    assert labels_per_client.max() <= 2 * 2  # a shard may straddle two labels


def test_quantity_skews_sizes_and_respects_min_size():
    p = partition(Y, 10, "quantity", np.random.default_rng(0), alpha=0.3, min_size=5)
    sizes = p.sizes()
    assert sizes.min() >= 5 and sizes.sum() == len(Y) and sizes.max() > 3 * sizes.min()


def test_same_rng_seed_same_partition():
    a = partition(Y, 5, "dirichlet", np.random.default_rng(3), alpha=0.3)
    b = partition(Y, 5, "dirichlet", np.random.default_rng(3), alpha=0.3)
    assert np.array_equal(a.order, b.order) and np.array_equal(a.offsets, b.offsets)


def test_more_clients_than_rows_is_a_config_error():
    with pytest.raises(ConfigError, match="no_models"):
        partition(np.zeros(3, int), 5, "iid", np.random.default_rng(0))


def test_impossible_min_size_is_a_config_error():
    with pytest.raises(ConfigError, match="min_size"):
        partition(Y, 10, "dirichlet", np.random.default_rng(0), alpha=0.01, min_size=100)


def test_dirichlet_gives_unequal_client_sizes_as_its_docstring_says():
    import importlib

    module = importlib.import_module("fedloom.data.partition")

    sizes = partition(Y, 10, "dirichlet", np.random.default_rng(0), alpha=0.5).sizes()
    assert sizes.sum() == len(Y) and sizes.max() > 2 * sizes.min()
    assert "unequal" in module.__doc__ and "Hsu" in module.__doc__
