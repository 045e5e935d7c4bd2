"""MixUp and the interleaved passes of MixMatch and ReMixMatch, as the official ``libml/layers.py``
does them (google-research/fixmatch; docs/baselines_official.md §5, §7.5).

- :func:`mixup` is ``MixMode('xxy.yxy')`` / ``augment_pair``: the labeled batch and every unlabeled
  view are concatenated, one permutation is drawn over all of them, each image gets its own
  λ ~ Beta(β, β) and λ' = max(λ, 1 − λ), and images and (soft) labels are mixed as
  ``λ'·x + (1 − λ')·x[perm]``.
- :func:`interleave` is ``layers.interleave``: each of the nu + 1 batches is cut into nu + 1 groups
  (:func:`interleave_offsets`) and group i of batch 0 is swapped with group i of batch i. It is an
  involution, so the same call puts the logits back. Each interleaved batch goes through its own
  training-mode pass, and one of them alone updates BatchNorm's running statistics
  (:func:`interleaved_logits`).

Randomness comes from an explicit :class:`torch.Generator` (:class:`MixUpGenerator` keeps one on the
run's device and saves its state with the method's state), never from the global generators, so a
loss is a function of its inputs and a resumed run draws what an uninterrupted one would.
The official code draws λ with NumPy (``np.random.beta``, cast to float32) and the permutation
with ``tf.random_shuffle``; the distributions are the same, the streams of course are not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .common import bn_frozen


class MixUpGenerator(nn.Module):
    """A :class:`torch.Generator` on ``device`` whose state is part of this module's ``state_dict``
    (``_extra_state``: the generator's state, a CPU byte tensor), so that it is checkpointed and
    restored with the method's state."""

    def __init__(self, device: torch.device | str, seed: int):
        super().__init__()
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"].cpu())


def sample_beta(n: int, beta: float, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` draws of Beta(β, β) on the generator's device: X / (X + Y) with X, Y ~ Gamma(β, 1) drawn
    from ``generator`` (``torch._standard_gamma``, the sampler ``torch.distributions.Gamma`` and
    ``Beta`` use, which takes a generator; ``torch.distributions`` itself draws from the global
    generator). Gamma in float64 (``_standard_gamma`` clamps its draws to the smallest positive
    normal number, so X + Y > 0), the ratio cast to ``dtype`` (the official code casts NumPy's
    float64 Beta draws to float32). X is drawn before Y."""
    concentration = torch.full((n,), float(beta), dtype=torch.float64, device=generator.device)
    x = torch._standard_gamma(concentration, generator=generator)
    y = torch._standard_gamma(concentration, generator=generator)
    return (x / (x + y)).to(dtype)


def mixup(images: Tensor, labels: Tensor, beta: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``MixMode.augment(x, l, beta)``: per-image λ ~ Beta(β, β) (:func:`sample_beta`), λ' = max(λ, 1 − λ),
    one permutation ``perm`` (``torch.randperm``, drawn after λ), and
    ``(x·λ' + x[perm]·(1 − λ'), l·λ' + l[perm]·(1 − λ'))``. ``images`` are (n, ...) and ``labels``
    (n, C) soft labels, both on the generator's device."""
    n = images.shape[0]
    mix = sample_beta(n, beta, generator, images.dtype)
    mix = torch.maximum(mix, 1 - mix)
    index = torch.randperm(n, generator=generator, device=generator.device)
    mix_images = mix.view(n, *([1] * (images.dim() - 1)))
    mix_labels = mix.to(labels.dtype).view(n, *([1] * (labels.dim() - 1)))
    mixed_images = images * mix_images + images[index] * (1 - mix_images)
    mixed_labels = labels * mix_labels + labels[index] * (1 - mix_labels)
    return mixed_images, mixed_labels


def interleave_offsets(batch: int, nu: int) -> list[int]:
    """``layers.interleave_offsets``: nu + 1 groups of ``batch // (nu + 1)``, the remainder one each
    to the last groups; the offsets from 0 to ``batch``."""
    groups = [batch // (nu + 1)] * (nu + 1)
    for x in range(batch - sum(groups)):
        groups[-x - 1] += 1
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + g)
    assert offsets[-1] == batch
    return offsets


def interleave(xy: Sequence[Tensor], batch: int) -> list[Tensor]:
    """``layers.interleave``: group i of ``xy[0]`` swapped with group i of ``xy[i]`` (i = 1..nu), each of
    the nu + 1 tensors having ``batch`` rows. An involution: applied twice it gives ``xy`` back."""
    nu = len(xy) - 1
    offsets = interleave_offsets(batch, nu)
    groups = [[v[offsets[p]:offsets[p + 1]] for p in range(nu + 1)] for v in xy]
    for i in range(1, nu + 1):
        groups[0][i], groups[i][i] = groups[i][i], groups[0][i]
    return [torch.cat(v, dim=0) for v in groups]


def interleaved_logits(forward: nn.Module, batches: Sequence[Tensor], batch: int, bn_update: int) -> list[Tensor]:
    """The logits of ``batches`` (labeled, then the unlabeled views, each ``batch`` rows) as the official
    code computes them: interleaved, one training-mode pass per interleaved batch, in order, where
    only batch ``bn_update`` (MixMatch: 0; ReMixMatch: the last, -1) updates BatchNorm's running
    statistics (the others normalise with their own batch statistics, :func:`~.common.bn_frozen`),
    then de-interleaved."""
    mixed = interleave(batches, batch)
    keep = bn_update % len(mixed)
    logits = []
    for index, images in enumerate(mixed):
        if index == keep:
            logits.append(forward(images))
        else:
            with bn_frozen(forward):
                logits.append(forward(images))
    return interleave(logits, batch)
