"""``torch.compile`` for this suite: static shapes, and failures that name the speed option to turn off.

A compiler or CUDA-graph failure is never papered over by falling back to eager: it
stops the run with :class:`SpeedOptionFailed`, one line naming the option (the speed
options themselves are :mod:`fixmatch_bench.train.speed`; the augmentation's compiled
ops, :mod:`fixmatch_bench.augment`, use this too).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn
from torch._dynamo.exc import TorchDynamoException


class SpeedOptionFailed(RuntimeError):
    """A speed option failed on this machine's software stack; the message names the option to turn off."""


def _failure(option: str, error: BaseException) -> SpeedOptionFailed:
    cuda_graphs = "cudagraph" in str(error).lower()
    advice = ("set speed.compile_mode=default (no CUDA graphs) or speed.compile=none" if cuda_graphs else
              "set speed.compile_augment=false" if option.startswith("speed.compile_augment") else
              "set speed.compile=none")
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return SpeedOptionFailed(f"{option} failed on this machine ({type(error).__name__}: {first_line}); "
                             f"{advice} and re-run: the same computation, run uncompiled")


def _is_compiler_failure(error: BaseException) -> bool:
    return isinstance(error, TorchDynamoException) or (
        isinstance(error, RuntimeError) and "cudagraph" in str(error).lower())


def guarded(function: Callable, option: str) -> Callable:
    """``function`` (a compiled callable) raising :class:`SpeedOptionFailed` instead of a compiler or
    CUDA-graph error, so that the run stops with one line naming ``option``."""
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as error:
            if _is_compiler_failure(error):
                raise _failure(option, error) from error
            raise

    return call


class GuardedModule(nn.Module):
    """A compiled module (``torch.compile``'s wrapper) whose compiler failures name ``option``."""

    def __init__(self, compiled: nn.Module, option: str):
        super().__init__()
        self.compiled = compiled
        self.option = option
        self._call = guarded(compiled, option)
        self.train(compiled.training)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)


def static_compile(function: Callable, mode: str = "default", fullgraph: bool = False) -> Callable:
    """``torch.compile`` with static shapes: one graph per input shape, so the graphs a run uses do
    not depend on the order it met the shapes in (a resumed run computes like an uninterrupted one)."""
    return torch.compile(function, mode=mode, dynamic=False, fullgraph=fullgraph)
