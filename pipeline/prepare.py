"""DVC stage `prepare@<dataset>`: parse a dataset into the uniform prepared format."""

import argparse
from pathlib import Path

from fixmatch_bench.config import load_params
from fixmatch_bench.digits import digits_arrays
from fixmatch_bench.prepared import save_prepared
from fixmatch_bench.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    facts = params["datasets"][args.dataset]
    arrays = digits_arrays(facts["image_size"], facts["test_size"])
    sha = save_prepared(args.out, args.dataset, facts["num_classes"], arrays)
    print(f"prepared {args.dataset}: {len(arrays['train_labels'])} train, {len(arrays['test_labels'])} test, sha256 {sha[:12]}")


if __name__ == "__main__":
    run_stage(main)
