# Two commands on a fresh machine: `make demo` (the demo on the embedded emulator) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Terraform has no registry here: `terraform init` in the tests takes the AWS provider from a local
# plugin directory when one is on disk (.../registry.terraform.io/hashicorp/aws/<version>/<os_arch>/).
ifeq ($(origin TF_PLUGIN_DIR),undefined)
TF_PLUGIN_DIR := $(shell find / \( -path /proc -o -path /sys -o -path '*/.venv' \) -prune -o -name 'terraform-provider-aws*' -type f -print 2>/dev/null | head -n 1 | sed -E 's#/registry\.terraform\.io/.*##')
endif
export TF_PLUGIN_DIR

.PHONY: install test lint typecheck pytest docs demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,aws]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples infra
	$(BIN)/ruff format --check src tests benchmarks examples infra

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

pytest: $(STAMP)
	$(BIN)/pytest -q

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir .site

test: lint typecheck pytest docs

demo: $(STAMP)
	$(BIN)/ancsync demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_publish.py
	$(BIN)/python benchmarks/bench_emergency.py
	$(BIN)/python benchmarks/bench_control_loop.py

clean:
	rm -rf $(VENV) .site .pytest_cache .mypy_cache .ruff_cache
