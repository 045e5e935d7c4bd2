"""DVC stages `train@<cell>-<method>-<fold>` and `supervised@<cell>-<fold>`: train one run.

Resumes from the run's checkpoint (a persistent output) after an interruption;
SIGTERM/SIGINT write a checkpoint and exit with 128 + the signal number.
The same script trains one run on N devices under
``torchrun --nproc_per_node N pipeline/train.py ...`` (docs/multi_gpu.md).
"""

import argparse
import json
import sys
from pathlib import Path

from fixmatch_bench.config import Run, load_params, parse_cell
from fixmatch_bench.distributed import launch
from fixmatch_bench.stage import run_stage
from fixmatch_bench.trainer import Interrupted, NonFiniteLoss, StopRequest, stop_on_signals, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cell", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    dataset, labels = parse_cell(args.cell, params["datasets"])
    if args.method not in params["methods"]:
        raise ValueError(f"invalid run: method {args.method!r} is not in params methods "
                         f"({', '.join(params['methods'])})")
    run = Run(dataset, labels, args.method, args.fold)
    with launch(params["train"]["device"]) as world, stop_on_signals(StopRequest()) as stop:
        try:
            metrics = train(params, run, args.prepared / dataset, args.splits / f"{run.cell}-{run.fold}.json",
                            args.out, stop=stop, world=world)
        except Interrupted as interrupted:
            print(f"error: {interrupted}", file=sys.stderr)
            return 128 + (interrupted.signum or 0)
    if not world.is_main:
        return 0
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{run.key}: error {metrics['error']:.2f} % (median of last {metrics['median_of_last']}), "
          f"{metrics['steps_per_s']:.1f} steps/s")
    return 0


if __name__ == "__main__":
    run_stage(main, expected=(NonFiniteLoss,))
