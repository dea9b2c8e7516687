# Everything installs into .venv inside the checkout; nothing is assumed on the machine but python3.
# torch is installed first, from the CPU wheel (torch==2.13.0): a bare `torch` requirement would
# pull a multi-GB CUDA build, so the extension is built with --no-build-isolation against it.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
# OpenMP threads that spin while waiting turn a busy 2-core machine into a crawl: a batch-16 decode
# step of SmolLM2-135M took 4.4 s with spinning threads beside other jobs and 0.32 s with passive ones.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test demo bench clean wheel cuda-build

install: $(STAMP)

$(STAMP): pyproject.toml setup.py saferegx/_build_flags.py $(wildcard csrc/*.cpp csrc/cpu/* csrc/common/*)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "setuptools>=77" wheel ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

# lint, import order and formatting first (ruff, configured in pyproject.toml), then the tests
test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest tests -q

demo: install
	$(PY) -m saferegx.cli demo $(DEMO_ARGS)

# dist/: the sdist, then the wheel built from the unpacked sdist (C++ kernels compiled in against
# .venv's torch), which proves the sdist holds all a build needs. tests/test_wheel.py installs it.
wheel: install
	rm -f dist/saferegx-*
	$(PY) -m build --no-isolation --outdir dist

bench: install
	$(PY) benchmarks/cpu_loss.py --write

clean:
	rm -rf build saferegx/*.so saferegx.egg-info

# saferegx._C with the CUDA binding, built against a CUDA torch (2.14.1+cu130) in .venv-cuda and
# loaded there, without a GPU: CUDA kernels registered, sm_90 code, no warning (docs/gpu.md).
cuda-build:
	bash scripts/cuda_build.sh
