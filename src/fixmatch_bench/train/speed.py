"""Speed options (the ``speed:`` params block): how a run is executed, not what it computes.

All are off by default except ``optimizer_impl: foreach``, which is
bit-identical to the for-loop SGD (checked on CPU in ``tests/test_speed.py``;
on CUDA it is PyTorch's own default). The others trade exactness for speed:

- ``optimizer_impl: fused``: one fused SGD kernel; same maths, different
  rounding (measured on CPU: ~5e-10 after a few steps).

- ``channels_last``: model weights and inputs in NHWC memory format (same
  maths, different conv kernels: differences at float rounding level).
- ``autocast_bf16``: the forward pass under ``torch.autocast`` in bfloat16;
  logits are cast back to float32, so the loss, softmax, threshold and
  gradients' accumulation in the parameters stay fp32.
- ``compile``: ``torch.compile`` with ``compile_mode``; numerics at float
  rounding level. ``model`` compiles the forward passes. ``step`` compiles the
  whole update: the forward together with the loss (AOTAutograd compiles its
  backward), the SGD step (with the learning rate held in a device tensor, so
  that the cosine schedule does not recompile it) and the EMA update; the
  evaluation and probe forwards are compiled as with ``model``. With
  ``compile_mode: reduce-overhead`` (or ``max-autotune``) on CUDA the forward
  and backward passes replay as CUDA graphs, each step marked as one iteration
  (:class:`StepFunctions`). What stays eager: augmentation (see
  ``compile_augment``), ``loss.backward()``'s call and the DDP buffer broadcast.
- ``compile_augment``: ``torch.compile`` (``fullgraph``, no CUDA graphs: the
  views are kept across calls) of the batched augmentation ops in their dense
  form (:mod:`.augment.dense_ops`: each family of ops run on the whole batch with
  per-sample parameters), one graph with no host synchronisation. Eager, that
  form issues a few hundred operator calls per training step, roughly one kernel
  launch each on a GPU (reports/operator_calls.md, counted with torch.profiler
  on CPU: 373 for RandAugment and 827 for CTAugment, against 2,191 and 3,581
  before issue 28); the compiled graph's kernel count is not measured here. The
  random draws stay eager (explicit generators). Bit-identical to the eager ops,
  also with FMA contraction forced on (checked on CPU:
  ``tests/test_augment_compiled.py``); meant for CUDA: on CPU the eager
  bucketed path stays the default (it runs each op on its own samples only).
- ``tf32``: on CUDA, allow TensorFloat-32 in cuDNN convolutions and in matmuls
  (operands rounded to a 10-bit mantissa; faster on Ampere and newer GPUs).
  Off by default, and then set off explicitly: PyTorch's own default lets cuDNN
  convolutions use TF32, where the official TensorFlow 1.x code ran float32
  (docs/protocol.md §10). Part of a run's fingerprint and recorded in its metrics.
- ``deterministic``: on CUDA, only deterministic kernels
  (``torch.use_deterministic_algorithms``, which raises at an op that has none,
  cuDNN's deterministic convolution algorithms, a fixed cuBLAS workspace): the
  reductions that otherwise use atomic adds (CTAugment's rate update,
  ``index_add_``; the histograms' ``scatter_add_`` are integer and exact either
  way) run in a fixed order, so a rerun, a resumed run and every DDP rank compute
  bit for bit the same. On for the paper suite. On the CPU every kernel used is
  deterministic already.
- ``weak_no_grad``: ALGORITHM-CHANGING. The weak view goes through the
  network in its own forward pass under ``no_grad`` instead of the one
  concatenated pass: BatchNorm normalises the weak images with their own batch
  statistics and updates its running statistics twice per step. Results made
  with it must be reported separately from the faithful ones.

The plain module stays the one the optimizer, the EMA and checkpoints use;
:func:`fast_forward` returns a module sharing its parameters that applies the
input format, autocast and compilation around it.

A compiler or CUDA-graph failure is never papered over by falling back to eager:
it stops the run with :class:`~fixmatch_bench.core.compiled.SpeedOptionFailed`, one line naming the
option to turn off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..core.compiled import GuardedModule, guarded, static_compile
from ..core.schema import SpeedOptions


class FastForward(nn.Module):
    """``module``'s forward with the input in the model's memory format and optional bf16 autocast.

    Returns float32 logits whatever the autocast, so everything downstream of
    the network runs in full precision.
    """

    def __init__(self, module: nn.Module, channels_last: bool, autocast_bf16: bool):
        super().__init__()
        self.module = module
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.autocast_bf16 = autocast_bf16
        self.train(module.training)  # mirror the wrapped module's mode (the EMA model stays in eval)

    def forward(self, x: Tensor, head: str | None = None) -> Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            logits = self.module(x) if head is None else self.module(x, head=head)
        return logits.float()


def set_float32_precision(options: SpeedOptions) -> None:
    """IEEE float32 (the default) or TF32 for CUDA matmuls and cuDNN convolutions, process-wide.

    Through the ``allow_tf32`` flags: PyTorch keeps every getter of its precision API readable
    after them, legacy and new (``fp32_precision``) alike. Setting the new API per backend
    instead leaves the legacy getters raising "a mix of the legacy and new APIs", among them
    ``torch.get_float32_matmul_precision()``, which Inductor's autotuning reads.
    """
    torch.backends.cuda.matmul.allow_tf32 = options.tf32
    torch.backends.cudnn.allow_tf32 = options.tf32


def set_determinism(options: SpeedOptions) -> None:
    """Deterministic kernels only (``speed.deterministic``), or PyTorch's defaults, process-wide."""
    if options.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any matmul
    torch.use_deterministic_algorithms(options.deterministic)
    torch.backends.cudnn.deterministic = options.deterministic
    torch.backends.cudnn.benchmark = False


