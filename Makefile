# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch/torchvision pinned to the releases that lie on local disk here (see README).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo-out

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The main job: the whole study on the embedded synthetic default (data -> mixtures -> four tiny CLIPs -> zero-shot
# evaluation -> activation stores -> CKA, SAE feature sharing, embeddings, circuits -> report). Rerunning skips
# finished stages.
demo: $(VENV)/.installed
	$(VENV)/bin/clipgen demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup -q

# The everyday loop: every test module, without the tests marked slow (training, extraction, the demo end to end).
test-fast: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	for b in benchmarks/[!_]*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
