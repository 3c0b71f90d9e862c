# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: install test test-fast demo bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything but the tests marked slow (the local stack, a worker lost mid-run): for quick feedback.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m jobs.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) -m bench.run_all

# The GPU check (bench/bench_gpu.py): training step, synthesis, 1024p, DDP, torch.compile; at most
# about 8 minutes on one GPU. Without a GPU it says so and runs the same code on the CPU, tiny.
bench-gpu: $(STAMP)
	$(PY) -m bench.run_all bench_gpu

clean:
	rm -rf work/ bench/results.jsonl
