"""DVC stage `check`: the verdict on the suite's table against its reference (check.reference).

published (the paper suites): every cell against the published number, within
max(check.std_factor x published std, check.floor). baseline (the quick suite): every
cell against the committed baseline reports/baseline/<suite>.json, within the cell's
tolerance derived from the measured spread (written only by `make baseline`). none:
every cell is unchecked. Unless check.max_ratio_to_supervised is null, each
semi-supervised method at the smallest label count must also reach at most that
fraction of the supervised-only error.
Cells with fewer finished folds than the params ask for are incomplete, not passed, and so
are the baseline's cells that the params do not run at all.

The stage records the verdict (reports/check.txt, and reports/check.json as DVC
metrics: a column in `dvc exp show`) and succeeds either way, so that a regressed
experiment is kept as a result. `--strict` (what `make quick` and CI run after
`dvc repro`) exits 1 when a cell failed or is incomplete.
"""

import argparse
import json
from pathlib import Path

from fixmatch_bench.core.params import load_params
from fixmatch_bench.core.runs import expected_runs
from fixmatch_bench.core.stage import run_stage
from fixmatch_bench.report.cells import aggregate_cells, collect_runs
from fixmatch_bench.report.check import (
    Tolerance,
    baseline_references,
    check_against_reference,
    check_cells_not_run,
    check_ratio_to_supervised,
    load_baseline,
    paper_references,
    report,
)
from fixmatch_bench.report.published import load_published


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--published", type=Path, default=Path("reports/published.yaml"))
    parser.add_argument("--baselines", type=Path, default=Path("reports/baseline"))
    parser.add_argument("--out", type=Path, default=Path("reports/check.txt"))
    parser.add_argument("--metrics", type=Path, default=Path("reports/check.json"))
    parser.add_argument("--strict", action="store_true", help="exit 1 unless every cell passed")
    args = parser.parse_args()
    params = load_params(args.params)
    check = params.check
    cells = aggregate_cells(collect_runs(expected_runs(params), args.results))
    tolerance = Tolerance(check.std_factor, check.floor)
    if check.reference == "published":
        references = paper_references(load_published(args.published))
    elif check.reference == "baseline":
        baseline = args.baselines / f"{params.suite_name}.json"
        if not baseline.exists():
            raise FileNotFoundError(f"no baseline {baseline} for suite {params.suite_name!r}; "
                                    "create it with `make baseline` (after `dvc repro` has prepared the data)")
        references = baseline_references(load_baseline(baseline))
    else:
        references = {}
    results = check_against_reference(cells, references, tolerance)
    if check.reference == "baseline":
        results += check_cells_not_run(cells, references, tolerance, params.folds)
    if check.max_ratio_to_supervised is not None:
        results += check_ratio_to_supervised(cells, check.max_ratio_to_supervised, params.baseline)
    text, code = report(results)
    args.out.write_text(text + "\n")
    counts = {status: sum(result.status == status for result in results)
              for status in ("pass", "fail", "incomplete", "unchecked")}
    args.metrics.write_text(json.dumps({"check": counts}, indent=2) + "\n")
    print(text)
    return code if args.strict else 0


if __name__ == "__main__":
    run_stage(main)
