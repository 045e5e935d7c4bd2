"""ReMixMatch with CTAugment (official ``cta/cta_remixmatch.py``, whose loss is ``remixmatch_no_cta.py``
``ReMixMatch.model`` and ``guess_label``; docs/baselines_official.md §1, §7, §8, quirks §9 #9-13),
with the ``cta_remixmatch.py`` defaults ``redux=1st``, ``use_dm=True``, ``use_xe=True``.

Per step, B labeled images (each replaced by a CTAugment-augmented copy of its weak view:
``labeled_view = "strong"``, ``AugmentPoolCTA``) and B unlabeled images (``uratio`` 1:
``ClassifySemi.train`` batches B), each with 1 + K views: view 0 weak, views 1..K CTAugment without
the appended cutout (``strong_cutout = False``). Every pass is a training-mode pass; all but the
last interleaved one leave BatchNorm's running statistics alone (:func:`~.common.bn_frozen`):

1. Rotation (``w_rot > 0``, official L82-104): the first strong view cut into quarters by position,
   rows ``[0, B/4)`` unrotated (label 0), ``[B/4, B/2)`` rotated 180° (label 1), ``[B/2, 3B/4)``
   transposed then flipped vertically (label 2), ``[3B/4, B)`` transposed then flipped horizontally
   (label 3) (:func:`rotate_quarters`), through its own pass to the ``rotation`` head (4 outputs on
   the pooled features); ``loss_rot`` = its cross-entropy (mean), weight ``w_rot``, not ramped.
2. Guess (``guess_label``, redux ``1st``): the weak view's softmax q in its own pass (under
   no-grad: the official ``stop_gradient``); distribution alignment
   ``normalize(q · (1e-6 + p_data) / (1e-6 + p_model))`` with ``p_model`` as it was before this
   step's update and ``p_data`` the running one (both normalised on read, as ``PMovingAverage``
   and ``PData``), then sharpening ``normalize(q~ ** (1 / T))``.
3. Pre-mixup loss (``w_kl > 0``, official L116-122, "kl" though it is a cross-entropy): the soft
   cross-entropy of the guess against the un-mixed logits of the first strong view (own pass),
   weight ``w_kl · ramp``.
4. MixUp (``MixMode('xxy.yxy')``, :func:`.mixup.mixup`) over [labeled (one-hot), weak view, K
   strong views], every unlabeled view labeled with the guess, Beta(``beta``, ``beta``), one
   permutation, per-image λ' = max(λ, 1 − λ); the K + 2 mixed batches interleaved (nu = K + 1), one
   pass each, and only the LAST one updates the running statistics (``skip_ops``).
   ``loss_xe`` = soft cross-entropy on the mixed labeled batch (mean), ``loss_xeu`` = soft
   cross-entropy on all (K + 1)·B mixed unlabeled images (mean).

``loss = loss_xe + w_kl·ramp·loss_kl + w_match·ramp·loss_xeu + w_rot·loss_rot``, the ramp
``clip(step · B / (warmup_kimg · 1024), 0, 1)`` (the official step counts images). Weight decay
(coupled L2 on every kernel, the rotation head's included, quirk #12) and the EMA (which averages the
rotation head too) are the shared optimizer's and EMA's; ``lr``/``weight_decay`` are this block's
(the ``cta_remixmatch.py`` flag defaults 0.002 / 0.02, §8).

After the step (the official ``post_ops``): the ramp advances, ``p_model`` takes the batch mean of
the UN-aligned weak softmax (:meth:`.distribution_alignment.DistributionAlignment.update`, a FIFO of
128 batch means from 1/C), and ``p_data ← 0.999·p_data + 0.001·mean(onehot(labels))`` from uniform
(``PData``: ``DataSets.creator`` sets no ``p_labeled``).

Deviations from the official code (none changes the loss beyond float rounding):

- The MixUp λ and permutation come from the method state's own ``torch.Generator`` (saved with the
  checkpoint), not NumPy's global generator and ``tf.random_shuffle``: same distributions, other
  streams (as :mod:`.mixmatch`).
- ``p_model``'s FIFO is a ring buffer (``PMovingAverage`` shifts a concat): the same 128 entries,
  summed in another order. It is fed the mean of the B weak softmaxes, the official the mean of
  their (K + 1)-fold tiling: the same mean.
- Under DDP each rank cuts its own share of the first strong view into rotation quarters (the
  official cuts its B rows); ``p_model`` and ``p_data`` take the mean over all ranks' images.
- The rotation head is built and initialised by :class:`~..models.wide_resnet.WideResNet` (``heads``);
  the official ``classifier_rot`` is ``tf.layers.dense(embeds, 4,
  kernel_initializer=tf.glorot_normal_initializer())`` (truncated-normal Glorot, zero bias), which
  the network's ``tf_glorot_normal_`` reproduces; where the network initialises heads otherwise
  (glorot_uniform when this was written), that is a deviation of the initial weights.

Without an unlabeled batch (``uratio: 0``, an ablation) the loss is the labeled cross-entropy.
``speed.weak_no_grad`` changes nothing here: the guess pass always runs without gradient, which is
exact (its logits are used only under the official stop-gradient). ``speed.compile: step`` is
allowed: the compiled loss (through :func:`~.common.bn_frozen`'s momentum switch, the rotation head
and the generator's draws) gives the eager loss, gradients and running statistics (tested on CPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import fail
from ..core.schema import Count, NonNegative, Params, Positive, PositiveInt
from .base import Batch, LossLogs, Method, MethodParams, RunContext, View
from .common import Ramp, bn_frozen, sharpen
from .distribution_alignment import EPSILON, DistributionAlignment
from .mixup import MixUpGenerator, interleaved_logits, mixup
from .supervised import supervised_loss

ROTATIONS = 4  # the rotation head's outputs (classifier_rot: tf.layers.dense(embeds, 4))
P_DATA_DECAY = 0.999  # layers.PData.update's decay
P_MODEL_BUFFER = 128  # PMovingAverage's dbuf


class ReMixMatchParams(MethodParams):
    uratio: Count  # unlabeled images per labeled one: 1 (ClassifySemi.train batches B), or 0 (ablation)
    K: PositiveInt  # strong (CTAugment) views per unlabeled image (libml/augment.py --K; ReMixMatch runs: 8)
    temperature: Positive  # T of the guess's sharpening (0.5, a model default)
    beta: Positive  # MixUp's Beta(beta, beta) (--beta)
    w_kl: NonNegative  # weight of the pre-mixup cross-entropy on the first strong view (ramped)
    w_match: NonNegative  # weight of the mixed unlabeled cross-entropy (ramped)
    w_rot: NonNegative  # weight of the rotation loss (not ramped); 0: no rotation head
    warmup_kimg: Count  # w_kl's and w_match's linear ramp reaches 1 after warmup_kimg * 1024 images
    lr: Positive  # cta_remixmatch.py --lr (its optimizer: SGD, Nesterov, the shared cosine schedule)
    weight_decay: NonNegative  # cta_remixmatch.py --wd (coupled L2 on every kernel)


class ReMixMatchState(nn.Module):
    """A run's ReMixMatch state (all checkpointed): the ``w_kl``/``w_match`` ramp's step, the MixUp
    generator, and the distribution alignment's ``p_model`` FIFO and running ``p_data``."""

    def __init__(self, ramp_length: float, num_classes: int, device: torch.device, seed: int):
        super().__init__()
        self.ramp = Ramp(ramp_length, device)
        self.mixup = MixUpGenerator(device, seed)
        self.alignment = DistributionAlignment(num_classes, torch.full((num_classes,), 1.0 / num_classes,
                                                                       device=device), P_MODEL_BUFFER)

    @property
    def generator(self) -> torch.Generator:
        return self.mixup.generator

    def align(self, probs: Tensor) -> Tensor:
        """``guess_label``'s ``use_dm``: ``normalize(probs · (1e-6 + p_data()) / (1e-6 + p_model()))``, with
        ``p_data()`` and ``p_model()`` normalised on read as ``PData`` and ``PMovingAverage`` do
        (in ``probs``' dtype)."""
        p_data = self.alignment.p_data.to(probs.dtype)
        p_data = p_data / p_data.sum()
        p_model = self.alignment.history.to(probs.dtype).mean(0)
        p_model = p_model / p_model.sum()
        weighted = probs * ((EPSILON + p_data) / (EPSILON + p_model))
        return weighted / weighted.sum(1, keepdim=True)

    @torch.no_grad()
    def update_p_data(self, labels_mean: Tensor) -> None:
        """``PData.update``: ``p_data ← 0.999·p_data + 0.001·labels_mean``, ``labels_mean`` this rank's
        share's mean one-hot label (under DDP averaged over the ranks: the global mean, the shares
        being equal)."""
        p_data = self.alignment.p_data
        mean = labels_mean.to(p_data.dtype)
        if dist.is_available() and dist.is_initialized():
            mean = mean.clone()
            dist.all_reduce(mean)
            mean = mean / dist.get_world_size()
        p_data.mul_(P_DATA_DECAY).add_(mean * (1 - P_DATA_DECAY))


