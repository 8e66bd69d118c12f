# Two commands: `make demo` (set up, then run the default workflow) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# torch/torchvision from the package registry (CUDA builds, they also run on CPU): see DEVELOPERS.md.
# uv (bootstrapped into the venv) installs and byte-compiles in parallel: about 1-2 min where pip
# takes 4-5; `make setup INSTALLER=pip` uses pip alone (it reads pip.conf's indexes; uv does not).
# uv trusts the system's certificates (a TLS-inspecting proxy's CA included), as pip does; where it
# still cannot install, the error is printed and pip installs instead.
INSTALLER ?= uv
PACKAGES := "torch==2.14.1" "torchvision==0.29.1" -e ".[workflow,test]"
# UV_NATIVE_TLS: the same setting under its name in older uv releases
export UV_SYSTEM_CERTS := 1
export UV_NATIVE_TLS := 1

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
ifeq ($(INSTALLER),uv)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode $(PACKAGES) || { \
	  echo "make setup: uv could not install (above); installing with pip instead (INSTALLER=pip skips uv)" >&2; \
	  $(BIN)/pip install -q $(PACKAGES); }
else
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PACKAGES)
endif
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
