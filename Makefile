# Every target sets up .venv itself from pyproject.toml (re-installs when pyproject.toml changes).
PY      := .venv/bin/python
STAMP   := .venv/.installed
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: test test-quick test-portable bench demo style quality clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[eval,dev,app]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# While iterating: the suite without the end-to-end runs marked `slow` (make test runs everything).
test-quick: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The numerically sensitive tests (marker `numerics`) under CPU kernels other than this machine's best:
# torch/MKL/oneDNN/OpenBLAS instruction sets default (no SIMD), AVX2, AVX-512, each with 1 and 2 threads.
# One line per configuration; a level the CPU lacks is skipped. PORTABLE_ARGS e.g. "--levels default avx2".
test-portable: $(STAMP)
	$(PY) tests/portable.py $(PORTABLE_ARGS)

bench: $(STAMP)
	$(PY) bench/bench_layers.py
	$(PY) bench/bench_sd_step.py

demo: $(STAMP)
	$(PY) scripts/demo.py $(DEMO_ARGS)

style: $(STAMP)
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

# Style, lint, and the import layering of pyproject.toml's [tool.importlinter] (every import points down).
quality: $(STAMP)
	$(PY) -m ruff format --check . && $(PY) -m ruff check . && .venv/bin/lint-imports --no-logo

clean-venv:
	rm -rf .venv
