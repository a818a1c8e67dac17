# The two commands of the README. Both create or reuse the virtual environment, so a fresh clone needs nothing else.
#   make demo   the main job: a miniature scaling study on the built-in simulator
#   make test   the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wxscale-installed
# The CPU build that lies on these machines' disk; a newer torch from PyPI is a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
DEMO_OUT ?= out/demo

.PHONY: demo test lint install clean

demo: $(STAMP)
	$(VENV)/bin/wxscale demo --out $(DEMO_OUT)

test: $(STAMP)
	@$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Keep an existing torch (an NGC image's CUDA build, say); otherwise take the pinned CPU build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev,dali,mpi]'
	touch $@

clean:
	rm -rf $(VENV) out
