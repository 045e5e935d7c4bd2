"""make_augmenter: determinism, backend agreement, argument validation."""

from __future__ import annotations

import functools

import pytest
import torch

from augment_helpers import make_images
from fixmatch_bench.augment import tensor_ops
from fixmatch_bench.augment.augmenter import make_augmenter
from fixmatch_bench.augment.ctaugment import cutout_side

SHAPES = [(1, 16), (3, 16), (1, 32), (3, 32), (3, 96)]


def views(kind: str, impl: str, images: torch.Tensor, seed: int, **options: object) -> tuple[torch.Tensor, ...]:
    augmenter = make_augmenter(kind, impl, **options)
    generator = torch.Generator().manual_seed(seed)
    return augmenter.weak(images, generator), augmenter.strong(images, generator)


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("kind", ["randaugment", "ctaugment", "none"])
def test_same_seed_same_views_and_both_backends_agree(kind: str, channels: int, size: int) -> None:
    images = make_images(16, channels, size)
    options = {"cutout": cutout_side(size, size)} if kind == "ctaugment" else {}
    first = views(kind, "batched", images, seed=7, **options)
    assert all(view.dtype == torch.uint8 and view.shape == images.shape for view in first)
    assert all(torch.equal(a, b) for a, b in zip(first, views(kind, "batched", images, seed=7, **options)))
    assert all(torch.equal(a, b) for a, b in zip(first, views(kind, "reference", images, seed=7, **options)))
    other = views(kind, "batched", images, seed=8, **options)
    assert not torch.equal(first[1], other[1])


@pytest.mark.parametrize("impl", ["batched", "reference"])
@pytest.mark.parametrize("kind", ["randaugment", "ctaugment", "none"])
def test_a_share_is_the_same_slice_of_the_whole_batch_and_draws_as_much(kind: str, impl: str) -> None:
    """What a DDP rank computes: its slice of what one process computes, the generator left in the same state."""
    images = make_images(12, 3, 32)
    share = slice(4, 8)
    outputs = {}
    for part in (slice(None), share):
        augmenter = make_augmenter(kind, impl, cutout=cutout_side(32, 32) if kind == "ctaugment" else 16)
        generator = torch.Generator().manual_seed(3)
        views = [augmenter.weak(images, generator, part), augmenter.strong(images, generator, part)]
        if kind == "ctaugment":
            views += augmenter.probe(images, generator, part)
        outputs[part.start] = views, generator.get_state()
    (whole, whole_state), (sliced, sliced_state) = outputs[None], outputs[4]
    assert all(torch.equal(full[share], part) for full, part in zip(whole, sliced))
    assert sliced[0].shape[0] == 4 and torch.equal(whole_state, sliced_state)


def test_strong_draws_its_own_weak_view() -> None:
    images = make_images(32, 3, 32)
    augmenter = make_augmenter("none", cutout=0)
    generator = torch.Generator().manual_seed(0)
    weak, strong = augmenter.weak(images, generator), augmenter.strong(images, generator)
    assert not torch.equal(weak, strong)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"strong": "autoaugment"}, "strong must be one of"),
        ({"impl": "numpy"}, "impl must be one of"),
        ({"flip": 1}, "flip must be a bool"),
        ({"translate": -1}, "translate must be an int >= 0"),
        ({"cutout": 2.5}, "cutout must be an int >= 0"),
    ],
)
def test_bad_arguments_name_the_argument(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_augmenter(**options)


def test_bad_images_and_generators_are_rejected() -> None:
    augmenter = make_augmenter()
    with pytest.raises(ValueError, match="images must be uint8"):
        augmenter.weak(torch.zeros(2, 3, 32, 32), torch.Generator())
    with pytest.raises(ValueError, match="C in \\(1, 3\\)"):
        augmenter.weak(torch.zeros(2, 4, 32, 32, dtype=torch.uint8), torch.Generator())
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        augmenter.weak(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 0)


def test_stateless_kinds_reject_probe_and_update() -> None:
    augmenter = make_augmenter("randaugment")
    with pytest.raises(RuntimeError, match="only defined for strong='ctaugment'"):
        augmenter.probe(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.Generator())
    with pytest.raises(RuntimeError, match="only defined for strong='ctaugment'"):
        augmenter.update(torch.zeros(1, 2), torch.zeros(1))
    assert augmenter.state_dict() == {}
    augmenter.load_state_dict({})
    with pytest.raises(ValueError, match="stateless"):
        augmenter.load_state_dict({"rates": torch.ones(3)})


@pytest.mark.parametrize("kind", ["randaugment", "ctaugment"])
def test_the_dense_ops_trace_into_one_graph(kind: str) -> None:
    """What ``speed.compile_augment`` relies on: every op of either policy traces with fullgraph (no
    graph break, so no host synchronisation), and the traced graph computes the same images."""
    images = make_images(8, 3, 32)
    generator = torch.Generator().manual_seed(5)
    augmenter = make_augmenter(kind, cutout=cutout_side(32, 32) if kind == "ctaugment" else 16)
    ops, args, fill = augmenter._strong_steps(8, 32, 32, generator)
    traced = torch.compile(functools.partial(tensor_ops.apply_steps, dense=True), fullgraph=True, backend="eager")
    assert torch.equal(traced(images, ops, args, fill), tensor_ops.apply_steps(images, ops, args, fill))


def test_only_the_batched_ops_compile() -> None:
    """The compiled views are compared with the eager ones pixel for pixel in a whole training run
    (test_speed.py: test_compiled_augmentation_gives_the_same_run_bit_for_bit; measured on CPU: also
    identical for RandAugment and CTAugment on 448 32-px colour images, 3 draws each)."""
    with pytest.raises(ValueError, match="compile\\(\\) needs impl='batched'"):
        make_augmenter("randaugment", "reference").compile()
