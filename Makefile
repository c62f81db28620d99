# mapgate: `make accuracy` runs the accuracy gate, `make test` the whole suite.
# Each target creates .venv and installs what it needs first (idempotent; re-runs when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mapgate-installed
EXTRAS ?= all

.PHONY: install accuracy check test benchmark typecheck clean-cache

# tidecv (the TIDE authors' code, a test cross-check) requires opencv-python, whose cv2 would shadow
# opencv-python-headless' own: it is installed without its dependencies, which the test extra lists.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install --quiet --no-deps 'tidecv==1.0.1'
	touch $(STAMP)

install: $(STAMP)

# The main job: original vs optimized on the bundled val2017-mini (206 images) for every bundled model.
accuracy: $(STAMP)
	$(BIN)/pytest -m accuracy

# The fast tier, the default while developing: every test not marked slow/accuracy/benchmark (no model
# runs over the data set), under 2 minutes on 2 cores. tests/conftest.py fails an unmarked test over 2 s.
check: $(STAMP)
	$(BIN)/pytest tests -m "not slow and not accuracy and not benchmark"

# The whole test suite (everything except the full benchmark matrix, which is `make benchmark`) on two
# xdist workers, each model's cases grouped on one worker, then the type check of the TensorRT code:
# CI runs exactly this target.
test: $(STAMP)
	$(BIN)/pytest -n 2
	$(MAKE) typecheck

# mapgate's TensorRT code against TensorRT's published type stubs plus the documented fixes in
# typings/build_tensorrt_stubs.py, once per stubs release: the oldest and the newest the package index
# has (tensorrt-stubs exists for 10.8-10.13 only; 8.6, 10.3 and 11.x names are proven by the contract
# tests against the stand-in generated from those tags' bindings). Each release goes to its own folder,
# not site-packages: a stubs-only `tensorrt` package there would be importable and shadow the missing
# bindings. Keep the list in step with STUBS_VERSIONS in typings/build_tensorrt_stubs.py.
TENSORRT_STUBS_VERSIONS ?= 10.8.0.43.1 10.13.0.35.1
TYPECHECK := $(VENV)/typecheck
TYPECHECKED := mapgate/backends/tensorrt.py mapgate/backends/_tensorrt_engine.py mapgate/convert/trt_onnx.py \
	mapgate/convert/tf_onnx.py mapgate/calibration.py

typecheck: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mypy>=1.10'
	set -e; for v in $(TENSORRT_STUBS_VERSIONS); do \
	  echo "typecheck: tensorrt-stubs $$v"; \
	  $(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(TYPECHECK)/$$v/site "tensorrt-stubs==$$v"; \
	  $(BIN)/python typings/build_tensorrt_stubs.py $(TYPECHECK)/$$v/site $(TYPECHECK)/$$v/stubs $$v; \
	  MYPYPATH=$(TYPECHECK)/$$v/stubs $(BIN)/mypy --config-file typings/mypy.ini --cache-dir $(TYPECHECK)/$$v/mypy-cache \
	    $(TYPECHECKED); \
	done

benchmark: $(STAMP)
	$(BIN)/pytest -m benchmark --benchmark-autosave

clean-cache:
	rm -rf engines/*/ reports/*/
