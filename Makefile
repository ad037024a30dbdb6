# The two commands of the README: `make demo` runs the pipeline on the packaged
# demo config, `make test` runs the tests. Each builds .venv first if needed,
# with the exact versions of constraints.txt (pyproject.toml only states ranges).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo study test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmedpo run

study: $(STAMP)
	$(VENV)/bin/mmedpo study --seeds 0-39 --jobs 2 --readme README.md

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs
