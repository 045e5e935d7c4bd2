"""The ``speed:`` params block: its options, their allowed values and which change results.

Kept free of torch so that reading and validating params (every stage's first
step) does not pay torch's import; what each option does is in :mod:`.speed`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

COMPILE = ("none", "model", "step")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPTIMIZER_IMPLS = ("for_loop", "foreach", "fused")
FLAGS = ("channels_last", "autocast_bf16", "compile_augment", "weak_no_grad", "tf32")  # the boolean options
# Options that change what a run computes beyond float rounding: part of a run's fingerprint.
CHANGES_RESULTS = ("autocast_bf16", "weak_no_grad", "tf32")


@dataclass(frozen=True)
class SpeedOptions:
    """The ``speed:`` params block; what each option does is in :mod:`.speed`."""

    channels_last: bool = False
    autocast_bf16: bool = False
    compile: str = "none"
    compile_mode: str = "default"
    compile_augment: bool = False
    optimizer_impl: str = "foreach"
    weak_no_grad: bool = False
    tf32: bool = False

    def __post_init__(self) -> None:
        for name in FLAGS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"speed.{name} = {value!r} is invalid (allowed: true, false)")
        for name, allowed in (("compile", COMPILE), ("compile_mode", COMPILE_MODES),
                              ("optimizer_impl", OPTIMIZER_IMPLS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"speed.{name} = {value!r} is invalid (allowed: {', '.join(allowed)})")

    @classmethod
    def from_params(cls, block: dict[str, Any] | None) -> SpeedOptions:
        """Options from the ``speed:`` block; a missing block means all defaults, unknown keys are refused."""
        block = dict(block or {})
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise ValueError(f"speed.{unknown[0]} is not a speed option (allowed: {', '.join(sorted(known))})")
        return cls(**block)

    def fingerprint(self) -> dict[str, Any]:
        """The options that change results beyond float rounding (resume only with the same ones)."""
        return {name: value for name, value in asdict(self).items() if name in CHANGES_RESULTS}

    @property
    def compiles(self) -> bool:
        """Whether anything goes through ``torch.compile``."""
        return self.compile != "none" or self.compile_augment

    @property
    def lr_as_tensor(self) -> bool:
        """Whether the optimizer's learning rate lives in a device tensor (a compiled SGD step reads it)."""
        return self.compile == "step"

    def optimizer_kwargs(self) -> dict[str, bool]:
        """Keyword arguments selecting the ``torch.optim.SGD`` implementation."""
        return {"for_loop": {"foreach": False}, "foreach": {"foreach": True},
                "fused": {"fused": True}}[self.optimizer_impl]
