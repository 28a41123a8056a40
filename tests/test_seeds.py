"""fedloom.seeds.client_seeds: numpy's SeedSequence hash over a cohort equals client_seed client by client."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.seeds import client_seeds, cohort_seeds
from fedloom.training import client_seed


@pytest.mark.parametrize(
    "seed, rnd, tag",
    [(0, 1, 2), (0, 0, 0), (123_456_789, 7, 2), (2**40 + 5, 3, 2), (2**63 - 1, 2**33, 2), (5, 0, 2**35)],
)  # one-word entries, and seeds, rounds and tags of two and three 32-bit words (more entropy than the pool)
def test_equals_client_seed_for_every_client(seed, rnd, tag):
    ids = [*range(300), 2**31, 2**32 - 1]
    expected = [client_seed(seed, rnd, c, tag) for c in ids]
    assert client_seeds(seed, rnd, ids, tag).tolist() == expected
    assert client_seeds(seed, rnd, ids[:3], tag).tolist() == expected[:3]  # the few-clients path too


def test_empty_and_bad_ids():
    assert client_seeds(0, 1, [], 2).shape == (0,)
    with pytest.raises(ValueError, match="client ids"):
        client_seeds(0, 1, [-1, *range(20)], 2)
    with pytest.raises(ValueError, match="non-negative"):
        client_seeds(-1, 1, list(range(20)), 2)
    assert client_seeds(0, 1, np.arange(20), 2).dtype == np.int64


@pytest.mark.parametrize("num_clients", [1, 10, 256, 257])  # 257: over the table's size, computed per round
@pytest.mark.parametrize("seed, tag", [(0, 2), (2**40 + 5, 2), (7, 2**35)])
def test_cohort_seeds_from_the_round_table_equal_client_seed(seed, tag, num_clients):
    for rnd in (0, 1, 31, 32, 33, 95, 2**32 - 1):  # inside and on the edges of 32-round blocks, the last round
        ids = sorted({0, num_clients // 2, num_clients - 1})
        assert cohort_seeds(seed, rnd, ids, tag, num_clients).tolist() == [client_seed(seed, rnd, c, tag) for c in ids]
    with pytest.raises(ValueError, match="client ids"):
        cohort_seeds(seed, 1, [num_clients], tag, num_clients)