def prepare_model(model: nn.Module, options: SpeedOptions) -> nn.Module:
    """Put ``model``'s weights in the memory format the options ask for (in place); call before
    building the EMA and the optimizer so their copies and states share the format."""
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def fast_forward(model: nn.Module, options: SpeedOptions, training: bool = False) -> nn.Module:
    """A module computing ``model``'s logits (float32) with the options applied; shares ``model``'s parameters.

    ``training``: the forward of the loss. Under ``compile: step`` it stays
    uncompiled here because the compiled loss (:class:`StepFunctions`) traces through it.
    """
    forward = FastForward(model, options.channels_last, options.autocast_bf16)
    if options.compile == "model" or (options.compile == "step" and not training):
        return GuardedModule(static_compile(forward, options.compile_mode), compile_option(options))
    return forward


def compile_option(options: SpeedOptions) -> str:
    """The ``speed.compile`` setting as a user writes it, with its mode where that is not the default."""
    mode = f" with speed.compile_mode={options.compile_mode}" if options.compile_mode != "default" else ""
    return f"speed.compile={options.compile}{mode}"


@dataclass(frozen=True)
class StepFunctions:
    """The pieces of one training update, compiled under ``compile: step``, plain otherwise.

    ``loss`` is the run's :meth:`~fixmatch_bench.methods.base.Method.loss`;
    ``optimizer_step()`` is ``optimizer.step()``; ``ema_update(model)`` is
    ``ema.update(model)``. The loop calls ``begin_step``, ``loss``, ``backward``,
    ``optimizer_step``, (the DDP buffer broadcast) and ``ema_update``, in that order.

    With CUDA graphs (``compile_mode`` reduce-overhead or max-autotune), ``begin_step`` marks
    the start of an iteration for PyTorch's CUDA-graph trees
    (``torch.compiler.cudagraph_mark_step_begin``), so that a step's graphs may reuse the
    previous step's memory, and only the forward and backward replay as graphs: the optimizer
    and EMA updates are compiled without them (their mode's no-CUDA-graph twin). They mutate
    the weights in place and read the gradients, the graph outputs most exposed to being
    overwritten by a later replay; fused by Inductor they are a handful of kernels anyway.
    """

    loss: Callable
    optimizer_step: Callable[[], Any]
    ema_update: Callable[[nn.Module], None]
    begin_step: Callable[[], None] = lambda: None

    @classmethod
    def build(cls, loss: Callable, optimizer: torch.optim.Optimizer, ema_update: Callable[[nn.Module], None],
              options: SpeedOptions) -> StepFunctions:
        if options.compile != "step":
            return cls(loss, optimizer.step, ema_update, _step_marker(options))
        option = compile_option(options)
        updates = WITHOUT_CUDA_GRAPHS.get(options.compile_mode, options.compile_mode)
        return cls(guarded(static_compile(loss, options.compile_mode), option),
                   guarded(static_compile(optimizer.step, updates), option),
                   guarded(static_compile(ema_update, updates), option), _step_marker(options))


# Each compile mode that replays CUDA graphs, and the same mode without them.
WITHOUT_CUDA_GRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def _step_marker(options: SpeedOptions) -> Callable[[], None]:
    """``torch.compiler.cudagraph_mark_step_begin`` where compiled pieces replay as CUDA graphs."""
    if options.compile != "none" and options.compile_mode in WITHOUT_CUDA_GRAPHS:
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None
