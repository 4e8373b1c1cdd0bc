# Two entry points work from a fresh clone: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp is rebuilt whenever the dependency list changes, so a pulled pyproject.toml change reinstalls.
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_project
PYTEST_ARGS ?=

.PHONY: install demo test browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[cpu,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/raydm2 demo --workdir $(DEMO_DIR)

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

# Reports are checked in a real browser: Debian's Chromium, installed once where apt-get can (as root).
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "Chromium is not installed and could not be: the browser checks will be skipped"

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
