# Two commands: `make demo` (set up, then run the default workflow) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# torch/torchvision from the package registry (CUDA builds, they also run on CPU): see DEVELOPERS.md
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[workflow,test]"
	touch $@

demo: setup
	snakemake --cores all

test: setup
	$(BIN)/python -m pytest -n 2 -q

lint: setup
	snakemake --lint

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf results reports logs benchmarks .snakemake data/fixtures data/demo
