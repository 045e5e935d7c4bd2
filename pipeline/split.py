"""DVC stage `split@<cell>-<fold>`: draw one labeled split with the official algorithm."""

import argparse
from pathlib import Path

from fixmatch_bench.core.params import load_params
from fixmatch_bench.core.runs import parse_cell
from fixmatch_bench.core.stage import run_stage
from fixmatch_bench.data.prepared import load_prepared
from fixmatch_bench.data.splits import make_split, write_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True)
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    dataset_name, labels = parse_cell(args.cell, params.datasets)
    dataset = load_prepared(args.prepared / dataset_name)
    facts = params.datasets[dataset_name]
    unlabeled = 0 if dataset.unlabeled_images is None else len(dataset.unlabeled_images)
    if (len(dataset.train_labels), unlabeled) != (facts.train_size, facts.unlabeled_size):
        raise ValueError(f"prepared {dataset_name} has {len(dataset.train_labels)} training and {unlabeled} extra "
                         f"unlabeled images, but datasets.{dataset_name} has train_size {facts.train_size} and "
                         f"unlabeled_size {facts.unlabeled_size}")
    split = make_split(dataset, labels, args.fold)
    write_split(split, args.out)
    print(f"split {args.cell} fold {args.fold}: {split['source']}, per class {split['class_histogram']}")


if __name__ == "__main__":
    run_stage(main)
