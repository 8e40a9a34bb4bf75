# tianci — the two commands a newcomer needs: `make demo` and `make test`.
# Everything installs into ./.venv; nothing outside the checkout is touched
# (except `make browser`, which apt-installs Chromium + a CJK font for the browser test).

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Real users on a machine without a local torch wheel may want the CPU index:
#   make demo TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_INDEX ?=
EXTRAS      ?= serve,plot,phonology,track,eval,classical,interop,dev
DATA        ?= data/ci
RUN         ?= runs/demo
DEMO_SECONDS ?= 180

# Where the data sets come from: the TIANCI_*_SOURCE variables if set, else a local copy in a
# workspace folder beside this checkout (../shared/data), else the upstream GitHub URLs.
define local_source
ifeq ($$($(1)),)
  ifneq ($$(wildcard $(2)),)
    export $(1) := $$(abspath $(2))
  endif
endif
endef
$(eval $(call local_source,TIANCI_POETRY_SOURCE,../shared/data/chinese-poetry))
$(eval $(call local_source,TIANCI_CIPU_SOURCE,../shared/data/couyun/ci_pu))
$(eval $(call local_source,TIANCI_RHYME_SOURCE,../shared/data/chinese_word_rhyme/data))

.PHONY: install demo test test-fast bench browser clean help course

help:
	@echo "make demo   - set up, prepare the ci corpus, train a small GPT for a few minutes, print poems"
	@echo "make test   - set up and run the test suite"
	@echo "make bench  - run the speed benchmark (tianci bench)"
	@echo "make course - set up Jupyter and open the hands-on course (course/)"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Install the CPU build of torch only when no torch is present: a bare
	@# `pip install torch` would pull a multi-GB CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_VERSION)" $(TORCH_INDEX)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m tianci prepare --out $(DATA)
	$(PY) -m tianci train --preset ci-cpu --data $(DATA) --out $(RUN) --max-time $(DEMO_SECONDS) --force
	$(PY) -m tianci sample --run $(RUN) --prompt 春 --num-samples 3 --max-new-tokens 120 --stop-at-end
	-$(PY) -m tianci compose --run $(RUN) --cipai 浣溪沙

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

bench: install
	$(PY) -m tianci bench

browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk >/dev/null)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis

# ----------------------------------------------------------------------------- the course
# `make course`: install JupyterLab and the course extra, pair each chapter (a jupytext .py script)
# with a notebook, and open chapter 0. COURSE_ARGS=--no-browser on a machine without a browser.
COURSE_ARGS ?=

$(VENV)/.course-installed: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e ".[$(EXTRAS),course]"
	@touch $@

course: $(VENV)/.course-installed
	$(VENV)/bin/jupytext --sync course/[0-9][0-9]_*.py
	$(VENV)/bin/jupyter lab course/00_prepare.ipynb $(COURSE_ARGS)
