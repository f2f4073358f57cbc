# EvoQuality developer commands. `make install` then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned and installed first so that no other package pulls a multi-GB build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint unit crds check-crds quickstart benchmarks images hadolint gpu-smoke clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[train,operator,dev]' $(TORCH_PINS)
	$(BIN)/python tools/install_helm.py

lint:
	$(BIN)/ruff check evoquality operator tests benchmarks tools charts/evoquality/files

test: lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -ra --durations=15

unit:
	$(BIN)/python -m pytest -q tests/unit

crds:
	$(BIN)/python -m evoquality.crd > crds/evoqualityrun.yaml
	cp crds/evoqualityrun.yaml charts/evoquality/files/evoqualityrun.yaml

quickstart:
	$(BIN)/evoquality run examples/quickstart.yaml

benchmarks:
	OPENBLAS_NUM_THREADS=1 $(BIN)/python benchmarks/ranking.py
	$(BIN)/python benchmarks/labels.py

images:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  for i in operator voter trainer worker; do \
	    docker buildx build -f images/$$i/Dockerfile -t evoquality/$$i:dev . || exit 1; done; \
	else echo "no Docker engine here: skipping image builds (hadolint still lints them: make hadolint)"; fi

hadolint:
	$(BIN)/hadolint images/*/Dockerfile

gpu-smoke:
	helm test evoquality --timeout 30m

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
