"""``speed.compile_augment`` on the CPU: the compiled dense ops equal the eager ones for every op and level.

Inductor compiles them here with contraction forced on (``-ffp-contract=fast``): its C++ code then
fuses a product and a sum into one FMA wherever it can, as Triton does by default on CUDA. The
formulas before issue 28 moved pixels by one level there (0.003 % to 0.013 % of the pixels of each
case of ``every_op_cases``, measured with torch 2.13 on this suite's CPU machine); why the current
ones cannot is in :mod:`fixmatch_bench.augment.tensor_ops`. The CUDA twin is
``tests/test_cuda.py::test_the_compiled_dense_ops_on_cuda_equal_the_cpu``.
"""

from __future__ import annotations

import functools

import torch
import torch._inductor.config

from augment_helpers import every_op_cases, largest_difference
from fixmatch_bench.augment import tensor_ops
from fixmatch_bench.augment.ctaugment import CTA_FILL
from fixmatch_bench.augment.primitives import CUTOUT_STEP, EVERY_OP, NUM_ARGS, Op
from fixmatch_bench.core.compiled import static_compile

STEPS = 3  # the longest case: RandAugment's two steps and its cutout


def _padded(ops: torch.Tensor, args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 0..K-1, then IDENTITY up to STEPS."""
    n, k = ops.shape
    identity = torch.full((n, STEPS - k), int(Op.IDENTITY), dtype=ops.dtype)
    return torch.cat([ops, identity], 1), torch.cat([args, torch.zeros(n, STEPS - k, NUM_ARGS, dtype=args.dtype)], 1)


def test_the_compiled_dense_ops_equal_the_eager_ones_for_every_op_and_level() -> None:
    """Every case in one batch, so that one graph compiles: the last step holds only cutouts (the strong
    views' final step, with its own kernel), the others any op. One fill for all (it enters no arithmetic)."""
    cases = every_op_cases(3, 32)
    padded = [_padded(case.ops, case.args) for case in cases]
    images = torch.cat([case.images for case in cases])
    ops, args = torch.cat([ops for ops, _ in padded]), torch.cat([args for _, args in padded])
    vocabulary = (EVERY_OP, EVERY_OP, CUTOUT_STEP)
    expected = tensor_ops.apply_steps(images, ops, args, CTA_FILL, vocabulary=vocabulary)
    with torch._inductor.config.patch({"cpp.enable_floating_point_contract_flag": "fast"}):
        compiled = static_compile(functools.partial(tensor_ops.apply_steps, dense=True), fullgraph=True)
        actual = compiled(images, ops, args, CTA_FILL, vocabulary=vocabulary)
    assert torch.equal(actual, expected), largest_difference(expected, actual)
