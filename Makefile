# mapgate: `make accuracy` runs the accuracy gate, `make test` the whole suite.
# Each target creates .venv and installs what it needs first (idempotent; re-runs when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mapgate-installed
EXTRAS ?= all

.PHONY: install accuracy test benchmark clean-cache

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

# The main job: original vs optimized on the bundled val2017-mini (206 images) for every bundled model.
accuracy: $(STAMP)
	$(BIN)/pytest -m accuracy

# The whole test suite (everything except the full benchmark matrix, which is `make benchmark`).
test: $(STAMP)
	$(BIN)/pytest

benchmark: $(STAMP)
	$(BIN)/pytest -m benchmark --benchmark-autosave

clean-cache:
	rm -rf engines/*/ reports/*/
