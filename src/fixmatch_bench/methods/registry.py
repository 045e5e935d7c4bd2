"""Method names to method classes, and the validation of every method block.

``methods.<name>.impl`` in conf names a method's class: a built-in name (:data:`BUILT_IN`),
a name installed under the ``fixmatch_bench.methods`` entry-point group, or
``package.module:Class`` for a module of one's own on the Python path. The block's other keys
are the class's ``Params``. A bad block, or a class that declares something the step cannot
draw, is refused in one line naming the key, before any work starts.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from pydantic import ValidationError

from ..core.errors import ParamsError, choice, fail, params_error
from ..core.params import with_variant
from ..core.runs import expected_runs
from ..core.schema import Params
from ..augment.augmenter import STRONG_KINDS
from .base import Method

BUILT_IN = {
    "supervised": "fixmatch_bench.methods.supervised:Supervised",
    "fixmatch": "fixmatch_bench.methods.fixmatch:FixMatch",
    "pi_model": "fixmatch_bench.methods.pi_model:PiModel",
    "pseudo_labeling": "fixmatch_bench.methods.pseudo_labeling:PseudoLabeling",
    "mean_teacher": "fixmatch_bench.methods.mean_teacher:MeanTeacher",
    "uda": "fixmatch_bench.methods.uda:UDA",
    "mixmatch": "fixmatch_bench.methods.mixmatch:MixMatch",
    "remixmatch": "fixmatch_bench.methods.remixmatch:ReMixMatch",
}
ENTRY_POINT_GROUP = "fixmatch_bench.methods"
VIEWS = ("weak", "strong")


def method_class(impl: str, key: str) -> type[Method]:
    """The class ``impl`` names (``key``: the params key it was read from, for the error)."""
    installed = {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}
    target = BUILT_IN.get(impl) or installed.get(impl) or impl
    module_name, colon, class_name = target.partition(":")
    if not colon:
        fail(key, impl, f"a built-in method ({', '.join(BUILT_IN)}), one installed under the entry-point group "
                        f"{ENTRY_POINT_GROUP} ({', '.join(installed) or 'none'}), or package.module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        fail(key, impl, f"cannot be imported: {error}")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        fail(key, impl, "not a subclass of fixmatch_bench.methods.base.Method")
    return cls


def build_method(params: Params, name: str) -> Method:
    """The method ``methods.<name>`` of ``params``, its block validated by its class's ``Params``."""
    choice(name, "method", sorted(params.methods))
    block = params.methods[name].model_dump()
    cls = method_class(block["impl"], f"methods.{name}.impl")
    try:
        method = cls(name, cls.Params.model_validate(block))
    except ValidationError as error:
        raise params_error(error, within=("methods", name), root=cls.Params) from None
    for view in method.views:
        choice(view, f"methods.{name}: a view of {block['impl']}", list(VIEWS))
    choice(method.strong, f"methods.{name}: the strong policy of {block['impl']}", list(STRONG_KINDS))
    if "strong" in method.views and method.strong == "none":
        fail(f"methods.{name}", block["impl"], "draws a strong view but names no strong policy")
    return method


def check_methods(params: Params) -> dict[str, Method]:
    """Every method block of ``params`` built and checked against the rest of the params, and every
    ablation variant of the suite's semi-supervised methods too; returns the methods by name."""
    methods = {name: build_method(params, name) for name in params.methods}
    for name in params.ssl_methods:
        if not methods[name].views:
            fail("ssl_methods", name, f"not a semi-supervised method (it draws no unlabeled view); "
                                      f"allowed: {', '.join(sorted(n for n, m in methods.items() if m.views))}")
    for name in sorted({run.method for run in expected_runs(params)}):
        methods[name].check(params)
    for axis, variants in params.ablations.items():
        for index, variant in enumerate(variants):
            for name in params.ssl_methods:
                where = f"ablations.{axis}[{index}]"
                run_method(with_variant(params, variant, where=where, method=name), name, where)
    return methods


def run_method(params: Params, name: str, where: str | None = None) -> Method:
    """The method a run trains with, checked against the run's params (errors name ``where``, if given)."""
    try:
        method = build_method(params, name)
        method.check(params)
    except ParamsError as error:
        if where is None:
            raise
        prefix = "invalid params: "
        raise ParamsError(f"{prefix}{where}: {str(error).removeprefix(prefix)}") from None
    return method