def rotate_quarters(images: Tensor) -> tuple[Tensor, Tensor]:
    """``random_rotate`` of ``remixmatch_no_cta.py`` on NCHW ``images`` (n rows, n = B): quarters by
    position, ``b4 = n // 4``, and their labels 0-3.

    The official code works on NHWC ``x`` (axis 1 = H, axis 2 = W), with ``xt = transpose(x[2 b4:], [0, 2, 1, 3])``
    (H and W swapped); in NCHW the same axes are dims 2 (H) and 3 (W):

    - ``x[:b4]`` → ``images[:b4]`` (label 0);
    - ``x[b4:2 b4, ::-1, ::-1]`` (H and W reversed, 180°) → ``images[b4:2 b4].flip(2, 3)`` (label 1);
    - ``xt[:b4, ::-1]`` (transposed, then H reversed) → ``images[2 b4:3 b4].transpose(2, 3).flip(2)`` (label 2);
    - ``xt[b4:, :, ::-1]`` (transposed, then W reversed) → ``images[3 b4:].transpose(2, 3).flip(3)`` (label 3).

    For n divisible by 4 (``check`` refuses other train.batch values) this is exactly the official
    cut; otherwise (a DDP share) the remainder rows join the last quarter."""
    n = images.shape[0]
    b4 = n // 4
    if b4 == 0:
        raise ValueError(f"the rotation loss needs at least 4 unlabeled images, got {n}")
    transposed = images[2 * b4:].transpose(2, 3)
    rotated = torch.cat([images[:b4], images[b4:2 * b4].flip(2, 3), transposed[:b4].flip(2), transposed[b4:].flip(3)])
    labels = (torch.arange(n, device=images.device) // b4).clamp_(max=ROTATIONS - 1)
    return rotated, labels


def guess_label(forward: nn.Module, weak: Tensor, state: ReMixMatchState, temperature: float) -> tuple[Tensor, Tensor]:
    """``guess_label`` (redux ``1st``, ``use_dm``): the weak view's softmax q in its own training-mode pass
    that leaves the running statistics alone, aligned (:meth:`ReMixMatchState.align`, the buffers as
    the previous steps left them) and sharpened with ``temperature``, under no-grad (the official
    ``stop_gradient``). Returns the guess and the UN-aligned q (what ``p_model`` is fed)."""
    with torch.no_grad(), bn_frozen(forward):
        weak_probs = forward(weak).softmax(1)
        return sharpen(state.align(weak_probs), temperature), weak_probs


def soft_cross_entropy(labels: Tensor, logits: Tensor) -> Tensor:
    """``mean(softmax_cross_entropy_with_logits_v2(labels, logits))``."""
    return -(labels * logits.log_softmax(1)).sum(1).mean()


class ReMixMatch(Method):
    Params = ReMixMatchParams
    params: ReMixMatchParams

    @property
    def views(self) -> tuple[View, ...]:
        return ("weak",) + ("strong",) * self.params.K

    @property
    def strong(self) -> str:
        return "ctaugment"

    def uratio(self, params: Params) -> int:
        return self.params.uratio

    @property
    def heads(self) -> dict[str, int]:
        return {"rotation": ROTATIONS} if self.params.w_rot > 0 else {}

    @property
    def labeled_view(self) -> View:
        return "strong"

    @property
    def strong_cutout(self) -> bool:
        return False

    def lr(self, params: Params) -> float:
        return self.params.lr

    def weight_decay(self, params: Params, dataset: str) -> float:
        return self.params.weight_decay

    def build_state(self, context: RunContext) -> ReMixMatchState:
        # the official ramp counts images: clip(step * B / (warmup_kimg << 10), 0, 1)
        return ReMixMatchState(self.params.warmup_kimg * 1024 / context.batch, context.num_classes,
                               context.class_distribution.device, context.seed)

    def loss(self, forward: nn.Module, batch: Batch, teacher: nn.Module | None,
             state: ReMixMatchState) -> tuple[Tensor, LossLogs]:
        if not batch.unlabeled:  # uratio 0, allowed by allow_no_unlabeled_loss: the labeled loss alone
            return supervised_loss(forward, batch)
        p = self.params
        weak, strong = batch.unlabeled[0], batch.unlabeled[1:]
        n = batch.labeled.shape[0]
        ramp = state.ramp()
        logs: LossLogs = {}
        loss_rot = loss_kl = None
        if p.w_rot > 0:  # the official order of the passes: rotation, weak, first strong, interleaved
            rotated, rotation_labels = rotate_quarters(strong[0])
            with bn_frozen(forward):
                loss_rot = F.cross_entropy(forward(rotated, head="rotation"), rotation_labels)
            logs["loss_rot"] = loss_rot.detach()
        guess, weak_probs = guess_label(forward, weak, state, p.temperature)
        if p.w_kl > 0:
            with bn_frozen(forward):
                loss_kl = soft_cross_entropy(guess, forward(strong[0]))
            logs["loss_kl"] = loss_kl.detach()
        labels_x = F.one_hot(batch.targets, guess.shape[1]).to(guess.dtype)
        unlabeled = (weak, *strong)
        images, labels = mixup(torch.cat([batch.labeled, *unlabeled]),
                               torch.cat([labels_x, *[guess] * len(unlabeled)]), p.beta, state.generator)
        logits = interleaved_logits(forward, images.split(n), n, bn_update=-1)
        loss_x = soft_cross_entropy(labels[:n], logits[0])
        loss_u = soft_cross_entropy(labels[n:], torch.cat(logits[1:]))
        loss = loss_x + p.w_match * ramp * loss_u
        if loss_kl is not None:
            loss = loss + p.w_kl * ramp * loss_kl
        if loss_rot is not None:
            loss = loss + p.w_rot * loss_rot
        logs.update(loss=loss.detach(), loss_x=loss_x.detach(), loss_u=loss_u.detach(),
                    weak_probs=weak_probs.detach(), labels_mean=labels_x.mean(0))
        if batch.unlabeled_targets is not None:  # how often the guess's argmax is the true class
            known = (batch.unlabeled_targets >= 0).float()
            logs["pseudo_label_correct"] = ((guess.argmax(1) == batch.unlabeled_targets).float() * known).sum()
            logs["pseudo_label_count"] = known.sum()
        return loss, logs

    def after_step(self, state: ReMixMatchState, logs: LossLogs) -> None:
        state.ramp.advance()
        if "weak_probs" in logs:  # not with uratio 0
            state.alignment.update(logs["weak_probs"])
            state.update_p_data(logs["labels_mean"])

    def check(self, params: Params) -> None:
        super().check(params)
        p, key = self.params, f"methods.{self.name}"
        if p.uratio > 1:
            fail(f"{key}.uratio", p.uratio,
                 "must be 1 (or 0, an ablation): the official interleave cuts the labeled batch and each "
                 "unlabeled view into the same groups, so they must have the same size")
        if p.w_match == 0:
            self.refuse_no_unlabeled_loss(f"{key}.w_match", 0.0)
        if p.w_rot > 0 and p.uratio > 0 and params.train.batch % 4:
            fail("train.batch", params.train.batch,
                 f"must be divisible by 4 for {self.name} with w_rot > 0: the rotation loss cuts the unlabeled "
                 f"batch into four quarters by position (or set methods.{self.name}.w_rot: 0)")
        if params.augment.strong_branch != "full":
            fail("augment.strong_branch", params.augment.strong_branch,
                 f"must be full for {self.name}: ReMixMatch's CTAugment pool (AugmentPoolCTA) defines its own "
                 f"strong branch, without the appended cutout; the cutout ablations are FixMatch's")
