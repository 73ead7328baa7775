# calogan — two commands: `make run` (the whole pipeline on CPU) and `make test` (lint + full test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DATA ?= data
RUN_NAME ?= quick
PRESET ?= quick

.PHONY: run test install install-dev lint format simulate train evaluate package clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e .

install-dev: install
	$(PY) -m pip install --quiet -e ".[dev,onnx]"
	$(PY) -m pip install --quiet --no-deps jetnet==0.2.5  # the FPD/KPD convention tests compare with its source

simulate: install
	@if ls $(DATA)/data_train.npz >/dev/null 2>&1; then \
		echo "data: $(DATA)/data_train.npz exists, not simulating (delete it or run python -m calogan.simulate --overwrite)"; \
	else $(PY) -m calogan.simulate --out $(DATA); fi

train: simulate
	$(PY) -m calogan.train --preset $(PRESET) --data $(DATA) --name $(RUN_NAME) --overwrite

evaluate: install
	$(PY) -m calogan.predict --checkpoint runs/$(RUN_NAME)/checkpoints/best.pt --data $(DATA) --out runs/$(RUN_NAME)/predictions --overwrite
	$(PY) -m calogan.evaluate runs/$(RUN_NAME)/predictions --solution-dir $(DATA) --split val --json runs/$(RUN_NAME)/score.json --plots runs/$(RUN_NAME)/eval_plots --overwrite

package: install
	$(PY) -m calogan.package --predictions runs/$(RUN_NAME)/predictions --data $(DATA) --out submissions/$(RUN_NAME).zip --overwrite --score-runs 20

run: train evaluate package
	@$(PY) -c 'import json, sys; r = json.load(open(sys.argv[1]))["val"]; f = r.get("fidelity") or {}; nan = float("nan"); \
		print("val: score %.3f (real-vs-real ceiling %.3f); high-level classifier AUC %.3f (real 0.5); FPD %.2f (real 0); worst separation %.3f (%s)" \
		% (r["score"], r["ceiling"], f.get("auc_high", nan), f.get("fpd", nan), f.get("sep_max", nan), f.get("sep_max_observable", "n/a")))' \
		runs/$(RUN_NAME)/score.json
	@echo "done: runs/$(RUN_NAME)/ (checkpoints, plots, score.json) and submissions/$(RUN_NAME).zip"
	@$(PY) -c 'import sys; from calogan.core.engine import RunDirectory, budget_stop_message as m; \
		line = m(RunDirectory(sys.argv[1]).last_stop()); print("warning: training " + line if line else "", end="\n" if line else "")' \
		runs/$(RUN_NAME)

lint: install-dev
	$(PY) -m ruff check calogan tests benchmarks
	$(PY) -m ruff format --check calogan tests benchmarks

format: install-dev
	$(PY) -m ruff format calogan tests benchmarks
	$(PY) -m ruff check --fix calogan tests benchmarks

test: lint
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

clean:
	rm -rf runs build *.egg-info .pytest_cache .ruff_cache
