# Two entry points (see README "Quick start"); each creates or reuses .venv and installs what it needs.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: sweep test lint figures training-figures bench clean

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/pip.log)"
	@$(PY) -m pip install $(PIP_QUIET) --upgrade pip setuptools wheel > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	@$(PY) -m pip install $(PIP_QUIET) -c constraints.txt -e ".[test,ray,trl]" >> $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	@$(PY) -c "import torch, trustregion_lab; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

sweep: $(STAMP)  ## the main job: default sweep -> results/default/{table,figures} (under a minute on 2 idle cores)
	$(PY) -m trustregion_lab.sweep $(ARGS)

test: $(STAMP)   ## the whole test suite (CPU only)
	MPLBACKEND=Agg $(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

figures: $(STAMP) ## regenerate the committed analysis figures under figures/ (the default sweep, under a minute on 2 idle cores, and the estimators under mismatch alone); leaves the tree clean
	rm -rf results/readme results/estimators-mismatch
	$(PY) -m trustregion_lab.sweep --out results/readme --figures-dir figures
	$(PY) -m trustregion_lab.sweep --preset estimators --grid perturbation=mismatch --seeds 4 --out results/estimators-mismatch --figures-dir figures/estimators-mismatch

training-figures: $(STAMP) ## regenerate figures/{bandit,sequence}-train/ (about 6 minutes on 2 idle cores)
	rm -rf results/bandit-train-3seeds results/sequence-train-1seed
	$(PY) -m trustregion_lab.sweep --preset bandit-train --seeds 3 --out results/bandit-train-3seeds --figures-dir figures/bandit-train
	$(PY) -m trustregion_lab.sweep --preset sequence-train --seeds 1 --out results/sequence-train-1seed --figures-dir figures/sequence-train

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
