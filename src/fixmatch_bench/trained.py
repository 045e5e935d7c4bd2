"""A trained run's EMA model outside the pipeline, for a notebook::

    from fixmatch_bench.trained import error_on_test_set, load_model
    model = load_model("cifar10_40-fixmatch_ra-1")      # models/<run>.pt, the network params.yaml gives it
    print(error_on_test_set(model, "cifar10"))           # % error on data/prepared/cifar10's test set

The weights are the EMA model's, saved on the CPU by the train stage; the test error
is computed as the trainer evaluates (the official preprocessing, eval mode).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .core.params import load_params, parse_run, run_params
from .data.prepared import load_prepared
from .methods.registry import run_method
from .train.evaluation import accuracy
from .models.wide_resnet import WideResNet


def load_model(run: str, models: str | Path = "models", params: str | Path = "params.yaml") -> nn.Module:
    """The EMA model of ``run`` (``<cell>-<method>-<fold>``) in eval mode, on the CPU."""
    suite = load_params(params)
    parsed = parse_run(run, suite)
    run_suite = run_params(suite, parsed)
    facts = run_suite.datasets[parsed.dataset]
    heads = run_method(run_suite, parsed.method).heads  # a method's extra heads (ReMixMatch's rotation)
    model = WideResNet(num_classes=facts.num_classes, in_channels=facts.channels, heads=heads, **facts.network.kwargs())
    model.load_state_dict(torch.load(Path(models) / f"{parsed.key}.pt", map_location="cpu", weights_only=True))
    return model.eval()


def error_on_test_set(model: nn.Module, dataset: str, prepared: str | Path = "data/prepared", batch: int = 1024) -> float:
    """The model's top-1 error (%) on the dataset's prepared test set."""
    data = load_prepared(Path(prepared) / dataset)
    images = torch.from_numpy(np.array(data.test_images)).permute(0, 3, 1, 2).contiguous()  # NHWC on disk
    labels = torch.from_numpy(np.array(data.test_labels))
    device = next(model.parameters()).device
    return 100.0 - float(accuracy(model, images.to(device), labels.to(device), batch))
