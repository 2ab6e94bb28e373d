# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test system-deps lint demo cluster-demo bench bench-quick clean soak

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check master sidecar tests bench
	$(BIN)/ruff format --check master sidecar tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# What the tests need from the system (node, chromium, etcd, prometheus, podman, ...):
# installed with apt-get when run as root on Debian, else named (those tests then skip).
system-deps:
	bash tests/system-deps.sh

test: system-deps lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/python deploy/demo.py

# The chaos harness of tests/test_chaos.py for as long as asked (seconds of chaos), with a
# summary table at the end: `make soak DURATION=3600 SEED=7`. Needs node (Node.js).
DURATION ?= 600
SEED ?= $(shell date +%s)
soak: $(STAMP)
	$(BIN)/python -m tests.chaos --duration $(DURATION) --seed $(SEED)

# Three masters on a three-member etcd (needs etcd: Debian's etcd-server): kills one,
# shows the others carry on, starts it again; Ctrl-C stops all.
cluster-demo: $(STAMP)
	$(BIN)/python deploy/cluster_demo.py

# The container image, localhost/picoapi-sidecar:latest (IMAGE=...): podman, or docker
# where podman is missing; no image registry or package index needed (deploy/image.sh).
.PHONY: image
image: $(STAMP)
	PY=$(BIN)/python deploy/image.sh

clean:
	rm -rf $(VENV) picoapi-data .pytest_cache .mypy_cache .ruff_cache

# The benchmark (issue 5) runs in its own venvs, so the test venv holds only what
# pyproject.toml declares: bench/.venv has the project (editable) with matplotlib and
# py-spy; bench/.venv-picoapi has the original picoapi 1.0.4 master and its server.
# From Debian when missing: node (the test service) and wrk (the main load generator).
BENCH_VENV := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed
PICOAPI_STAMP := bench/.venv-picoapi/.installed
NEED_TOOLS := need=""; command -v node >/dev/null 2>&1 || need="$$need nodejs"; \
	command -v wrk >/dev/null 2>&1 || need="$$need wrk"; \
	[ -z "$$need" ] || { apt-get update -q && apt-get install -y -q --no-install-recommends $$need; }

$(BENCH_STAMP): pyproject.toml
	$(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -e . matplotlib py-spy pydantic
	touch $@

$(PICOAPI_STAMP):
	$(PY) -m venv bench/.venv-picoapi
	bench/.venv-picoapi/bin/pip install -q --upgrade pip
	bench/.venv-picoapi/bin/pip install -q picoapi==1.0.4 'uvicorn[standard]'
	touch $@

bench: $(BENCH_STAMP) $(PICOAPI_STAMP)
	@$(NEED_TOOLS)
	$(BENCH_VENV)/bin/python -m bench.run --mode full --profile

bench-quick: $(BENCH_STAMP) $(PICOAPI_STAMP)
	@$(NEED_TOOLS)
	$(BENCH_VENV)/bin/python -m bench.run --mode quick
