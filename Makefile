# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: install browser test test-fast demo bench bench-gpu clean

install: $(STAMP)

# uv (from PyPI) installs what pip would, pip's upgrade included, downloading and unpacking in
# parallel and byte-compiling on every core: in a fresh clone on the 2-core machine, at rest,
# 44 s against 127 s for pip (which unpacks and compiles the 6.7 GB one file at a time).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(PY) -m uv pip install --quiet --python $(PY) --compile-bytecode --upgrade-package pip pip -e '.[test]'
	touch $(STAMP)

# Two pytest processes (pytest-xdist), each with its own session (Ray, S3, MLflow store, toy
# data) and whole modules at a time, the slow ones first (tests/conftest.py): much of the suite
# waits on process start-up and Ray, so the 2 cores are busier than with one process.
# TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The browser that tests/test_paint_page.py drives: Debian's chromium and chromedriver. As
# root (CI) this installs them; anyone else is told what to install, and make stops.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	else echo "make test needs a browser for tests/test_paint_page.py: install Debian's chromium and chromium-driver (sudo apt-get install -y chromium chromium-driver)" >&2; exit 1; fi

test: $(STAMP) browser
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# Everything but the tests marked slow (the local stack, a worker lost mid-run): for quick feedback.
test-fast: $(STAMP) browser
	$(PY) -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

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
