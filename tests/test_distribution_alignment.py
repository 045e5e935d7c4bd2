import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fixmatch_bench.methods.distribution_alignment import DistributionAlignment


def test_starts_uniform():
    da = DistributionAlignment(4, torch.ones(4))
    assert da.history.shape == (128, 4)
    torch.testing.assert_close(da.p_model(), torch.full((4,), 0.25))
    assert int(da.position) == 0


def test_hand_computed_three_classes():
    # p_data given unnormalized: [5, 3, 2] -> [0.5, 0.3, 0.2].
    da = DistributionAlignment(3, torch.tensor([5.0, 3.0, 2.0]), buffer_size=2)
    da.update(torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.3, 0.3]]))  # batch mean [0.5, 0.3, 0.2]
    # FIFO holds [0.5, 0.3, 0.2] and one initial uniform slot.
    torch.testing.assert_close(da.p_model(), torch.tensor([(0.5 + 1 / 3) / 2, (0.3 + 1 / 3) / 2, (0.2 + 1 / 3) / 2]))
    da.update(torch.tensor([[0.2, 0.2, 0.6]]))
    # p_model = mean([0.5, 0.3, 0.2], [0.2, 0.2, 0.6]) = [0.35, 0.25, 0.4]
    torch.testing.assert_close(da.p_model(), torch.tensor([0.35, 0.25, 0.4]))
    # ratio = p_data / p_model = [10/7, 6/5, 1/2] (up to the 1e-6 terms)
    q = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    aligned = da.align(q)
    # row 0: [0.7*10/7, 0.2*6/5, 0.1/2] = [1, 0.24, 0.05], / 1.29
    # row 1: [10/7, 6/5, 1/2] / 3 -> [100, 84, 35] / 219
    expected = torch.tensor([[1 / 1.29, 0.24 / 1.29, 0.05 / 1.29], [100 / 219, 84 / 219, 35 / 219]])
    torch.testing.assert_close(aligned, expected, rtol=1e-5, atol=1e-6)
    # the argmax (pseudo-label) can change: [1/3]*3 now points at class 0
    assert aligned.argmax(dim=1).tolist() == [0, 0]


def test_epsilon_keeps_empty_classes_finite():
    da = DistributionAlignment(2, torch.tensor([1.0, 0.0]), buffer_size=1)
    da.update(torch.tensor([[1.0, 0.0]]))
    aligned = da.align(torch.tensor([[0.5, 0.5]]))
    # ratio = [(1 + 1e-6) / (1 + 1e-6), 1e-6 / 1e-6] = [1, 1]
    torch.testing.assert_close(aligned, torch.tensor([[0.5, 0.5]]))


def test_fifo_drops_the_oldest_after_more_than_128_updates():
    da = DistributionAlignment(3, torch.ones(3))
    first, rest = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    da.update(first)
    da.update(first)
    for _ in range(127):
        da.update(rest)
    # 129 updates: one `first` left among the last 128 entries.
    torch.testing.assert_close(da.p_model(), torch.tensor([1 / 128, 127 / 128, 0.0]))
    da.update(rest)
    torch.testing.assert_close(da.p_model(), torch.tensor([0.0, 1.0, 0.0]))
    assert int(da.position) == 130 % 128


def test_uniform_everything_is_identity_up_to_normalization():
    torch.manual_seed(0)
    da = DistributionAlignment(10, torch.full((10,), 0.1))
    probs = torch.rand(16, 10)  # rows deliberately not normalized
    torch.testing.assert_close(da.align(probs), probs / probs.sum(dim=1, keepdim=True))


def test_update_uses_the_given_probs_not_aligned_ones():
    da = DistributionAlignment(2, torch.tensor([0.9, 0.1]), buffer_size=1)
    probs = torch.tensor([[0.2, 0.8], [0.4, 0.6]])
    da.update(probs)
    torch.testing.assert_close(da.p_model(), torch.tensor([0.3, 0.7]))


def test_state_round_trip():
    torch.manual_seed(0)
    da = DistributionAlignment(5, torch.rand(5) + 0.1, buffer_size=7)
    for _ in range(10):
        da.update(torch.softmax(torch.randn(8, 5), dim=1))
    state = da.state_dict()
    assert set(state) == {"p_data", "history", "position"}
    resumed = DistributionAlignment(5, torch.ones(5), buffer_size=7)
    resumed.load_state_dict(state)
    assert int(resumed.position) == 3
    torch.testing.assert_close(resumed.p_data, da.p_data)
    probs = torch.softmax(torch.randn(8, 5), dim=1)
    assert torch.equal(resumed.align(probs), da.align(probs))
    for _ in range(6):
        batch = torch.softmax(torch.randn(8, 5), dim=1)
        da.update(batch)
        resumed.update(batch)
    assert torch.equal(resumed.history, da.history)
    assert torch.equal(resumed.position, da.position)


def test_reduce_weights_every_image_across_ranks():
    # This rank has 1 image, the "other rank" 3 images. A mean-reduce over two
    # ranks of [sum, count] still yields the mean over all 4 images.
    other = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    other_stats = torch.cat([other.sum(dim=0), torch.tensor([3.0])])
    da = DistributionAlignment(2, torch.ones(2), buffer_size=1, reduce=lambda t: (t + other_stats) / 2)
    da.update(torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(da.p_model(), torch.tensor([0.25, 0.75]))


def _ddp_worker(rank: int, world_size: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        da = DistributionAlignment(3, torch.ones(3), buffer_size=1)
        probs = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])][rank]
        da.update(probs)
        results[rank] = da.p_model().tolist()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_all_reduce_under_a_real_process_group(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), results), nprocs=2, join=True)
        # 3 images over 2 ranks, one per class.
        for rank in range(2):
            assert results[rank] == pytest.approx([1 / 3, 1 / 3, 1 / 3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 3, "p_data": torch.ones(4)}, "p_data"),
        ({"num_classes": 3, "p_data": torch.tensor([1.0, -1.0, 1.0])}, "p_data"),
        ({"num_classes": 3, "p_data": torch.zeros(3)}, "p_data"),
        ({"num_classes": 3, "p_data": torch.ones(3), "buffer_size": 0}, "buffer_size"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistributionAlignment(**kwargs)


def test_bad_probs_shape_is_named():
    da = DistributionAlignment(3, torch.ones(3))
    with pytest.raises(ValueError, match="probs"):
        da.align(torch.ones(4, 2))
    with pytest.raises(ValueError, match="probs"):
        da.update(torch.ones(3))
