"""Prepare stage: parse one dataset's raw files into the uniform prepared format.

    python pipeline/prepare.py --dataset cifar10 --params params.yaml --raw data/raw/cifar10 --out data/prepared/cifar10

Everything is parsed and validated before anything is written, and the output
directory is written atomically, so a failure never leaves a partial dataset.
Expected failures print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fixmatch_bench.core.params import load_params
from fixmatch_bench.data import digits
from fixmatch_bench.data.download import CATALOG_DIR, SourcesError, load_sources
from fixmatch_bench.data.prepared import save_prepared
from fixmatch_bench.data.raw_formats import RawFormatError, read_raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a dataset with a conf/sources/<dataset>.yaml, e.g. cifar10")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file with the sources block")
    parser.add_argument("--catalog", type=Path, help=f"directory of <dataset>.yaml source files (default: {CATALOG_DIR} beside --params)")
    parser.add_argument("--raw", type=Path, required=True, help="directory the download stage filled")
    parser.add_argument("--out", type=Path, required=True, help="prepared dataset directory to write")
    args = parser.parse_args(argv)
    try:
        names = [remote.name for remote in load_sources(args.params, args.catalog).files(args.dataset)]
        missing = [name for name in names if not (args.raw / name).is_file()]
        if missing:
            raise RawFormatError(f"{args.raw} lacks {missing}; run the download stage for {args.dataset} first")
        if args.dataset == "digits":  # its size and test split are ours, from the dataset table
            facts = load_params(args.params).datasets["digits"]
            num_classes = digits.NUM_CLASSES
            arrays = digits.digits_arrays(args.raw, facts.image_size, facts.test_size)
        else:
            raw = read_raw(args.dataset, args.raw)
            num_classes, arrays = raw.num_classes, raw.arrays
    except (SourcesError, RawFormatError, ValueError) as error:
        print(f"prepare {args.dataset}: error: {error}", file=sys.stderr)
        return 1
    sha256 = save_prepared(args.out, args.dataset, num_classes, arrays)
    shapes = ", ".join(f"{key} {list(value.shape)}" for key, value in arrays.items())
    print(f"{args.out}: {args.dataset}, {num_classes} classes, {shapes}, sha256 {sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
