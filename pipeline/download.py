"""Download stage: fetch and verify one dataset's raw files.

    python pipeline/download.py --dataset cifar10 --params params.yaml --out data/raw/cifar10

URLs and checksums come from the ``sources`` block of the params file; the
``FIXMATCH_MIRROR`` environment variable overrides ``sources.mirror``. Expected
failures print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fixmatch_bench.data.download import (
    CATALOG_DIR,
    DownloadError,
    SourcesError,
    fetch_dataset,
    load_sources,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a dataset with a conf/sources/<dataset>.yaml, e.g. cifar10")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file with the sources block")
    parser.add_argument("--catalog", type=Path, help=f"directory of <dataset>.yaml source files (default: {CATALOG_DIR} beside --params)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the raw files")
    args = parser.parse_args(argv)
    try:
        paths = fetch_dataset(load_sources(args.params, args.catalog), args.dataset, args.out)
    except (DownloadError, SourcesError) as error:
        print(f"download {args.dataset}: error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"{path}: checksum ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
