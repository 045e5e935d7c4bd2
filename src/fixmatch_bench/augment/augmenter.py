"""FixMatch augmentations on uint8 [N, C, H, W] tensors: weak, RandAugment, CTAugment.

``make_augmenter`` is the entry point. Every random decision is drawn from the
``torch.Generator`` passed in (on the images' device), in a fixed order, and
resolved into explicit per-image primitive steps (:mod:`.primitives`) that
either backend applies:

- ``impl="batched"``: :mod:`.tensor_ops`, per-sample tensor ops on CPU or CUDA;
- ``impl="reference"``: :mod:`.pil_ops`, per-image PIL, CPU only.

Both draw identically, so with the same generator state they produce the
same augmentation; on CPU the two are bit-identical op by op
(``tests/test_augment_equivalence.py``). Every call draws for the whole batch
it is given and can augment only a ``share`` of it (a DDP rank's slice of the
global batch), so the images do not depend on the number of ranks. Fills, quirks and deviations from the
official code are documented in :mod:`.randaugment` and :mod:`.ctaugment`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import Tensor

from ..core.compiled import guarded, static_compile
from . import pil_ops, randaugment, tensor_ops
from .ctaugment import CTA_FILL, CTAugment, cutout_side
from .ctaugment import STEP_OPS as CTA_STEP_OPS
from .primitives import CUTOUT_STEP, Fill, Op, cutout_step
from .weak import check_translate, sample_weak

STRONG_KINDS = ("randaugment", "ctaugment", "none")
STRONG_BRANCHES = ("full", "no_cutout", "only_cutout")
ALL = slice(None)  # the default share: the whole batch
IMPLS = ("batched", "reference")


class Augmenter:
    """Weak and strong views for one configuration; see :func:`make_augmenter`."""

    def __init__(self, strong: str, impl: str, flip: bool, translate: int, cutout: int) -> None:
        self.strong_kind = strong
        self.impl = impl
        self.flip = flip
        self.translate = translate
        self.cutout = cutout
        backend = tensor_ops if impl == "batched" else pil_ops
        self._apply_steps: Callable[..., Tensor] = backend.apply_steps
        self._flip_shift: Callable[..., Tensor] = backend.flip_shift

    def dense(self) -> Augmenter:
        """Apply the ops in their dense form (what CUDA runs) on any device, eagerly: what
        :mod:`fixmatch_bench.tools.operator_calls` counts on CPU."""
        if self.impl != "batched":
            raise ValueError(f"dense() needs impl='batched', this augmenter is impl={self.impl!r}")
        self._apply_steps = functools.partial(tensor_ops.apply_steps, dense=True)
        return self

    def compile(self) -> Augmenter:
        """Apply the ops through ``torch.compile`` in their dense form (``speed.compile_augment``).

        The dense form (:mod:`.dense_ops`) runs each family of ops on the whole batch,
        in one graph per batch shape and step vocabulary (``fullgraph``: a graph break is
        an error, not a silent slowdown) with no host synchronisation. The draws stay
        eager. No CUDA graphs: the caller keeps views (the labeled one, for CTAugment's
        probes) across calls.
        """
        if self.impl != "batched":
            raise ValueError(f"compile() needs impl='batched', this augmenter is impl={self.impl!r}")
        option = "speed.compile_augment=true"
        self._apply_steps = guarded(static_compile(functools.partial(tensor_ops.apply_steps, dense=True),
                                                   fullgraph=True), option)
        self._flip_shift = guarded(static_compile(tensor_ops.flip_shift, fullgraph=True), option)
        return self

    # ------------------------------------------------------------ plumbing

    def _check(self, images: Tensor, generator: torch.Generator) -> None:
        tensor_ops.check_images(images)
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if self.impl == "reference" and (images.device.type != "cpu" or generator.device.type != "cpu"):
            raise ValueError(
                f"impl='reference' needs CPU images and a CPU generator, got {images.device} and {generator.device}"
            )
        if generator.device.type != images.device.type:
            raise ValueError(f"generator must be on the images' device {images.device}, got {generator.device}")
        check_translate(self.translate, images.shape[2], images.shape[3])

    def _apply(self, images: Tensor, ops: Tensor, args: Tensor, fill: Fill,
               vocabulary: tuple[frozenset[Op], ...] | None = None) -> Tensor:
        return self._apply_steps(images, ops, args, fill, vocabulary=vocabulary)

    def _weak(self, images: Tensor, generator: torch.Generator, share: slice) -> Tensor:
        params = sample_weak(images.shape[0], self.flip, self.translate, generator)
        return self._flip_shift(images[share], params.flip[share], params.shift_y[share], params.shift_x[share])

    def _strong_steps(self, n: int, height: int, width: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Fill]:
        """The strong policy (after the weak view) as primitive steps, and its fill."""
        raise NotImplementedError

    def _strong_vocabulary(self) -> tuple[frozenset[Op], ...]:
        """The ops each step of :meth:`_strong_steps` may hold: the dense form runs only what they need."""
        raise NotImplementedError

    def _cutout_vocabulary(self) -> tuple[frozenset[Op], ...]:
        return (CUTOUT_STEP,) if self.cutout > 0 else ()

    # ------------------------------------------------------------ public API

    def weak(self, images: Tensor, generator: torch.Generator, share: slice = ALL) -> Tensor:
        """Weak view of ``images[share]``: flip (p = 0.5, if ``flip``) + reflect-pad shift up to ``translate`` px."""
        self._check(images, generator)
        return self._weak(images, generator, share)

    def strong(self, images: Tensor, generator: torch.Generator, share: slice = ALL) -> Tensor:
        """Strong view of ``images[share]``: an independent weak view, then the policy, then cutout."""
        self._check(images, generator)
        weak = self._weak(images, generator, share)
        return self._policy(weak, images.shape, generator, share)

    def policy(self, weak: Tensor, generator: torch.Generator, share: slice = ALL) -> Tensor:
        """The strong policy (then cutout) on ``weak[share]``, images that already are a weak view."""
        self._check(weak, generator)
        return self._policy(weak[share], weak.shape, generator, share)

    def _policy(self, weak_share: Tensor, shape: torch.Size, generator: torch.Generator, share: slice) -> Tensor:
        n, _, height, width = shape
        ops, args, fill = self._strong_steps(n, height, width, generator)
        return self._apply(weak_share, ops[share], args[share], fill, self._strong_vocabulary())

    def probe(self, images: Tensor, generator: torch.Generator, share: slice = ALL) -> tuple[Tensor, Tensor]:
        """CTAugment only; raises RuntimeError for the other kinds."""
        raise RuntimeError(f"probe() is only defined for strong='ctaugment', this augmenter is {self.strong_kind!r}")

    def update(self, policies: Tensor, p_true: Tensor) -> None:
        """CTAugment only; raises RuntimeError for the other kinds."""
        raise RuntimeError(f"update() is only defined for strong='ctaugment', this augmenter is {self.strong_kind!r}")

    def state_dict(self) -> dict[str, Any]:
        """Stateless kinds: an empty dict."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stateless kinds accept only an empty dict."""
        if state:
            raise ValueError(f"strong={self.strong_kind!r} is stateless; expected an empty state, got keys {sorted(state)}")


