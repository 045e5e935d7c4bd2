"""What a method is: its params, the views it draws, its loss, and optional hooks around a step.

A method is one class in one module (:mod:`.supervised`, :mod:`.fixmatch`, or a researcher's own,
named in conf as ``methods.<name>.impl``, :mod:`.registry`). The loop draws the views the method
declares, calls its :meth:`Method.loss` inside the shared update (SGD or Adam, EMA, BatchNorm,
checkpointing, evaluation, all of which name no method), then its :meth:`Method.after_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor, nn

from ..core.errors import fail
from ..core.schema import Block, Params

View = Literal["weak", "strong"]  # what an unlabeled view is: the weak flip-and-translate, or the strong policy
LossLogs = dict[str, Tensor]


@dataclass(frozen=True)
class Batch:
    """One step's images as float in [-1, 1]: the labeled batch and, for each view the method declares
    (:attr:`Method.views`, in that order), the unlabeled batch under that view.
    ``unlabeled_targets`` only measures pseudo-label accuracy (-1 = unknown)."""

    labeled: Tensor
    targets: Tensor
    unlabeled: tuple[Tensor, ...] = ()
    unlabeled_targets: Tensor | None = None


@dataclass(frozen=True)
class RunContext:
    """What a method may build its per-run state from."""

    num_classes: int
    class_distribution: Tensor  # the labeled split's class frequencies, on the run's device
    steps: int  # train.steps, what ramps are fractions of
    batch: int  # train.batch (the official schedules count images: step * batch)
    seed: int  # the run's seed (train.seed * 1000 + fold), for a method's own generators
    weak_no_grad: bool  # speed.weak_no_grad (ALGORITHM-CHANGING): the weak view in its own no_grad forward


class MethodParams(Block):
    """A method's params block, ``methods.<name>`` in conf: ``impl`` names the class, the rest are the
    fields of the class's own ``Params`` (defaults in conf only)."""

    impl: str
    # A method that trains on unlabeled data refuses train.uratio = 0 (and its own weight of the unlabeled
    # loss at 0), which would report supervised training under its name, unless this is true (an ablation).
    allow_no_unlabeled_loss: bool = False


class Method:
    """A training method. Subclasses set :attr:`Params` and override what they need.

    - :attr:`views`: the unlabeled views drawn per step, in order (``()``: labeled data only);
    - :meth:`uratio`: unlabeled images per labeled image in a step (default ``train.uratio``);
    - :attr:`strong`: the strong policy the ``"strong"`` views use (``randaugment``, ``ctaugment``);
    - :attr:`needs_teacher`: whether :meth:`loss` receives the EMA model's forward;
    - :attr:`heads`: extra dense heads on the network's pooled features, ``{name: outputs}``
      (``forward(x, head=name)``; trained, averaged and saved with the network);
    - :attr:`labeled_view`: the labeled batch's view (``"weak"``; ``"strong"``: the strong policy
      applied to the weak view, which CTAugment's probes start from);
    - :attr:`strong_cutout`: whether the strong policy ends with its cutout (``augment.strong_branch``);
    - :meth:`lr`, :meth:`weight_decay`: the optimizer's (default ``train.lr`` and the dataset's);
    - :meth:`build_state`: per-run state saved in checkpoints (a module of buffers), or None;
    - :meth:`loss`: the loss to minimise and detached tensors to log, a function of its arguments
      (compiled with the forward under ``speed.compile: step``);
    - :meth:`after_step`: state updates after the optimizer and EMA steps;
    - :meth:`check`: refusals of params that relate the method's block to the others.
    """

    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, name: str, params: MethodParams):
        self.name, self.params = name, params

    @property
    def views(self) -> tuple[View, ...]:
        return ()

    @property
    def strong(self) -> str:
        return "none"

    def uratio(self, params: Params) -> int:
        return params.train.uratio

    @property
    def needs_teacher(self) -> bool:
        return False

    @property
    def heads(self) -> dict[str, int]:
        return {}

    @property
    def labeled_view(self) -> View:
        return "weak"

    @property
    def strong_cutout(self) -> bool:
        return True

    def lr(self, params: Params) -> float:
        return params.train.lr

    def weight_decay(self, params: Params, dataset: str) -> float:
        return params.datasets[dataset].weight_decay

    def build_state(self, context: RunContext) -> nn.Module | None:
        return None

    def loss(self, forward: nn.Module, batch: Batch, teacher: nn.Module | None,
             state: nn.Module | None) -> tuple[Tensor, LossLogs]:
        raise NotImplementedError

    def after_step(self, state: nn.Module | None, logs: LossLogs) -> None:
        return None

    def check(self, params: Params) -> None:
        if self.views and self.uratio(params) == 0:
            self.refuse_no_unlabeled_loss("train.uratio", 0)

    def refuse_no_unlabeled_loss(self, key: str, value: float) -> None:
        """Refuse a setting that turns the unlabeled loss off, unless the method's block allows it."""
        if not self.params.allow_no_unlabeled_loss:
            fail(key, value, f"must be > 0 for {self.name}, which trains on unlabeled data; "
                             f"methods.{self.name}.allow_no_unlabeled_loss: true allows 0 (an ablation)")
