import numpy as np
import pytest

from fixmatch_bench.data.prepared import load_prepared, save_prepared
from fixmatch_bench.data.splits import class_matched_split, make_split, read_split, write_split


def test_unshuffled_greedy_selection_matches_the_hand_computed_order():
    # Class sizes 3, 2, 1 -> stats 1, 2/3, 1/3. Greedy argmax(stats - npos / max(npos.max(), 1)):
    # class 0 (idx 0), class 1 (idx 3), class 2 (idx 5), class 0 (idx 1), class 1 (idx 4).
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert class_matched_split(labels, 3, seed=0, num_classes=3).tolist() == [0, 3, 5]
    assert class_matched_split(labels, 5, seed=0, num_classes=3).tolist() == [0, 1, 3, 4, 5]


def test_seeded_split_uses_the_legacy_numpy_shuffle_per_class_in_class_order():
    labels = np.repeat(np.arange(3), 10)
    np.random.seed(4)
    class_ids = [np.flatnonzero(labels == c) for c in range(3)]
    for ids in class_ids:
        np.random.shuffle(ids)
    expected = sorted([class_ids[0][0], class_ids[1][0], class_ids[2][0], class_ids[0][1], class_ids[1][1], class_ids[2][1]])
    assert class_matched_split(labels, 6, seed=4, num_classes=3).tolist() == expected


def test_balanced_data_gets_exactly_size_over_classes_per_class_and_is_deterministic():
    labels = np.tile(np.arange(10), 50)
    for seed in (1, 2, 3):
        split = class_matched_split(labels, 40, seed, 10)
        assert np.bincount(labels[split], minlength=10).tolist() == [4] * 10
        assert split.tolist() == class_matched_split(labels, 40, seed, 10).tolist()
    assert class_matched_split(labels, 40, 1, 10).tolist() != class_matched_split(labels, 40, 2, 10).tolist()


def test_unbalanced_data_gets_a_class_distribution_matched_split():
    labels = np.concatenate([np.full(400, 0), np.full(200, 1), np.full(100, 2)])
    split = class_matched_split(labels, 70, seed=1, num_classes=3)
    assert np.bincount(labels[split], minlength=3).tolist() == [40, 20, 10]


def test_a_split_larger_than_a_class_is_a_clear_error():
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="a split of 5 labels needs more than the 2 images of class 0"):
        class_matched_split(labels, 5, seed=1, num_classes=2)


def _dataset(tmp_path, fold_indices=None):
    rng = np.random.RandomState(0)
    arrays = {
        "train_images": rng.randint(0, 256, (60, 4, 4, 3), dtype=np.uint8),
        "train_labels": np.tile(np.arange(3), 20),
        "test_images": rng.randint(0, 256, (6, 4, 4, 3), dtype=np.uint8),
        "test_labels": np.arange(6) % 3,
        "fold_indices": fold_indices,
    }
    save_prepared(tmp_path / "data", "toy", 3, arrays)
    return load_prepared(tmp_path / "data")


def test_split_file_records_histogram_and_dataset_hash_and_round_trips(tmp_path):
    dataset = _dataset(tmp_path)
    split = make_split(dataset, 9, seed=2)
    assert split["class_histogram"] == [3, 3, 3] and split["dataset_sha256"] == dataset.sha256
    assert all(0 <= index < 60 for index in split["indices"])  # labeled images are a subset of the unlabeled train set
    write_split(split, tmp_path / "split.json")
    assert read_split(tmp_path / "split.json", dataset) == split


def test_a_split_of_other_data_is_refused(tmp_path):
    split = make_split(_dataset(tmp_path), 9, seed=2)
    split["dataset_sha256"] = "0" * 64
    write_split(split, tmp_path / "split.json")
    with pytest.raises(ValueError, match="drawn from a different version of toy"):
        read_split(tmp_path / "split.json", _dataset(tmp_path))


def test_predefined_folds_override_the_algorithm_for_1000_labels(tmp_path):
    folds = np.stack([np.arange(1000) + offset for offset in range(3)])[:, ::-1]
    train = np.tile(np.arange(3), 400)
    arrays = {
        "train_images": np.zeros((1200, 2, 2, 1), np.uint8), "train_labels": train,
        "test_images": np.zeros((3, 2, 2, 1), np.uint8), "test_labels": np.arange(3),
        "fold_indices": folds,
    }
    save_prepared(tmp_path / "stl", "stl10", 3, arrays)
    dataset = load_prepared(tmp_path / "stl")
    split = make_split(dataset, 1000, seed=2)
    assert split["indices"] == list(range(2, 1002)) and "predefined fold 2" in split["source"]
    other = make_split(dataset, 30, seed=2)  # other sizes use the algorithm, with a uniform distribution
    assert other["class_histogram"] == [10, 10, 10]