class NoStrongAugmenter(Augmenter):
    """``strong="none"``: the strong view is an independent weak view (+ cutout if > 0, filled with ``fill``)."""

    def __init__(self, *args: Any, fill: Fill = randaugment.RA_FILL) -> None:
        super().__init__(*args)
        self.fill = fill

    def _strong_steps(self, n: int, height: int, width: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Fill]:
        device = generator.device
        if self.cutout > 0:
            ops, args = cutout_step(n, height, width, self.cutout, generator)
        else:
            ops = torch.zeros((n, 0), dtype=torch.int64, device=device)
            args = torch.zeros((n, 0, 3), dtype=torch.float64, device=device)
        return ops, args, self.fill

    def _strong_vocabulary(self) -> tuple[frozenset[Op], ...]:
        return self._cutout_vocabulary()


class RandAugmenter(Augmenter):
    """``strong="randaugment"``: the official ``rac`` policy (:mod:`.randaugment`)."""

    def __init__(self, *args: Any, translate_scale: float) -> None:
        super().__init__(*args)
        self.translate_scale = translate_scale

    def _strong_steps(self, n: int, height: int, width: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Fill]:
        ops, args = randaugment.sample_steps(n, height, width, self.cutout, generator, self.translate_scale)
        return ops, args, randaugment.RA_FILL

    def _strong_vocabulary(self) -> tuple[frozenset[Op], ...]:
        return (randaugment.STEP_OPS,) * randaugment.NUM_LAYERS + self._cutout_vocabulary()


class CTAugmenter(Augmenter):
    """``strong="ctaugment"``: :class:`.ctaugment.CTAugment` (stateful: rates)."""

    def __init__(self, *args: Any, cta: CTAugment) -> None:
        super().__init__(*args)
        self.cta = cta

    def _cutout_side(self, height: int, width: int) -> int:
        official = cutout_side(height, width)
        if self.cutout not in (0, official):
            raise ValueError(
                f"cutout={self.cutout} disagrees with CTAugment's cutout for {height}x{width} images "
                f"(1 + int(min(H, W) * 0.499) = {official}); pass {official}, or 0 to disable it"
            )
        return self.cutout

    def _strong_steps(self, n: int, height: int, width: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Fill]:
        side = self._cutout_side(height, width)
        policy = self.cta.sample_policy(n, generator, probe=False)
        ops, args = self.cta.resolve(policy, height, width, generator)
        if side > 0:
            cut_ops, cut_args = cutout_step(n, height, width, side, generator)
            ops, args = torch.cat([ops, cut_ops], dim=1), torch.cat([args, cut_args], dim=1)
        return ops, args, CTA_FILL

    def _strong_vocabulary(self) -> tuple[frozenset[Op], ...]:
        return (CTA_STEP_OPS,) * self.cta.depth + self._cutout_vocabulary()

    def probe(self, images: Tensor, generator: torch.Generator, share: slice = ALL) -> tuple[Tensor, Tensor]:
        """One probe view per (already weak-augmented) image of ``images[share]``: uniform ops and
        levels, no cutout.

        Returns ``(probes uint8 [S, C, H, W], policies float64 [S, depth, 3])`` for the S images of the share.
        """
        self._check(images, generator)
        n, _, height, width = images.shape
        policy = self.cta.sample_policy(n, generator, probe=True)
        ops, args = self.cta.resolve(policy, height, width, generator)
        probes = self._apply(images[share], ops[share], args[share], CTA_FILL, (CTA_STEP_OPS,) * self.cta.depth)
        return probes, policy[share]

    def update(self, policies: Tensor, p_true: Tensor) -> None:
        """Update the rates from the probes' policies and true-class probabilities, in probe order.

        For DDP, all-gather ``policies`` and ``p_true`` and call this with the
        concatenation (rank order) on every rank.
        """
        self.cta.update(policies, p_true)

    def state_dict(self) -> dict[str, Any]:
        """``{"rates": float64 [19, 2, 17]}`` (CPU copy)."""
        return self.cta.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cta.load_state_dict(state)


