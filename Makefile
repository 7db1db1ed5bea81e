# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= multiembed-demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

LOCK := constraints.txt

.PHONY: setup demo test test-fast lint bench clean lock upgrade-check

setup: $(VENV)/.installed

# Installs exactly the lock (every distribution pinned); PIP_CONSTRAINT pins the build environment too.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq espeak-ng >/dev/null; } || echo "note: no espeak-ng, so speech tests will skip"
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq chromium >/dev/null; } || echo "note: no chromium: the dashboard browser tests skip (as root they fail)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) pip setuptools
	PIP_CONSTRAINT=$(abspath $(LOCK)) $(BIN)/pip install --quiet -c $(LOCK) -e '.[test]'
	touch $@

# Resolve pyproject.toml afresh in a throwaway environment and write the lock (then run `make test`).
lock:
	$(PYTHON) tools/lockfile.py compile

# The newest versions pyproject.toml allows, in a throwaway environment: fast tests and the demo there,
# and which packages differ from the lock. Not part of CI: its answer depends on the day's releases.
upgrade-check:
	$(PYTHON) tools/lockfile.py upgrade-check

demo: setup
	$(BIN)/multiembed demo --dir $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .

# The benchmark suite (docs/benchmarks.md): every figure a ratio against a baseline run beside it. ~30 min here.
bench: setup
	$(BIN)/python bench/backfill_vs_st.py throughput
	$(BIN)/python bench/text_engine.py
	$(BIN)/python bench/media.py images
	$(BIN)/python bench/media.py audio
	$(BIN)/python bench/backfill_vs_st.py refresh --rows 4000
	$(BIN)/python bench/backfill_vs_st.py refresh --rows 20000
	$(BIN)/python bench/backfill_vs_st.py memory
	$(BIN)/python bench/backfill_vs_st.py memory --row-group 1000000
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/quality_stages.py
	$(BIN)/python bench/runners.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache test-artifacts
