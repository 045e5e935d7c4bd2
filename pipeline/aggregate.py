"""DVC stage `aggregate`: tables, plots and the summary metrics of the suite in params, and
reports/ablation/ (a table, one figure per axis) for its ablation runs.

The run list comes from the params (never from globbing results/), so a run
that did not finish shows as a missing fold instead of shrinking the average.
"""

import argparse
import json
from pathlib import Path

from fixmatch_bench.core.params import load_params
from fixmatch_bench.core.runs import expected_runs
from fixmatch_bench.core.stage import run_stage
from fixmatch_bench.report import plots, tables
from fixmatch_bench.report.ablation import write_suite_ablations
from fixmatch_bench.report.cells import aggregate_cells, collect_runs, run_records, summary
from fixmatch_bench.report.published import load_published


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--published", type=Path, default=Path("reports/published.yaml"))
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    params = load_params(args.params)
    expected = expected_runs(params)
    published = load_published(args.published)
    collected = collect_runs(expected, args.results)
    cells = aggregate_cells(collected)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(tables.render_markdown(cells, published))
    (out / "results.csv").write_text(tables.render_csv(cells, published))
    (out / "results.tex").write_text(tables.render_latex(cells, published))
    (out / "cost.md").write_text(tables.render_cost_markdown(collected))
    (out / "cost.csv").write_text(tables.render_cost_csv(collected))
    (out / "runs.json").write_text(json.dumps(run_records(expected, args.results), indent=2) + "\n")
    plots.plot_error_curves(plots.load_curves(expected, args.results, "eval/error"), published,
                            out / "error_curves.png")
    plots.plot_error_vs_labels(cells, published, out / "error_vs_labels.png")
    plots.plot_methods(cells, published, out / "methods.png")
    plots.plot_training_signals(plots.load_curves(expected, args.results, "train/mask_rate"),
                                plots.load_curves(expected, args.results, "train/pseudo_label_accuracy"),
                                published, out / "training_signals.png")
    write_suite_ablations(params, args.results, published, out / "ablation")
    (out / "summary.json").write_text(json.dumps(summary(cells), indent=2) + "\n")
    done = sum(result is not None for _, result in collected)
    print(f"aggregated {done}/{len(collected)} runs into {len(cells)} cells; see {out / 'results.md'}")


if __name__ == "__main__":
    run_stage(main)
