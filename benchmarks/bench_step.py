"""End-to-end FixMatch step throughput: the peers' pipeline (a) vs this suite's (b).

Run: ``uv run pytest benchmarks/bench_step.py --benchmark-only``. On CUDA it runs the
full suite (WRN-28-2 RandAugment/CTAugment with the speed-option ladder, WRN-28-8,
WRN-37-2 at 96 px); on a CPU-only machine the reduced configuration (seconds, not a
GPU figure). The figures (steps/s of each pipeline, their ratio, the ms/step breakdown
of (b), the ladder's steps/s) land in ``extra_info``.
"""

from fixmatch_bench.bench import render_markdown, run_benchmark


def test_fixmatch_step_throughput_peers_vs_suite(benchmark):
    report = benchmark.pedantic(run_benchmark, rounds=1, iterations=1)
    benchmark.extra_info.update({"device": report["device"], "reduced": report["reduced"]})
    print(render_markdown(report))
    for row in report["results"]:
        assert "error" not in row["suite"], row["suite"]
        figures = {"suite_steps_per_s": row["suite"]["steps_per_s"], **row["suite"]["breakdown_ms"]}
        if "peers" in row:
            figures.update(peers_steps_per_s=row["peers"]["steps_per_s"], ratio=row["ratio"])
        for rung in row.get("ladder", []):
            figures[f"ladder: {rung['label']}"] = rung.get("steps_per_s", rung.get("error"))
        benchmark.extra_info[row["config"]] = figures
        assert row["suite"]["steps_per_s"] > 0 and all(value > 0 for value in row["suite"]["breakdown_ms"].values())
