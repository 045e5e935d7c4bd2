import pytest
import torch

from fixmatch_bench.train.evaluation import reported_error
from fixmatch_bench.train.sampling import IndexStream


def test_stream_walks_through_permutations_and_straddles_them():
    stream = IndexStream(5, 3, torch.Generator().manual_seed(0))
    drawn = torch.cat([stream.next() for _ in range(5)])  # 15 = three full permutations
    for start in (0, 5, 10):
        assert sorted(drawn[start:start + 5].tolist()) == [0, 1, 2, 3, 4]


def test_batch_larger_than_pool_repeats_images():
    batch = IndexStream(4, 10, torch.Generator().manual_seed(0)).next()
    assert len(batch) == 10 and set(batch.tolist()) == {0, 1, 2, 3}


def test_stream_state_round_trip_draws_the_same_batches():
    generator = torch.Generator().manual_seed(3)
    stream = IndexStream(7, 3, generator)
    stream.next()
    state, generator_state = stream.state_dict(), generator.get_state()
    expected = [stream.next().tolist() for _ in range(4)]
    other_generator = torch.Generator()
    other_generator.set_state(generator_state)
    resumed = IndexStream(7, 3, other_generator)
    resumed.load_state_dict(state)
    assert [resumed.next().tolist() for _ in range(4)] == expected


def test_reported_error_is_100_minus_median_of_the_last_n():
    accuracies = [10.0 + step for step in range(100)]  # 10, 11, ..., 109
    accuracies[-3] = 0.0  # last 20 sorted: 0, 90..106, 108, 109 -> median (98 + 99) / 2
    assert reported_error(accuracies, 20) == pytest.approx(1.5)
    assert reported_error([90.0, 80.0, 85.0], 20) == 15.0  # fewer than N: all of them
    with pytest.raises(ValueError):
        reported_error([], 20)
