# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch/torchvision pinned to the releases that lie on local disk here (see README).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo-out

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Until the full study pipeline exists, the demo runs the most complete real pipeline there is: a synthetic
# DomainNet, its captions, and the sketch mixtures of Figure 2 (idempotent: every step overwrites its outputs).
demo: $(VENV)/.installed
	$(VENV)/bin/clipgen data synth --out $(DEMO_OUT)/data --force
	$(VENV)/bin/clipgen data captions --root $(DEMO_OUT)/data --force
	$(VENV)/bin/clipgen data mixtures --root $(DEMO_OUT)/data --out $(DEMO_OUT)/mixtures --force \
		--setup natural-only,cg-low,cg-high,leave-out-domain --test-domain sketch \
		--base $(DEMO_OUT)/data/base_train.tsv --base-val $(DEMO_OUT)/data/base_val.tsv
	@echo
	@echo "demo: made $(DEMO_OUT)/data (synthetic DomainNet, see contact_sheet.png), its captions in"
	@echo "      $(DEMO_OUT)/data/captions, and the natural-only, CG low/high and leave-out-domain training and"
	@echo "      validation TSVs for the sketch test domain in $(DEMO_OUT)/mixtures (mixtures.json describes each)."

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
