"""DVC stage `validate`: refuse a bad params.yaml before any other stage runs.

Every other stage is downstream of this one (the downloads depend on its output), so
a hand-edited params.yaml with a misspelled key or a value out of range stops
`dvc repro` with one line naming the key, before DVC deletes any stage's outputs.
The output's content does not depend on the params: a good edit re-runs this stage
(seconds) and then only the stages whose own params or inputs changed.
(`dvc exp run -S ...` validates earlier still, when it composes params.yaml.)
"""

import argparse
from pathlib import Path

from fixmatch_bench.core.params import load_params
from fixmatch_bench.core.stage import run_stage
from fixmatch_bench.methods.registry import check_methods

VALIDATED = "params.yaml passed pipeline/validate.py\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    check_methods(load_params(args.params))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(VALIDATED)


if __name__ == "__main__":
    run_stage(main)
