"""Everything a run's updates change, in one object: what a checkpoint saves and restores.

:func:`build_state` builds it from params (seeded per run and fold); ``state_dict()`` /
``load_state_dict()`` cover the model, the EMA, the optimizer, CTAugment's rates, the
method's own state (FixMatch + DA: the distribution-alignment buffer), the index streams and every random generator, so a
resumed run draws and computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.runs import Run
from ..core.schema import Params
from ..augment.augmenter import Augmenter, make_augmenter
from ..methods.base import Method, RunContext
from .distributed import World
from .ema import ModelEMA
from .optim import build_optimizer
from .run_data import RunData
from .sampling import IndexStream
from .speed import StepFunctions, fast_forward, prepare_model, set_determinism, set_float32_precision
from ..models.wide_resnet import WideResNet


@dataclass
class TrainState:
    """The training state of one run after ``step`` updates, and the forwards that run on it."""

    model: nn.Module
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    augmenter: Augmenter
    method: Method
    method_state: nn.Module | None  # the method's own state (FixMatch + DA: the alignment buffer)
    sample_generator: torch.Generator  # the index streams' draws
    augment_generator: torch.Generator  # every augmentation draw
    labeled_stream: IndexStream
    unlabeled_stream: IndexStream
    # How updates run, rebuilt from params and never saved:
    forward: nn.Module  # the training forward (DDP, memory format, autocast, compilation)
    ema_forward: nn.Module  # the EMA model's forward: evaluation and CTAugment probes
    functions: StepFunctions
    step: int = 0

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "augmenter": self.augmenter.state_dict(),
            "method": self.method_state.state_dict() if self.method_state is not None else None,
            "generators": {"sample": self.sample_generator.get_state(), "augment": self.augment_generator.get_state()},
            "streams": {"labeled": self.labeled_stream.state_dict(), "unlabeled": self.unlabeled_stream.state_dict()},
            "rng": _global_rng_states(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.augmenter.load_state_dict(state["augmenter"])
        if self.method_state is not None:
            self.method_state.load_state_dict(state["method"])
        self.sample_generator.set_state(state["generators"]["sample"])
        self.augment_generator.set_state(state["generators"]["augment"])
        self.labeled_stream.load_state_dict(state["streams"]["labeled"])
        self.unlabeled_stream.load_state_dict(state["streams"]["unlabeled"])
        _set_global_rng_states(state["rng"])


def build_state(params: Params, run: Run, method: Method, data: RunData, device: torch.device,
                world: World) -> TrainState:
    """A run's state at step 0: seeded with ``train.seed * 1000 + fold``, built on ``device``."""
    train, facts, speed = params.train, params.datasets[run.dataset], params.speed
    seed = train.seed * 1000 + run.fold
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    set_float32_precision(speed)
    set_determinism(speed)
    if speed.compiles:
        torch.compiler.reset()  # compile afresh: the same graphs whether this process trained other runs or not
    model = WideResNet(num_classes=facts.num_classes, in_channels=facts.channels, heads=method.heads,
                       **facts.network.kwargs()).to(device)
    prepare_model(model, speed)
    ema = ModelEMA(model, train.ema)
    optimizer = build_optimizer(model, train.optimizer, method.lr(params), method.weight_decay(params, run.dataset),
                                momentum=train.momentum,
                                nesterov=train.nesterov, beta1=train.adam_beta1, beta2=train.adam_beta2,
                                **speed.optimizer_kwargs())
    augmenter = _augmenter(params, run, method)
    if speed.compile_augment:
        augmenter.compile()
    sample_generator = torch.Generator(device=device).manual_seed(seed)
    return TrainState(
        model=model, ema=ema, optimizer=optimizer, augmenter=augmenter,
        method=method,
        method_state=method.build_state(RunContext(facts.num_classes, data.class_distribution, train.steps,
                                                   train.batch, seed + 2, speed.weak_no_grad)),
        sample_generator=sample_generator,
        augment_generator=torch.Generator(device=device).manual_seed(seed + 1),
        labeled_stream=IndexStream(len(data.labeled_targets), train.batch, sample_generator),
        unlabeled_stream=IndexStream(len(data.unlabeled_targets), train.batch * method.uratio(params), sample_generator),
        # EMA, probes and checkpoints use the plain modules; training goes through DDP when distributed.
        forward=fast_forward(world.wrap(model), speed, training=True),
        ema_forward=fast_forward(ema.module, speed),
        functions=StepFunctions.build(method.loss, optimizer, ema.update, speed),
    )


def _augmenter(params: Params, run: Run, method: Method) -> Augmenter:
    """The run's weak and strong views, with ``augment.strong_branch`` (the official cutout ablations)."""
    facts = params.datasets[run.dataset]
    options = ({"cta_translate_fix": params.augment.cta_translate_fix} if method.strong == "ctaugment" else
               {"ra_translate_scale": facts.ra_translate_scale} if method.strong == "randaugment" else {})
    return make_augmenter(strong=method.strong, impl=params.augment.impl, flip=facts.flip, translate=facts.translate,
                          cutout=facts.cta_cutout if method.strong == "ctaugment" else facts.ra_cutout,
                          strong_branch=_strong_branch(params, method), **options)


def _strong_branch(params: Params, method: Method) -> str:
    """``augment.strong_branch`` for a method that draws unlabeled views, without the cutout where the
    method's policy has none (ReMixMatch's CTAugment pool)."""
    if not method.views and method.labeled_view == "weak":
        return "full"
    if not method.strong_cutout and params.augment.strong_branch == "full":
        return "no_cutout"
    return params.augment.strong_branch


def _global_rng_states() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].copy()), "pos": int(numpy_state[2])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_global_rng_states(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy(), state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    # Each visible device's own state, however many were visible when it was saved (a run resumes with
    # another GPU count; training draws from its own generators, not from these).
    for index, device_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
        torch.cuda.set_rng_state(device_state, index)
