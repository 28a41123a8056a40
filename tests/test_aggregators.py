import pytest
import torch

from fedloom.aggregators import BookLambda, FedAvg, make_aggregator


def test_book_lambda_is_global_plus_lambda_times_sum():
    g = torch.tensor([1.0, -2.0, 0.5])
    diffs = torch.tensor([[1.0, 0.0, 2.0], [3.0, -4.0, 0.0]])  # [clients, params]
    out = BookLambda(0.1).aggregate(g, diffs, torch.tensor([10, 1000]))
    # hand: G + 0.1 * ([1,0,2] + [3,-4,0]) = [1,-2,0.5] + [0.4,-0.4,0.2]; sample counts ignored
    assert torch.allclose(out, torch.tensor([1.4, -2.4, 0.7]))


def test_book_lambda_one_over_k_is_plain_mean():
    g = torch.zeros(2)
    diffs = torch.tensor([[2.0, 4.0], [4.0, 8.0], [0.0, 0.0]])
    out = BookLambda(1 / 3).aggregate(g, diffs, torch.tensor([1, 1, 1]))
    assert torch.allclose(out, torch.tensor([2.0, 4.0]))


def test_fedavg_weights_by_sample_count():
    g = torch.tensor([1.0, 1.0])
    w0, w1 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 6.0])
    out = FedAvg().aggregate(g, torch.stack([w0, w1]), torch.tensor([1, 2]))
    # hand: G + (1·w0 + 2·w1)/3 = [1,1] + [1, 4]
    assert torch.allclose(out, torch.tensor([2.0, 5.0]))


def test_empty_cohort_leaves_global_unchanged_and_does_not_alias():
    g = torch.tensor([1.0, 2.0])
    for agg in (FedAvg(), BookLambda(0.5)):
        out = agg.aggregate(g, torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
        assert torch.equal(out, g) and out.data_ptr() != g.data_ptr()


def test_make_aggregator_picks_book_rule_only_with_lambda():
    assert isinstance(make_aggregator(0.1), BookLambda)
    assert isinstance(make_aggregator(None), FedAvg)
    with pytest.raises(ValueError):
        BookLambda(0.0)


def test_median_of_an_even_count_is_the_mean_of_the_middles_with_or_without_present():
    from fedloom.aggregators import CoordinateMedian

    g = torch.zeros(2)
    diffs = torch.tensor([[1.0, 10.0], [3.0, 20.0], [7.0, 40.0], [100.0, 30.0]])  # [clients, params]
    n = torch.ones(4, dtype=torch.int64)
    med = CoordinateMedian()
    assert med.aggregate(g, diffs, n).tolist() == [5.0, 25.0]
    everyone = torch.ones(4, 2, dtype=torch.bool)
    assert med.aggregate(g, diffs, n, everyone).tolist() == [5.0, 25.0]  # dense and partial paths agree
    present = torch.tensor([[True, False], [True, False], [False, True], [False, False]])
    assert med.aggregate(g, diffs, n, present).tolist() == [2.0, 40.0]  # over the senders only
    assert med.aggregate(g, diffs, n, torch.zeros(4, 2, dtype=torch.bool)).tolist() == [0.0, 0.0]