def make_augmenter(
    strong: str = "randaugment",
    impl: str = "batched",
    flip: bool = True,
    translate: int = 4,
    cutout: int = 16,
    *,
    cta_depth: int = 2,
    cta_decay: float = 0.99,
    cta_threshold: float = 0.8,
    cta_translate_fix: bool = False,
    ra_translate_scale: float = 1.0,
    strong_branch: str = "full",
) -> Augmenter:
    """Build the augmenter the training loop calls.

    strong: ``"randaugment"`` (official RA, cutout ``cutout`` px filled gray 128),
        ``"ctaugment"`` or ``"none"`` (strong = another weak view + cutout, if > 0).
    impl: ``"batched"`` (tensor ops, CPU or CUDA) or ``"reference"`` (PIL, CPU).
    flip / translate: weak view (flip p = 0.5; reflect shift up to ``translate`` px).
    cutout: strong-branch cutout side in px (0 disables it). For CTAugment it
        must be 0 or CTAugment's own ``1 + int(min(H, W) * 0.499)`` (16 at 32 px,
        48 at 96 px), checked on the first strong call.
    cta_depth / cta_decay / cta_threshold: CTAugment's official 2 / 0.99 / 0.8.
    cta_translate_fix: off by default (official: translate_x/y are no-ops);
        True translates by up to 30 % of the image instead.
    ra_translate_scale: 1.0 (official) translates RandAugment by ``level`` px
        (1..9) at any image size; a smaller factor scales that down for small
        images (the quick suite's 16-px digits use 0.5).
    strong_branch: the official cutout ablations. ``full`` (the protocol); ``no_cutout``: the
        policy without its cutout (ablation/ab_fixmatch_nocutout.py); ``only_cutout``: no policy,
        an independent weak view and the policy's cutout with its fill
        (ab_fixmatch_onlycutout.py), which is what ``strong="none"`` builds.
    """
    if strong not in STRONG_KINDS:
        raise ValueError(f"strong must be one of {STRONG_KINDS}, got {strong!r}")
    if strong_branch not in STRONG_BRANCHES:
        raise ValueError(f"strong_branch must be one of {STRONG_BRANCHES}, got {strong_branch!r}")
    if strong_branch == "no_cutout":
        cutout = 0
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(flip, bool):
        raise ValueError(f"flip must be a bool, got {flip!r}")
    if isinstance(translate, bool) or not isinstance(translate, int) or translate < 0:
        raise ValueError(f"translate must be an int >= 0, got {translate!r}")
    if isinstance(cutout, bool) or not isinstance(cutout, int) or cutout < 0:
        raise ValueError(f"cutout must be an int >= 0 (0 disables it), got {cutout!r}")
    if strong != "ctaugment" and (cta_depth, cta_decay, cta_threshold, cta_translate_fix) != (2, 0.99, 0.8, False):
        raise ValueError(f"cta_* options only apply to strong='ctaugment', got strong={strong!r}")
    if strong_branch == "only_cutout" and strong != "none":
        fill = CTA_FILL if strong == "ctaugment" else randaugment.RA_FILL
        return NoStrongAugmenter("none", impl, flip, translate, cutout, fill=fill)
    if strong == "ctaugment":
        cta = CTAugment(cta_depth, cta_decay, cta_threshold, cta_translate_fix)
        return CTAugmenter(strong, impl, flip, translate, cutout, cta=cta)
    if not isinstance(ra_translate_scale, (int, float)) or not 0 < ra_translate_scale <= 1 or (
            strong != "randaugment" and ra_translate_scale != 1.0):
        raise ValueError(f"ra_translate_scale must be in (0, 1] and only applies to strong='randaugment', "
                         f"got {ra_translate_scale!r} with strong={strong!r}")
    if strong == "randaugment":
        return RandAugmenter(strong, impl, flip, translate, cutout, translate_scale=float(ra_translate_scale))
    return NoStrongAugmenter(strong, impl, flip, translate, cutout)


__all__ = ["Augmenter", "CTAugmenter", "make_augmenter"]
