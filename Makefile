# Two commands: `make up` (install, build the offline demo, serve on :8080) and `make test` (install, run the suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# llama-cpp-python has no binary wheel on the package index: it compiles llama.cpp (~16 min on 2 cores). The wheel
# is built once into this cache and reused by every later install on the machine.
WHEELS    ?= $(HOME)/.cache/llm-factory/wheels
LLAMA_CPP := llama-cpp-python==0.3.36
export FACTORY_ROOT ?= $(CURDIR)/.factory

.PHONY: install up test lock clean

install: $(STAMP)

# Reinstall only when the pins or the project metadata change.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-index --no-deps --find-links $(WHEELS) "$(LLAMA_CPP)" 2>/dev/null || \
	  ( mkdir -p $(WHEELS) && CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip wheel --no-deps "$(LLAMA_CPP)" -w $(WHEELS) && \
	    $(PY) -m pip install --quiet --no-index --no-deps --find-links $(WHEELS) "$(LLAMA_CPP)" )
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(FACTORY_ROOT)/demo-model/config.json: | $(STAMP)
	$(PY) -m tests.fixtures.tiny_model $(FACTORY_ROOT)/demo-model

up: install $(FACTORY_ROOT)/demo-model/config.json
	$(VENV)/bin/factory up

test: install
	$(VENV)/bin/pytest

# Refresh requirements.lock from what is installed (after changing dependencies in pyproject.toml).
lock:
	$(PY) -m pip install --quiet -e ".[dev]"
	( head -2 requirements.lock; $(PY) -m pip freeze --exclude-editable --exclude llama_cpp_python | sed 's/^torch==\(.*\)+cpu/torch==\1/' ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
