"""DVC stage `train@<cell>-<method>-<fold>[+<key>=<value>...]`: train one run of any method
(an ablation variant trains with its changes to params in place).

Writes results/<run>/ (metrics.json, curves/) and models/<run>.pt (the EMA model's weights). Resumes from the run's
checkpoint (outside the workspace, see checkpoints in params.yaml) after an
interruption; SIGTERM/SIGINT write a checkpoint and exit with 128 + the signal number.
The same script trains one run on N devices under
``torchrun --nproc_per_node N pipeline/train.py ...`` (docs/multi_gpu.md).
"""

import argparse
import sys
from pathlib import Path

from fixmatch_bench.core.params import load_params, parse_run, run_params
from fixmatch_bench.methods.registry import run_method
from fixmatch_bench.core.stage import end_with_dvc, refuse_training_if_switched_off, run_stage
from fixmatch_bench.train.budget import refuse_unaffordable
from fixmatch_bench.train.checkpoint import CheckpointError
from fixmatch_bench.train.distributed import launch
from fixmatch_bench.core.compiled import SpeedOptionFailed
from fixmatch_bench.train.trainer import (Interrupted, NonFiniteLoss, StopRequest, resolve_device, stop_on_signals,
                                          train)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    # Positional: under `torchrun ... pipeline/train.py`, torchrun's parser would take --run for its --run-path.
    parser.add_argument("run", help="<cell>-<method>-<fold>[+<key>=<value>...], e.g. digits_20-fixmatch_ra-1")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    suite_params = load_params(args.params)
    run = parse_run(args.run, suite_params)
    params = run_params(suite_params, run)
    run_method(params, run.method, where=f"run {run.key}" if run.variant else None)
    refuse_training_if_switched_off(run.key)
    end_with_dvc()
    with launch(params.train.device) as world, stop_on_signals(StopRequest()) as stop:
        refuse_unaffordable(params, run, world.place(resolve_device(params)), world.world_size)
        try:
            metrics = train(params, run, args.prepared / run.dataset, args.splits / f"{run.cell}-{run.fold}.json",
                            args.results / run.key, stop=stop, world=world, model_path=args.models / f"{run.key}.pt")
        except Interrupted as interrupted:
            print(f"error: {interrupted}", file=sys.stderr)
            return 128 + (interrupted.signum or 0)
    if not world.is_main:
        return 0
    print(f"{run.key}: error {metrics['error']:.2f} % (median of last {metrics['median_of_last']}), "
          f"{metrics['steps_per_s']:.1f} steps/s")
    return 0


if __name__ == "__main__":
    run_stage(main, expected=(NonFiniteLoss, CheckpointError, SpeedOptionFailed))
