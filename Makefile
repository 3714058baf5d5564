# The two set-up commands of the README: `make pipeline` and `make test`; `make test-fast` is the
# loop to run after each change (everything but the end-to-end tests marked `slow`).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: pipeline test test-fast lint ui app

# uv installs the same pinned requirements as pip, downloading and unpacking in parallel: 11 s
# instead of about 75 s from an empty cache, the largest single cost of CI's set-up.
UV := uv==0.13.9

# --compile-bytecode: the packages' .pyc files written once, here. Where PYTHONDONTWRITEBYTECODE
# is set (as on the machines we build and test on, 2026-12-08) Python never writes them, and
# every process that imports Keras compiled its ~24,000 code objects again: 13 s of each
# stage's start on a busy core.
$(BIN)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet $(UV)
	$(BIN)/uv pip install --compile-bytecode --python $(BIN)/python -r requirements.txt
	touch $@

pipeline: $(BIN)/.installed  ## run the whole DVC pipeline on the data named in params.yaml
	PATH=$(CURDIR)/$(BIN):$$PATH dvc repro

# Two workers (pytest-xdist), each taking whole test files, so that a module's fixtures are
# built once: 1.5 times faster on 2 cores than one process.
PYTEST := pytest -n 2 --dist loadfile

# The files in collection order, not by their number of tests: tests/conftest.py puts the
# quick benchmark's first and keeps the files of the session's tiny pipeline on one worker.
test: $(BIN)/.installed  ## run the whole test suite (what CI runs)
	PATH=$(CURDIR)/$(BIN):$$PATH $(PYTEST) --no-loadscope-reorder

test-fast: $(BIN)/.installed  ## every test but the slow end-to-end ones (dvc repro, queue, bench, servers)
	PATH=$(CURDIR)/$(BIN):$$PATH $(PYTEST) -m "not slow"

# mypy keeps its cache in .mypy_cache: a few seconds once the first run (about a minute) made it.
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

ui: $(BIN)/.installed  ## open the MLflow UI on the runs the pipeline made
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root mlruns/artifacts --host 127.0.0.1 --port 5000

app: $(BIN)/.installed  ## the clinic page of the champion on http://127.0.0.1:8501 (docs/app.md)
	PATH=$(CURDIR)/$(BIN):$$PATH melanoma app
