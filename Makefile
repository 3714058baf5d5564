# The two set-up commands of the README: `make pipeline` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: pipeline test lint ui

$(BIN)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	touch $@

pipeline: $(BIN)/.installed  ## run the whole DVC pipeline on the data named in params.yaml
	PATH=$(CURDIR)/$(BIN):$$PATH dvc repro

test: $(BIN)/.installed  ## run the test suite
	PATH=$(CURDIR)/$(BIN):$$PATH pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ui: $(BIN)/.installed  ## open the MLflow UI on the runs the pipeline made
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root mlruns/artifacts --host 127.0.0.1 --port 5000
