# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: install browser azurite s3rver postgres test test-fast demo bench bench-gpu clean

install: $(STAMP)

# uv (from PyPI) installs what pip would, pip's upgrade included, downloading and unpacking in
# parallel and byte-compiling on every core: in a fresh clone on the 2-core machine, at rest,
# 44 s against 127 s for pip (which unpacks and compiles the 6.7 GB one file at a time).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(PY) -m uv pip install --quiet --python $(PY) --compile-bytecode --upgrade-package pip pip -e '.[test]'
	@# `ray job ...` typed without the stack's env.sh: one line saying so, not Ray's traceback.
	echo 'import pipeline.ray_job_hint' > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/crn_ray_job_hint.pth"
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

# Azurite, the Azure Storage emulator (npm, pinned in infra/azurite/package-lock.json): the tests
# and the local stack serve abfs:// from it on 127.0.0.1.
AZURITE := infra/azurite/node_modules/.bin/azurite
azurite: $(AZURITE)
$(AZURITE): infra/azurite/package-lock.json
	@command -v npm >/dev/null || { echo "make needs npm (Node.js 18 or newer) to install Azurite: apt-get install -y npm" >&2; exit 1; }
	npm ci --prefix infra/azurite --no-audit --no-fund --silent
	touch $(AZURITE)

# s3rver (npm, pinned in infra/s3rver/package-lock.json): the local stack's S3 endpoint, which
# keeps its objects in a folder (docs/services.md#local-stack).
S3RVER := infra/s3rver/node_modules/.bin/s3rver
s3rver: $(S3RVER)
$(S3RVER): infra/s3rver/package-lock.json
	@command -v npm >/dev/null || { echo "make needs npm (Node.js 18 or newer) to install s3rver: apt-get install -y npm" >&2; exit 1; }
	npm ci --prefix infra/s3rver --no-audit --no-fund --silent
	touch $(S3RVER)

# PostgreSQL, the local stack's MLflow database: Debian's postgresql (15 on Debian 12). As root
# (CI) this installs it; anyone else is told what to install, and make stops.
postgres:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then exit 0; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	else echo "make test needs PostgreSQL for the local stack (tests/test_local_stack.py): install Debian's postgresql (sudo apt-get install -y postgresql)" >&2; exit 1; fi

test: $(STAMP) browser azurite s3rver postgres
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# Everything but the tests marked slow (the local stack, a worker lost mid-run): for quick feedback.
test-fast: $(STAMP) browser azurite
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
