# Two commands on a fresh machine: `make demo` (the demo on the embedded emulator) and `make test`.
# Each installs what it needs, once: the package and its runtime dependencies into .venv for the
# demo; the dev and aws extras, the system packages and the Terraform provider lookup for the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
# What the tests need from apt, as PACKAGE[=COMMAND] (see scripts/ensure-apt).
# chromium: the console test's browser, driven by playwright through its path (no download).
# strace: the fsync test watches a real process's system calls.
SYSTEM_PACKAGES := mosquitto mosquitto-clients=mosquitto_sub chromium strace
# The Terraform AWS provider on disk (scripts/tf-plugin-dir), looked up once per .venv (delete the
# file to look again).
TF_PLUGIN_DIR_FILE := $(VENV)/tf-plugin-dir

.PHONY: install system-packages test lint typecheck pytest docs demo bench bench-fleet mutation clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(DEV): $(RUNTIME)
	$(BIN)/pip install -q -e ".[dev,aws]"
	touch $@

$(TF_PLUGIN_DIR_FILE): $(RUNTIME)
	scripts/tf-plugin-dir > $@

install: $(DEV)

system-packages:
	scripts/ensure-apt $(SYSTEM_PACKAGES)

lint: $(DEV)
	$(BIN)/ruff check src tests benchmarks examples infra
	$(BIN)/ruff format --check src tests benchmarks examples infra

typecheck: $(DEV)
	$(BIN)/mypy --strict src

# TF_PLUGIN_DIR from the environment wins over the one found on disk.
pytest: system-packages $(DEV) $(TF_PLUGIN_DIR_FILE)
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
	TF_PLUGIN_DIR="$${TF_PLUGIN_DIR-$$(cat $(TF_PLUGIN_DIR_FILE))}" $(BIN)/pytest -q

# The site must build without a warning and hold no broken internal link (scripts/check-site).
docs: $(DEV)
	$(BIN)/mkdocs build --strict --site-dir .site
	$(BIN)/python scripts/check-site .site

# system-packages first: a machine where apt is not allowed stops before anything else runs.
test: system-packages lint typecheck pytest docs

demo: $(RUNTIME)
	$(BIN)/ancsync demo --console

BENCH := $(VENV)/.bench-installed
$(BENCH): $(RUNTIME)
	$(BIN)/pip install -q -e ".[bench]"
	touch $@

bench: $(BENCH) system-packages
	cd benchmarks && ../$(BIN)/python bench_sdks.py
	$(BIN)/python benchmarks/bench_hot_path.py --profile
	$(BIN)/python benchmarks/bench_publish.py
	$(BIN)/python benchmarks/bench_emergency.py
	$(BIN)/python benchmarks/bench_control_loop.py
	$(BIN)/python benchmarks/bench_blocking.py

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml), not part of `make test`:
# about 15 minutes on 2 cores. mutmut copies the tree into mutants/; that directory must exist
# before Python starts, or the PYTHONPATH entry that puts the mutated sources first is ignored.
mutation: $(DEV)
	$(BIN)/pip install -q "mutmut>=3.3,<4"
	rm -rf mutants && mkdir -p mutants/src
	PYTHONPATH="$(CURDIR)/mutants/src" $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results --all true | scripts/mutation-report

# Not in `make bench`: minutes of load on every core.
bench-fleet: $(BENCH) system-packages
	cd benchmarks && ../$(BIN)/python bench_fleet.py

clean:
	rm -rf $(VENV) .site .pytest_cache .mypy_cache .ruff_cache mutants
