# fixmatch-bench: `make quick` runs the embedded quick suite, `make test` the tests.
SHELL := /bin/bash
export DVC_NO_ANALYTICS := 1
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: quick test test-isolation install uv params baseline bench paper gpu-check gpu-wheels

quick: install  ## install everything, run the DVC pipeline (quick suite), fail if its check failed
	$(UV) run dvc repro
	$(UV) run python pipeline/check.py --strict

# Test files run in TEST_WORKERS processes, each file whole in one (its module fixtures are built once);
# TEST_WORKERS=0 runs them in pytest's own process. Two on two cores: one after another the tests kept
# one core busy on average; three workers were slower there (docs/quick_suite.md, "make test").
TEST_WORKERS ?= 2

test: install  ## run the test suite
	$(UV) run pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20  # the 20 slowest tests, to keep `make test` under 10 minutes

test-isolation: install  ## every test file alone, single tests of module-fixture files alone, then all in reverse order
	$(UV) run python tests/isolation.py

install: uv  ## the locked environment (uv.lock) in .venv
	$(UV) sync --frozen --compile-bytecode  # .pyc up front: each stage starts a fresh python (PYTHONDONTWRITEBYTECODE may be set)

uv:  ## bootstrap uv from PyPI if it is missing
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --user --quiet uv

params: install  ## regenerate params.yaml from conf/ (what `dvc exp run` does)
	$(UV) run python -m fixmatch_bench.tools.compose params.yaml

baseline: install  ## measure the suite's spread (conf/spread.yaml) and write its baseline + tolerances (~45 min on 2 cores)
	$(UV) run dvc repro split
	$(UV) run python -m fixmatch_bench.tools.spread

bench: install  ## throughput benchmarks (GPU figures when a GPU is present)
	$(UV) run pytest benchmarks --benchmark-only -q

# PY=<python> uses that interpreter instead of the locked environment and installs nothing: a GPU
# machine with its own torch (PYTHONPATH=src, docs/gpu_check.md).
gpu-check: $(if $(PY),,install)  ## the CUDA path in one short run (tests marked cuda, then the quick benchmark): reports/gpu_check.md
	$(or $(PY),$(UV) run python) -m fixmatch_bench.tools.gpu_check $(GPU_CHECK_ARGS)

# The pure-Python packages a GPU image with its own torch may lack, as wheels at uv.lock's versions,
# for a machine without a package index (docs/gpu_check.md). pydantic-core is compiled: built for
# CPython $(GPU_WHEELS_PYTHON) on x86-64 Linux.
GPU_WHEELS_PYTHON ?= 3.12
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection typing-extensions hydra-core omegaconf antlr4-python3-runtime
gpu-wheels: uv
	rm -rf .whl && mkdir -p .whl
	$(UV) export --frozen --no-hashes --no-dev --no-emit-project | grep -E "^($(subst $(eval) ,|,$(GPU_WHEELS)))==" > .whl/requirements.txt
	grep -v antlr4 .whl/requirements.txt | xargs python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
		--python-version $(GPU_WHEELS_PYTHON) --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
	grep antlr4 .whl/requirements.txt | xargs python3 -m pip wheel -q --no-deps -w .whl  # published as a source archive only
	ls .whl
