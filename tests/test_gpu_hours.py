"""The paper suite's GPU-hours projected from measured steps/s, by workload."""

import pytest

from conftest import REPO
from fixmatch_bench.tools.compose import compose_params
from fixmatch_bench.core.params import validate_params
from fixmatch_bench.core.runs import Run, all_runs
from fixmatch_bench.core.schema import SpeedOptions
from fixmatch_bench.report import gpu_hours
from fixmatch_bench.train.budget import workload


@pytest.fixture(scope="module")
def paper():
    return validate_params(compose_params(["suite=paper"], REPO / "conf"))


def test_runs_share_a_workload_when_their_step_costs_the_same(paper):
    def of(dataset, labels, method):
        return workload(paper, Run(dataset, labels, method, 1))

    assert of("cifar10", 40, "fixmatch_ra") == of("svhn", 1000, "fixmatch_ra") == of("cifar10", 4000, "fixmatch_ra")
    assert of("cifar10", 40, "fixmatch_cta_da") == of("cifar10", 40, "fixmatch_cta") != of("cifar10", 40, "fixmatch_ra")
    assert of("cifar100", 400, "fixmatch_ra") != of("cifar10", 40, "fixmatch_ra")  # WRN-28-8
    assert "supervised" in of("cifar10", 40, "supervised") and "mu=" not in of("cifar10", 40, "supervised")
    assert "3x96x96" in of("stl10", 1000, "fixmatch_ra") and "B=64, mu=7" in of("stl10", 1000, "fixmatch_ra")


def _measured(options: SpeedOptions, steps_per_s: float, label: str) -> dict:
    return {"label": label, "steps_per_s": steps_per_s, "speed_options": options.model_dump()}


def test_each_run_is_projected_from_its_own_workloads_figures_only(paper):
    ra = workload(paper, Run("cifar10", 40, "fixmatch_ra", 1))
    ladder = [_measured(SpeedOptions(deterministic=True), 10.0, "fp32 eager, deterministic"),
              _measured(SpeedOptions(), 12.0, "+ nondeterministic kernels"),
              _measured(SpeedOptions(compile="step"), 40.0, "+ compile: step"),
              _measured(SpeedOptions(compile="step", weak_no_grad=True), 100.0, "weak_no_grad")]
    report = {"device_type": "cuda", "protocol_options": paper.speed.model_dump(),
              "results": [{"workload": ra, "ladder": ladder}]}
    costs = {cost.workload: cost for cost in gpu_hours.project(paper, all_runs(paper), report)}
    ra_runs = 6 * 5  # CIFAR-10 and SVHN at three label counts each, five folds
    assert costs[ra].runs == ra_runs and costs[ra].steps == ra_runs * 2**20
    assert costs[ra].hours("protocol") == pytest.approx(ra_runs * 2**20 / 10.0 / 3600)
    assert costs[ra].fastest.label == "+ compile: step"  # weak_no_grad changes the algorithm: not a candidate
    summary = gpu_hours.summary(list(costs.values()))
    assert sum(row["runs"] for row in summary["workloads"]) == len(all_runs(paper)) == 155
    assert summary["totals"]["fastest"] == {"hours": pytest.approx(ra_runs * 2**20 / 40.0 / 3600),
                                            "runs_not_measured": 155 - ra_runs}
    lines = "\n".join(gpu_hours.render(summary, "NVIDIA H100"))
    assert "not measured on this device" in lines and "plus 125 runs with no figure on this device" in lines


def test_a_cpu_report_projects_nothing(paper):
    ra = workload(paper, Run("cifar10", 40, "fixmatch_ra", 1))
    report = {"device_type": "cpu", "results": [{"workload": ra, "protocol": _measured(SpeedOptions(), 3.0, "cpu")}]}
    costs = gpu_hours.project(paper, all_runs(paper), report)
    assert all(cost.protocol is None and cost.fastest is None for cost in costs)
