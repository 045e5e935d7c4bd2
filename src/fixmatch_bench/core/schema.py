"""The schema of params.yaml: one typed model per block, validated once, read as attributes.

``Params.model_validate(mapping)`` checks types, ranges and allowed values of every key
the pipeline reads and refuses unknown keys (a misspelled one); :mod:`.errors` turns its
first error into one line (key, value, what is allowed) and adds the checks
that relate several blocks. Kept free of torch: every stage validates params first.
What each speed option does is in :mod:`fixmatch_bench.train.speed`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Block(BaseModel):
    """A params block: strict types (no "1" for 1, no 1 for true), finite numbers (no inf, no nan),
    unknown keys refused, read-only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class TrainParams(Block):
    steps: PositiveInt
    batch: PositiveInt
    uratio: Count
    lr: Positive
    momentum: Fraction
    nesterov: bool
    ema: Fraction
    eval_every: PositiveInt
    median_of_last: PositiveInt
    eval_batch: PositiveInt
    log_every: PositiveInt
    checkpoint_every: PositiveInt
    seed: Count
    device: Literal["auto", "cpu", "cuda"]
    lr_schedule: Literal["cosine", "linear"]
    lr_end: NonNegative | None
    optimizer: Literal["sgd", "adam"]
    adam_beta1: Annotated[float, Field(ge=0.0, lt=1.0)]
    adam_beta2: Annotated[float, Field(ge=0.0, lt=1.0)]


class Network(Block):
    """``WideResNet``'s keyword arguments; unset ones take its defaults (the official values)."""

    filters: PositiveInt
    scales: PositiveInt
    repeat: PositiveInt
    bn_momentum: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    padding: Literal["tf", "symmetric"] | None = None

    def kwargs(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class DatasetFacts(Block):
    """One row of the dataset table."""

    train_size: PositiveInt
    test_size: PositiveInt
    unlabeled_size: Count = 0  # extra unlabeled images beside the training set (STL-10's 100,000)
    num_classes: PositiveInt
    image_size: PositiveInt
    channels: PositiveInt
    flip: bool
    translate: Count
    ra_cutout: Count
    cta_cutout: Count
    ra_translate_scale: Annotated[float, Field(gt=0.0, le=1.0)]
    network: Network
    weight_decay: NonNegative


class MethodBlock(BaseModel):
    """A method's block: ``impl``, the class that trains it, and the keys of that class's own params
    (validated by :func:`fixmatch_bench.methods.registry.check_methods`)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True, allow_inf_nan=False)

    impl: Annotated[str, Field(min_length=1)]


class AugmentParams(Block):
    impl: Literal["batched", "reference"]
    cta_translate_fix: bool
    strong_branch: Literal["full", "no_cutout", "only_cutout"]


class SpeedOptions(Block):
    """The ``speed:`` block: how a run is executed; :data:`CHANGES_RESULTS` also change what it computes."""

    channels_last: bool = False
    autocast_bf16: bool = False
    compile: Literal["none", "model", "step"] = "none"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    compile_augment: bool = False
    optimizer_impl: Literal["for_loop", "foreach", "fused"] = "foreach"
    weak_no_grad: bool = False
    tf32: bool = False
    deterministic: bool = False

    def fingerprint(self) -> dict[str, Any]:
        """The options that change results beyond float rounding (resume only with the same ones)."""
        return {name: getattr(self, name) for name in CHANGES_RESULTS}

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


# Speed options that change what a run computes beyond float rounding: part of a run's fingerprint.
CHANGES_RESULTS = ("autocast_bf16", "weak_no_grad", "tf32")


class CheckpointParams(Block):
    dir: Annotated[str, Field(min_length=1)] | None
    keep_finished: bool


class CheckParams(Block):
    reference: Literal["published", "baseline", "none"]
    std_factor: NonNegative
    floor: NonNegative
    max_ratio_to_supervised: Positive | None


class SourcesParams(Block):
    """How the download stage fetches (what it fetches is in conf/sources/<dataset>.yaml)."""

    mirror: str | None = None
    retries: Count = 5
    timeout_s: Positive = 60.0
    backoff_s: Positive = 1.0


# A swept value: what `dvc exp run -S key=value` could set. Not checked here: the key it sets refuses a
# bad one (an infinite learning rate) with that key's message when the variant is applied.
Scalar = bool | int | Annotated[float, Field(allow_inf_nan=True)] | str | None
# One ablation variant: dotted params keys (``train.lr``) and the values that replace the suite's.
Variant = dict[str, Scalar]


class Params(Block):
    """All of params.yaml."""

    suite_name: str
    threshold: Fraction
    max_run_hours: Positive
    train: TrainParams
    augment: AugmentParams
    speed: SpeedOptions
    checkpoints: CheckpointParams
    launcher: Annotated[str, Field(min_length=1)]
    check: CheckParams
    sources: SourcesParams
    datasets: dict[str, DatasetFacts]
    methods: dict[str, MethodBlock]
    data: Annotated[list[str], Field(min_length=1)]
    folds: Annotated[list[PositiveInt], Field(min_length=1)]
    cells: Annotated[list[str], Field(min_length=1)]
    baseline: str  # the method every cell trains, which the check compares the others with
    ssl_methods: list[str]
    cell_methods: dict[str, list[str]]  # {method: [cell, ...]}: a method trained on some cells only
    # Ablation axes swept on every cell × ssl_method × fold of the suite: {axis: [variant, ...]}.
    ablations: dict[str, Annotated[list[Variant], Field(min_length=1)]] = {}
    # The runs the training stage iterates over, {key: [dataset, method, split]}: derived from the lists
    # above when conf/ is composed.
    runs: dict[str, list[str]] | None = None
